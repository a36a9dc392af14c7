"""Responses ⇄ Chat Completions: the translation that lets every adapter serve ``POST /responses``.

A Responses request becomes a chat request (:func:`to_chat`), and the chat
completion that answers it becomes a ``Response`` (:func:`from_chat`).
Both are pure and bounded by the size of the request: validation
(:mod:`unimw.operations.responses_validation`) has checked the shape, so
what is refused here is only what Chat Completions cannot say, each with a
400 naming the field.

Mapping decisions:

* Input items fold into chat messages the way Responses split them: an
  assistant turn is its ``reasoning`` items, then its ``message``, then its
  ``function_call`` items, so consecutive items of one turn make ONE
  assistant message (``reasoning_content``, ``content``, ``tool_calls``).
  A turn of reasoning alone (a cut answer) is dropped: vendors refuse an
  empty assistant message.
* Reasoning travels as ``reasoning_content`` (its summary texts). Claude's
  signed thinking, which Claude needs back in a tool loop, comes out of
  :func:`from_chat` as the reasoning item's ``encrypted_content``
  (:data:`THINKING_PREFIX` + base64url JSON of the chat ``thinking_blocks``)
  and goes back in as ``thinking_blocks``; ``encrypted_content`` of any
  other form (OpenAI's own) cannot be read and is left out.
* ``input_file``: ``file_data`` and ``file_id`` become a chat ``file`` part;
  ``file_url`` has no chat form and is refused. ``input_image`` with a
  ``file_id`` is refused the same way (chat images are URLs).
* ``tool_choice`` ``allowed_tools`` becomes chat's own ``allowed_tools``
  choice (the adapters narrow the tools for vendors without it), so the
  tool list, and the vendor's prompt cache, stay the same between turns.
* ``text.format`` ``text`` is the default and is left out; ``json_schema``
  nests under ``json_schema``. ``reasoning.summary``, ``include`` and
  ``truncation`` have no chat form and are not sent (``truncation`` is
  echoed as ``disabled``: that is what a translated call does).
* ``store`` is the Responses operation's own business, never sent upstream.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from unimw.errors import InvalidRequest
from unimw.operations.responses_validation import hosted_tools
from unimw.wire import JSON, dumps, loads

#: The mark of an ``encrypted_content`` unimw wrote: Claude's signed thinking blocks, readable by us alone.
THINKING_PREFIX: Final = "unimw.thinking."
_FINISH_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: Request fields chat has under the same name and meaning.
_COPIED: Final = ("temperature", "top_p", "metadata", "user", "safety_identifier", "service_tier", "prompt_cache_key")


# ── request ──────────────────────────────────────────────────────────────────


def to_chat(request: JSON, history: Sequence[JSON] = ()) -> JSON:
    """The chat request for a validated Responses ``request``; ``history``: earlier turns' input and output items.

    Instructions are the current request's only: they are not carried over
    from earlier turns, as Responses defines.
    """
    _refuse_untranslatable(request)
    messages: list[JSON] = []
    if isinstance(instructions := request.get("instructions"), str) and instructions:
        messages.append({"role": "system", "content": instructions})
    turns = _Turns(messages)
    for i, item in enumerate(history):
        turns.add(item, f"previous_response_id (item {i})")
    source = request["input"]
    items = [{"role": "user", "content": source}] if isinstance(source, str) else source
    for i, item in enumerate(items):
        turns.add(item, f"input[{i}]")
    turns.flush()
    if not messages:
        raise InvalidRequest("The request has no input to send to the model.", param="input", code="empty_array")
    chat: JSON = {"model": request["model"], "messages": messages}
    chat.update(_tools(request))
    chat.update(_sampling(request))
    if request.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _refuse_untranslatable(request: JSON) -> None:
    if hosted := hosted_tools(request):
        i, kind = hosted[0]
        raise InvalidRequest(
            f"The '{kind}' tool runs only on OpenAI's own Responses API; this model is served by translation "
            "to Chat Completions, which has function tools only.",
            param=f"tools[{i}]",
            code="unsupported_value",
        )
    if request.get("background") is True:
        raise InvalidRequest(
            "Background responses run only on OpenAI's own Responses API; this model is served by translation.",
            param="background",
            code="unsupported_value",
        )


@dataclass
class _Turn:
    """One assistant turn being gathered: Responses gives it as several items, chat as one message."""

    reasoning: list[str] = field(default_factory=list)
    blocks: list[JSON] = field(default_factory=list)
    content: str | None = None
    refusal: str | None = None
    calls: list[JSON] = field(default_factory=list)

    def message(self) -> JSON | None:
        """The chat message; None for reasoning alone (vendors refuse an assistant message with nothing in it)."""
        if self.content is None and self.refusal is None and not self.calls:
            return None
        out: JSON = {"role": "assistant", "content": self.content}
        if self.refusal is not None:
            out["refusal"] = self.refusal
        if self.calls:
            out["tool_calls"] = self.calls
        if self.reasoning:
            out["reasoning_content"] = "\n\n".join(self.reasoning)
        if self.blocks:
            out["thinking_blocks"] = self.blocks
        return out


class _Turns:
    """Folds input items into chat messages, one assistant message per assistant turn."""

    def __init__(self, messages: list[JSON]) -> None:
        self.messages = messages
        self.turn: _Turn | None = None

    def add(self, item: JSON, param: str) -> None:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "assistant":
            turn = self._turn(lambda t: t.content is None and t.refusal is None and not t.calls)
            turn.content, turn.refusal = _assistant_content(item["content"], f"{param}.content")
        elif kind == "message":
            self.flush()
            self.messages.append(_input_message(item, param))
        elif kind == "function_call":
            call: JSON = {"id": item["call_id"], "type": "function"}
            call["function"] = {"name": item["name"], "arguments": item["arguments"]}
            self._turn(lambda t: True).calls.append(call)
        elif kind == "function_call_output":
            self.flush()
            self.messages.append(_tool_message(item, param))
        elif kind == "reasoning":
            turn = self._turn(lambda t: t.content is None and t.refusal is None and not t.calls)
            summary = item.get("summary") or ()
            turn.reasoning.extend(p["text"] for p in summary or item.get("content") or ())
            turn.blocks.extend(thinking_blocks(item.get("encrypted_content")))
        else:
            raise InvalidRequest(
                f"Input items of type '{kind}' run only on OpenAI's own Responses API; "
                "this model is served by translation.",
                param=f"{param}.type",
                code="unsupported_value",
            )

    def flush(self) -> None:
        if self.turn is not None and (message := self.turn.message()) is not None:
            self.messages.append(message)
        self.turn = None

    def _turn(self, fits: Callable[[_Turn], bool]) -> _Turn:
        """The turn an item joins: the open one if the item ``fits`` after what it has, else a new one.

        A turn is reasoning, then a message, then calls; an item that would
        come earlier than what the turn has begins the next turn.
        """
        if self.turn is None or not fits(self.turn):
            self.flush()
            self.turn = _Turn()
        return self.turn


def _input_message(item: JSON, param: str) -> JSON:
    role, content = item["role"], item["content"]
    if isinstance(content, str):
        return {"role": role, "content": content}
    text_only = role in ("system", "developer")
    return {
        "role": role,
        "content": [_input_part(p, f"{param}.content[{j}]", text_only) for j, p in enumerate(content)],
    }


def _input_part(part: JSON, where: str, text_only: bool) -> JSON:
    kind = part["type"]
    if kind == "input_text":
        return {"type": "text", "text": part["text"]}
    if text_only:
        raise InvalidRequest(
            f"Invalid value for '{where}.type': {kind!r}. Only 'input_text' parts are supported in this message.",
            param=f"{where}.type",
            code="invalid_value",
        )
    if kind == "input_image":
        if not isinstance(url := part.get("image_url"), str):
            raise _no_chat_form(f"{where}.file_id", "Images given by 'file_id'")
        image: JSON = {"url": url}
        if isinstance(detail := part.get("detail"), str):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return {"type": "file", "file": _file(part, where)}
    raise InvalidRequest(
        f"Invalid value for '{where}.type': {kind!r}. Supported values are: 'input_text', 'input_image' and "
        "'input_file'.",
        param=f"{where}.type",
        code="invalid_value",
    )


def _file(part: JSON, where: str) -> JSON:
    if isinstance(data := part.get("file_data"), str):
        out: JSON = {"file_data": data}
    elif isinstance(file_id := part.get("file_id"), str):
        out = {"file_id": file_id}
    else:
        raise _no_chat_form(f"{where}.file_url", "Files given by 'file_url'")
    if isinstance(filename := part.get("filename"), str):
        out["filename"] = filename
    return out


def _assistant_content(content: str | list[JSON], param: str) -> tuple[str, str | None]:
    """Earlier assistant output as chat's ``content`` string and ``refusal`` (a string most vendors accept)."""
    if isinstance(content, str):
        return content, None
    texts: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(content):
        kind = part["type"]
        if kind in ("output_text", "input_text"):
            texts.append(part["text"])
        elif kind == "refusal":
            refusals.append(part["refusal"])
        else:
            raise InvalidRequest(
                f"Invalid value for '{param}[{j}].type': {kind!r}. Assistant messages take 'output_text' and "
                "'refusal' parts.",
                param=f"{param}[{j}].type",
                code="invalid_value",
            )
    return "".join(texts), ("".join(refusals) if refusals else None)


def _tool_message(item: JSON, param: str) -> JSON:
    output = item["output"]
    if isinstance(output, list):
        parts = []
        for j, part in enumerate(output):
            if part["type"] != "input_text":
                raise _no_chat_form(f"{param}.output[{j}]", f"Tool results with '{part['type']}' parts")
            parts.append({"type": "text", "text": part["text"]})
        output = parts
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _tools(request: JSON) -> JSON:
    out: JSON = {}
    if isinstance(tools := request.get("tools"), list):
        out["tools"] = [_chat_tool(tool) for tool in tools]
    choice = request.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict):
        out["tool_choice"] = _chat_tool_choice(choice)
    if isinstance(parallel := request.get("parallel_tool_calls"), bool) and "tools" in out:
        out["parallel_tool_calls"] = parallel
    return out


def _chat_tool(tool: JSON) -> JSON:
    function: JSON = {"name": tool["name"]}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: JSON) -> JSON:
    kind = choice["type"]
    if kind == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        allowed = []
        for k, tool in enumerate(choice["tools"]):
            if tool["type"] != "function":
                raise _no_chat_form(f"tool_choice.tools[{k}]", f"Allowing the '{tool['type']}' tool")
            allowed.append({"type": "function", "function": {"name": tool["name"]}})
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": allowed}}
    raise _no_chat_form("tool_choice", f"A tool choice of type '{kind}'")


def _sampling(request: JSON) -> JSON:
    out: JSON = {}
    for name in _COPIED:
        if request.get(name) is not None:
            out[name] = request[name]
    if isinstance(cap := request.get("max_output_tokens"), int):
        out["max_completion_tokens"] = cap
    if isinstance(effort := (request.get("reasoning") or {}).get("effort"), str):
        out["reasoning_effort"] = effort
    text = request.get("text") or {}
    if isinstance(verbosity := text.get("verbosity"), str):
        out["verbosity"] = verbosity
    fmt = text.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema: JSON = {"name": fmt["name"], "schema": fmt["schema"]}
        for name in ("strict", "description"):
            if fmt.get(name) is not None:
                schema[name] = fmt[name]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


def _no_chat_form(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} run only on OpenAI's own Responses API; this model is served by translation to Chat Completions.",
        param=param,
        code="unsupported_value",
    )


# ── thinking blocks ⇄ encrypted_content ─────────────────────────────────────


def encrypted_content(blocks: Sequence[JSON]) -> str:
    """Chat ``thinking_blocks`` as a reasoning item's ``encrypted_content`` (opaque to the client)."""
    return THINKING_PREFIX + base64.urlsafe_b64encode(dumps(list(blocks))).decode()


def thinking_blocks(encrypted: Any) -> list[JSON]:
    """The chat ``thinking_blocks`` in an ``encrypted_content`` unimw wrote; none for any other."""
    if not isinstance(encrypted, str) or not encrypted.startswith(THINKING_PREFIX):
        return []
    try:
        blocks = loads(base64.urlsafe_b64decode(encrypted[len(THINKING_PREFIX) :]))
    except (ValueError, binascii.Error):
        return []
    return [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []


# ── answer ───────────────────────────────────────────────────────────────────


def from_chat(
    completion: JSON,
    request: JSON,
    *,
    response_id: str,
    created_at: int,
    previous_response_id: str | None,
) -> JSON:
    """The ``Response`` for ``request`` that a chat ``completion`` spells out (its first choice)."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = _object(choice.get("message"))
    reason = _FINISH_INCOMPLETE.get(str(choice.get("finish_reason")))
    status = "incomplete" if reason else "completed"
    model = completion.get("model") if isinstance(completion.get("model"), str) and completion["model"] else None
    out = shell(request, response_id=response_id, created_at=created_at, previous_response_id=previous_response_id)
    out["model"] = model or out["model"]
    out["status"] = status
    out["output"] = output_items(message, response_id, "incomplete" if reason else "completed")
    out["incomplete_details"] = {"reason": reason} if reason else None
    if (usage := response_usage(completion.get("usage"))) is not None:
        out["usage"] = usage
    return out


def shell(request: JSON, *, response_id: str, created_at: int, previous_response_id: str | None) -> JSON:
    """The ``Response`` before any output: status ``in_progress``, the request's settings echoed (a setting
    sent as null as its default, since the ``Response`` has no null for it)."""
    text = request.get("text") or {}
    reasoning = request.get("reasoning")
    out: JSON = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request["model"],
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
        if isinstance(reasoning, dict)
        else None,
        "store": request.get("store") is not False,
        "temperature": request.get("temperature"),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in request.get("tools") or ()],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "metadata": request.get("metadata") or {},
    }
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        if isinstance(value := request.get(name), str):
            out[name] = value
    return out


def _echo_tool(tool: JSON) -> JSON:
    """A function tool as a Response shows it: ``parameters`` and ``strict`` always there (null when unset)."""
    if tool.get("type") != "function":
        return tool
    return {**tool, "parameters": tool.get("parameters"), "strict": tool.get("strict")}


def output_items(message: JSON, response_id: str, status: str) -> list[JSON]:
    """A chat message as output items: reasoning, then the message, then its function calls."""
    items: list[JSON] = []
    reasoning = message.get("reasoning_content")
    blocks = message.get("thinking_blocks")
    blocks = [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
    if (isinstance(reasoning, str) and reasoning) or blocks:
        items.append(reasoning_item(response_id, reasoning if isinstance(reasoning, str) else "", blocks))
    content = message.get("content")
    text = content if isinstance(content, str) else _text_of(content)
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    if text or refusal or (not items and not calls):
        parts: list[JSON] = []
        if text or not refusal:
            parts.append(output_text(text))
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        items.append(message_item(response_id, parts, status))
    for n, call in enumerate(calls):
        function = _object(call.get("function"))
        items.append(
            function_call_item(
                response_id,
                n,
                call.get("id"),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
                status,
            )
        )
    return items


def reasoning_item(response_id: str, text: str, blocks: Sequence[JSON]) -> JSON:
    item: JSON = {"id": item_id("rs", response_id), "type": "reasoning", "summary": []}
    if text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    if blocks:
        item["encrypted_content"] = encrypted_content(blocks)
    return item


def message_item(response_id: str, parts: list[JSON], status: str) -> JSON:
    return {
        "id": item_id("msg", response_id),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": parts,
    }


def output_text(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(response_id: str, n: int, call_id: Any, name: str, arguments: str, status: str) -> JSON:
    return {
        "id": item_id("fc", response_id, n),
        "type": "function_call",
        "status": status,
        "call_id": call_id if isinstance(call_id, str) and call_id else item_id("call", response_id, n),
        "name": name,
        "arguments": arguments,
    }


def item_id(prefix: str, response_id: str, n: int | None = None) -> str:
    """An output item's id, made from the response's so a replay of the same answer has the same ids."""
    base = f"{prefix}_{response_id.removeprefix('resp_')}"
    return base if n is None else f"{base}_{n}"


def response_usage(usage: Any) -> JSON | None:
    """Chat's ``CompletionUsage`` in the Responses form; None when the completion has none."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = _object(usage.get("prompt_tokens_details"))
    completion_details = _object(usage.get("completion_tokens_details"))
    total = usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details.get("reasoning_tokens"))},
        "total_tokens": total if isinstance(total, int) and not isinstance(total, bool) else prompt + completion,
    }


def _object(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text_of(content: Any) -> str:
    parts: Iterable[Any] = content if isinstance(content, list) else ()
    return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
