"""Anthropic Messages API (``POST /v1/messages``), spoken to OpenAI clients.

The request is rebuilt field by field, so nothing the Messages API does not
know reaches it; fields with no counterpart are left out and recorded with
:func:`note_dropped`. What needs a choice:

* Leading ``system``/``developer`` messages become ``system``; later ones are
  folded into the user turn at their place, marked ``[system]``.
* ``tool`` messages become ``tool_result`` blocks at the head of a user turn;
  consecutive same-role turns are merged.
* ``response_format`` uses native ``output_config.format`` on Claude 4.5 and
  later, and on older models a forced tool whose input is returned as the
  message content. ``json_object`` always uses the forced tool, so the answer
  is a JSON object whatever the model.
* ``reasoning_effort`` is adaptive thinking plus ``output_config.effort`` on
  Claude 4.6 and later, a thinking budget on 3.7 to 4.5. Thinking comes back
  as ``reasoning_content`` (and the signed blocks as ``thinking_blocks``, which
  a client may send back on the assistant message), never in ``content``.
* ``temperature``/``top_p``/``top_k`` are only sent with ``anthropic-version:
  2023-06-01`` and to models that still take them; the default version,
  ``2026-10-21``, refuses them outright.

Model ids the capability rules cannot read are taken to be the newest models.

Provider options: ``anthropic_version`` (default ``2026-10-21``) and
``default_max_tokens`` (default 4096; the API requires ``max_tokens``). A
model's ``params`` in policies.yaml are Anthropic request fields merged into
every body (e.g. ``{"top_k": 5}`` or ``{"metadata": {"user_id": "..."}}``);
the caller's translated fields win, objects are merged key by key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from unimw.adapters.base import (
    HTTPAdapter,
    Target,
    error_body,
    note_dropped,
    parse_object,
    redact,
    retry_after,
)
from unimw.errors import InvalidRequest, UpstreamError, UpstreamUnavailable, is_retryable_status
from unimw.policy import Provider
from unimw.wire import JSON, chunk, dumps, loads, now, sse_events, usage, usage_chunk

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2026-10-21"
LEGACY_VERSION = "2023-06-01"  #: the only version that still takes sampling parameters
DEFAULT_MAX_TOKENS = 4096
#: The forced tool that carries structured output on models without native support.
JSON_TOOL = "unimw_structured_output"

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)
_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")
_SAMPLING = ("temperature", "top_p", "top_k")
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "max"}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Anthropic ``error.type`` → (status, OpenAI type, OpenAI code).
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (402, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "invalid_request_error", None),
    "not_found_error": (404, "invalid_request_error", None),
    "conflict_error": (409, "invalid_request_error", None),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (500, "server_error", "server_error"),
    "timeout_error": (504, "server_error", "upstream_timeout"),
    "overloaded_error": (503, "server_error", "server_is_overloaded"),
}
#: Chat fields :func:`to_request` translates; any other field the caller set is dropped.
_HANDLED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
        "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "user",
        "safety_identifier", "service_tier", "stream", "stream_options", "n", "logprobs", "top_logprobs",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Traits:
    """What a model id says about the features the model accepts."""

    family: str | None = None  #: ``opus``, ``sonnet``, ``haiku``; None when unknown
    version: tuple[int, int] = (99, 0)  #: unknown ids count as the newest

    @property
    def native_json(self) -> bool:
        return self.version >= (4, 5)

    @property
    def thinking(self) -> bool:
        return self.version >= (3, 7)

    @property
    def adaptive(self) -> bool:
        return self.version >= (4, 6)

    def sampling(self, api_version: str) -> frozenset[str]:
        """The sampling parameters this model takes under ``api_version``."""
        if api_version != LEGACY_VERSION or self.version >= (5, 0):
            return frozenset()
        if self.family == "opus" and self.version >= (4, 7):
            return frozenset()
        return frozenset(_SAMPLING)

    @property
    def one_of_temperature_top_p(self) -> bool:
        return self.version >= (4, 1)


_NEW_ID = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2})(?!\d))?")
_OLD_ID = re.compile(r"claude-(\d)(?:-(\d))?-(opus|sonnet|haiku)")


def traits(model: str) -> Traits:
    """Read family and version from ids like ``claude-sonnet-4-5-20250929`` or ``claude-3-7-sonnet-latest``."""
    if match := _NEW_ID.search(model):
        return Traits(match[1], (int(match[2]), int(match[3] or 0)))
    if match := _OLD_ID.search(model):
        return Traits(match[3], (int(match[1]), int(match[2] or 0)))
    return Traits()


# -- request ---------------------------------------------------------------------------------------


def to_request(
    chat: JSON, target: Target, *, version: str = DEFAULT_VERSION, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> JSON:
    """The Messages API body for an OpenAI chat request."""
    model = traits(target.model)
    dropped = sorted(k for k, v in chat.items() if k not in _HANDLED and v is not None)
    _refuse_unsupported(chat)
    system, messages = translate_messages(chat["messages"])
    body: JSON = {"model": target.model, "messages": messages}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stop := chat.get("stop"):
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if chat.get("temperature") is not None:
        body["temperature"] = min(float(chat["temperature"]), 1.0)  # OpenAI allows up to 2
    if chat.get("top_p") is not None:
        body["top_p"] = chat["top_p"]
    body.update(translate_tools(chat, model, dropped))
    _structured_output(body, chat.get("response_format"), model)
    if user := chat.get("safety_identifier") or chat.get("user"):
        body["metadata"] = {"user_id": str(user)}
    if tier := chat.get("service_tier"):
        if tier in ("auto", "default"):
            body["service_tier"] = "auto" if tier == "auto" else "standard_only"
        else:
            dropped.append("service_tier")
    if chat.get("stream"):
        body["stream"] = True
    _merge(body, target.params)
    grow = "max_tokens" not in body  # thinking counts against max_tokens: its budget goes on top of a default
    body.setdefault("max_tokens", default_max_tokens)
    _thinking(body, chat.get("reasoning_effort"), model, dropped, grow=grow)
    _sampling(body, model.sampling(version), model, dropped)
    if dropped:
        note_dropped(*dropped)
    return body


def _refuse_unsupported(chat: JSON) -> None:
    if (chat.get("n") or 1) > 1:
        raise InvalidRequest("This model does not support 'n' greater than 1.", param="n", code="unsupported_value")
    if chat.get("logprobs") or chat.get("top_logprobs"):
        raise InvalidRequest("This model does not return log probabilities.", param="logprobs")


def translate_messages(messages: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    """``(system blocks, turns)``: alternating user/assistant turns with tool results first."""
    system: list[JSON] = []
    turns: list[JSON] = []
    for i, message in enumerate(messages):
        role, content, param = message["role"], message.get("content"), f"messages[{i}].content"
        if role in ("system", "developer"):
            blocks = _text_blocks(content, param)
            if not turns:
                system.extend(blocks)
            else:  # the Messages API has no system turn mid-conversation on most models
                _append(turns, "user", [{"type": "text", "text": "[system] " + b["text"]} for b in blocks])
        elif role == "user":
            _append(turns, "user", _user_blocks(content, param))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, i))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, param)])
        else:
            raise InvalidRequest(
                f"Messages with role '{role}' are not supported by this model; use tools.", param=f"messages[{i}].role"
            )
    for turn in turns:
        if turn["role"] == "user":  # tool results must lead their turn
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _append(turns: list[JSON], role: str, blocks: list[JSON]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_blocks(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content or ()):
        if part.get("type") not in ("text", "refusal"):
            raise InvalidRequest(f"Only text parts are allowed in '{param}'.", param=f"{param}[{j}]")
        if text := part.get("text") or part.get("refusal"):
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return _text_blocks(content, param)
    blocks = []
    for j, part in enumerate(content or ()):
        kind, where = part.get("type"), f"{param}[{j}]"
        if kind == "text":
            blocks.extend(_text_blocks([part], param))
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url") or {}, where))
        elif kind == "file":
            blocks.append(_document(part.get("file") or {}, where))
        else:
            raise InvalidRequest(f"Content parts of type {kind!r} are not supported by this model.", param=where)
    return blocks


def _image(image: JSON, param: str) -> JSON:
    url = str(image.get("url") or "")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if not match or match["mime"] not in _IMAGE_TYPES:
        raise InvalidRequest(
            "Images must be http(s) URLs or base64 data URLs of type jpeg, png, gif or webp.", param=param
        )
    return {"type": "image", "source": {"type": "base64", "media_type": match["mime"], "data": match["data"]}}


def _document(file: JSON, param: str) -> JSON:
    data = file.get("file_data")
    if not isinstance(data, str):
        raise InvalidRequest("Only inline 'file_data' is supported by this model, not 'file_id'.", param=param)
    match = _DATA_URL.match(data)
    if match and match["mime"] != "application/pdf":
        raise InvalidRequest("Only PDF files are supported by this model.", param=param)
    source = {"type": "base64", "media_type": "application/pdf", "data": match["data"] if match else data}
    return {"type": "document", "source": source}


def _assistant_blocks(message: JSON, i: int) -> list[JSON]:
    # Signed thinking must lead the turn when it is sent back (tool loops with thinking on).
    blocks = [_thinking_block(b) for b in message.get("thinking_blocks") or () if isinstance(b, dict)]
    blocks.extend(_text_blocks(message.get("content"), f"messages[{i}].content"))
    for j, call in enumerate(message.get("tool_calls") or ()):
        param = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") or {}
        if call.get("type", "function") != "function":
            raise InvalidRequest("Only function tool calls are supported by this model.", param=param)
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_id(call.get("id") or f"call_{i}_{j}"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments"), param + ".function.arguments"),
            }
        )
    return blocks


def _thinking_block(block: JSON) -> JSON:
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data", "")}
    return {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}


def _arguments(arguments: Any, param: str) -> JSON:
    if arguments in (None, ""):
        return {}
    try:
        value = loads(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=param)
    return value


def tool_id(id: str) -> str:
    """A tool call id in the alphabet the Messages API accepts (``^[a-zA-Z0-9_-]+$``)."""
    return _TOOL_ID.sub("_", id)


def _tool_result(message: JSON, param: str) -> JSON:
    block: JSON = {"type": "tool_result", "tool_use_id": tool_id(message["tool_call_id"])}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif blocks := _text_blocks(content, param):
        block["content"] = blocks
    return block


def translate_tools(chat: JSON, model: Traits, dropped: list[str]) -> JSON:
    """``tools`` and ``tool_choice`` in the Messages API's forms."""
    tools, choice = chat.get("tools") or [], chat.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {(t.get("function") or {}).get("name") for t in allowed.get("tools") or ()}
        tools = [t for t in tools if (t.get("function") or {}).get("name") in names]
        choice = "required" if allowed.get("mode") == "required" else "auto"
    if not tools:
        return {}
    out: JSON = {"tools": [_tool(t, i, model, dropped) for i, t in enumerate(tools)]}
    if choice == "none":
        out["tool_choice"] = {"type": "none"}
        return out
    if choice == "required":
        out["tool_choice"] = {"type": "any"}
    elif isinstance(choice, dict):
        if not isinstance(name := (choice.get("function") or {}).get("name"), str):
            raise InvalidRequest("Only function tool choices are supported by this model.", param="tool_choice")
        out["tool_choice"] = {"type": "tool", "name": name}
    elif choice == "auto":
        out["tool_choice"] = {"type": "auto"}
    if chat.get("parallel_tool_calls") is False:
        out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return out


def _tool(tool: JSON, i: int, model: Traits, dropped: list[str]) -> JSON:
    if tool.get("type") != "function":
        raise InvalidRequest("Only function tools are supported by this model.", param=f"tools[{i}].type")
    function = tool["function"]
    schema = dict(function.get("parameters") or {})
    out: JSON = {"name": function["name"], "input_schema": {"type": "object", **schema}}
    if description := function.get("description"):
        out["description"] = description
    if function.get("strict") is not None:
        if model.native_json:
            out["strict"] = bool(function["strict"])
        elif "tools.function.strict" not in dropped:
            dropped.append("tools.function.strict")
    return out


def _structured_output(body: JSON, response_format: JSON | None, model: Traits) -> None:
    kind = (response_format or {}).get("type")
    if kind not in ("json_schema", "json_object"):
        return
    spec = (response_format or {}).get("json_schema") or {}
    if kind == "json_schema" and model.native_json:
        schema = closed_schema(spec.get("schema") or {"type": "object"})
        body.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}
        return
    description = ("Give your final answer as this tool's input. " + str(spec.get("description") or "")).strip()
    tool = {
        "name": JSON_TOOL,
        "description": description,
        "input_schema": {"type": "object", **(spec.get("schema") or {})},
    }
    choice = body.get("tool_choice") or {"type": "auto"}
    if "tools" not in body or choice["type"] == "none":
        body["tools"], forced = [tool], {"type": "tool", "name": JSON_TOOL}
    else:  # the caller's tools stay callable; the answer comes through ours
        body["tools"], forced = [*body["tools"], tool], {"type": "any"}
    if choice["type"] == "tool":
        return
    if "disable_parallel_tool_use" in choice:
        forced["disable_parallel_tool_use"] = choice["disable_parallel_tool_use"]
    body["tool_choice"] = forced


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object, as native structured output requires."""
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_schema(v) if k != "properties" else _closed_properties(v) for k, v in schema.items()}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _closed_properties(properties: Any) -> Any:
    if not isinstance(properties, dict):
        return properties
    return {name: closed_schema(sub) for name, sub in properties.items()}


def _merge(body: JSON, params: Mapping[str, Any]) -> None:
    """Add the model's policy ``params`` under ``body``: body values win, objects merge."""
    for key, value in params.items():
        if key not in body:
            body[key] = copy.deepcopy(value)  # the body is changed later; the policy must not be
        elif isinstance(body[key], dict) and isinstance(value, dict):
            body[key] = {**copy.deepcopy(value), **body[key]}


def _thinking(body: JSON, effort: str | None, model: Traits, dropped: list[str], *, grow: bool) -> None:
    if effort is None or effort == "none":
        return
    forced = body.get("tool_choice", {}).get("type") in ("any", "tool")
    if not model.thinking or effort not in _EFFORTS:
        dropped.append("reasoning_effort")
        return
    if model.adaptive:
        body.setdefault("output_config", {})["effort"] = _EFFORTS[effort]
        if not forced and _thinking_fits(body):
            body["thinking"] = {"type": "adaptive"}
        return
    budget = _BUDGETS[effort] if grow else min(_BUDGETS[effort], body["max_tokens"] - 1)
    if forced or budget < 1024 or not _thinking_fits(body):
        dropped.append("reasoning_effort")
    else:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if grow:
            body["max_tokens"] += budget


def _thinking_fits(body: JSON) -> bool:
    """False when the last assistant turn used tools without its signed thinking, which the API would refuse."""
    for turn in reversed(body["messages"]):
        if turn["role"] == "assistant":
            blocks = turn["content"]
            uses_tools = any(b["type"] == "tool_use" for b in blocks)
            return not uses_tools or blocks[0]["type"] in ("thinking", "redacted_thinking")
    return True


def _sampling(body: JSON, accepted: frozenset[str], model: Traits, dropped: list[str]) -> None:
    if body.get("thinking", {}).get("type") in ("enabled", "adaptive"):  # thinking fixes its own sampling
        accepted = frozenset()
    elif model.one_of_temperature_top_p and "temperature" in body:
        accepted -= {"top_p"}
    for name in _SAMPLING:
        if name in body and name not in accepted:
            del body[name]
            dropped.append(name)


# -- response --------------------------------------------------------------------------------------


def from_response(body: JSON) -> JSON:
    """A ``chat.completion`` from a ``message``."""
    text: list[str] = []
    reasoning: list[str] = []
    signed: list[JSON] = []
    calls: list[JSON] = []
    structured: str | None = None
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind in ("thinking", "redacted_thinking"):
            reasoning.append(block.get("thinking", ""))
            signed.append(block)
        elif kind == "tool_use" and block.get("name") == JSON_TOOL:
            structured = dumps(block.get("input") or {}).decode()
        elif kind == "tool_use":
            calls.append(_tool_call(block))
    stop_reason = body.get("stop_reason")
    message: JSON = {"role": "assistant", "content": None, "refusal": None}
    if structured is not None:
        message["content"] = structured
    elif text or not calls:
        message["content"] = "".join(text)
    if stop_reason == "refusal":
        message["refusal"] = _refusal(body.get("stop_details"))
    if calls:
        message["tool_calls"] = calls
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if signed:
        message["thinking_blocks"] = signed
    return {
        "id": body.get("id") or "",
        "object": "chat.completion",
        "created": now(),
        "model": body.get("model") or "",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason(stop_reason, bool(calls)), "logprobs": None}
        ],
        "usage": to_usage(body.get("usage") or {}),
    }


def _tool_call(block: JSON) -> JSON:
    arguments = dumps(block.get("input") or {}).decode()
    return {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}}


def _refusal(details: JSON | None) -> str:
    explanation = (details or {}).get("explanation")
    return str(explanation) if explanation else "The model declined to answer."


def finish_reason(stop_reason: str | None, tool_calls: bool) -> str:
    """The OpenAI ``finish_reason``; a forced structured-output tool is a plain stop."""
    if stop_reason == "tool_use" and not tool_calls:
        return "stop"
    return _FINISH.get(stop_reason or "end_turn", "stop")


def to_usage(raw: JSON) -> JSON:
    """OpenAI usage: ``prompt_tokens`` counts all input, cache reads and writes included."""
    cached = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    details: JSON = {"prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written}}
    thinking = (raw.get("output_tokens_details") or {}).get("thinking_tokens")
    if thinking is not None:
        details["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return usage((raw.get("input_tokens") or 0) + cached + written, raw.get("output_tokens") or 0, **details)


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    kind: str  #: ``text``, ``tool``, ``json``, ``thinking``, or ``other``
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    sent: bool = False


@dataclass(slots=True)
class _Stream:
    """What a stream has said so far, and the chunks each event becomes."""

    id: str = ""
    model: str = ""
    created: int = field(default_factory=now)
    usage: JSON = field(default_factory=dict)
    blocks: dict[int, _Block] = field(default_factory=dict)
    tool_calls: int = 0
    signed: int = 0
    announced: bool = False
    stopped: bool = False

    def chunk(self, delta: JSON | None = None, finish_reason: str | None = None) -> JSON:
        return chunk(self.id, self.model, self.created, delta, finish_reason=finish_reason)

    def on_message_start(self, event: JSON) -> list[JSON]:
        message = event.get("message") or {}
        self.id, self.model = message.get("id") or "", message.get("model") or ""
        self.usage.update(message.get("usage") or {})
        return []

    def on_content_block_start(self, event: JSON) -> list[JSON]:
        block, index = event.get("content_block") or {}, event.get("index", -1)
        kind = block.get("type")
        if kind == "tool_use" and block.get("name") == JSON_TOOL:
            self.blocks[index] = _Block("json")
            return []
        if kind == "tool_use":
            state = self.blocks[index] = _Block("tool", tool_index=self.tool_calls)
            self.tool_calls += 1
            function = {"name": block.get("name"), "arguments": ""}
            head = {"index": state.tool_index, "id": block.get("id"), "type": "function", "function": function}
            return [self.chunk({"tool_calls": [head]})]
        if kind == "redacted_thinking":
            self.blocks[index] = _Block("thinking", data=block.get("data", ""))
            return []
        self.blocks[index] = _Block(kind if kind in ("text", "thinking") else "other")
        return [self.chunk({"content": block["text"]})] if kind == "text" and block.get("text") else []

    def on_content_block_delta(self, event: JSON) -> list[JSON]:
        block, delta = self.blocks.get(event.get("index", -1)), event.get("delta") or {}
        kind = delta.get("type")
        if block is None:
            return []
        if kind == "text_delta" and delta.get("text"):
            return [self.chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            block.thinking.append(delta["thinking"])
            return [self.chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta":
            block.signature += delta.get("signature", "")
        elif kind == "input_json_delta" and (piece := delta.get("partial_json")):
            block.sent = True
            if block.kind == "json":
                return [self.chunk({"content": piece})]
            if block.kind == "tool":
                return [self.chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": piece}}]})]
        return []

    def on_content_block_stop(self, event: JSON) -> list[JSON]:
        block = self.blocks.get(event.get("index", -1))
        if block is None:
            return []
        if block.kind == "json" and not block.sent:
            return [self.chunk({"content": "{}"})]
        if block.kind == "tool" and not block.sent:  # a tool without arguments still gets a JSON object
            return [self.chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": "{}"}}]})]
        if block.kind == "thinking":  # the signed block, for a client to send back in a tool loop
            signed: JSON = {"index": self.signed, "type": "thinking"}
            if block.data:
                signed.update(type="redacted_thinking", data=block.data)
            else:
                signed.update(thinking="".join(block.thinking), signature=block.signature)
            self.signed += 1
            return [self.chunk({"thinking_blocks": [signed]})]
        return []

    def on_message_delta(self, event: JSON) -> list[JSON]:
        self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        delta: JSON = {}
        if stop_reason == "refusal":
            delta["refusal"] = _refusal((event.get("delta") or {}).get("stop_details"))
        return [self.chunk(delta, finish_reason(stop_reason, self.tool_calls > 0))]

    def on_message_stop(self, event: JSON) -> list[JSON]:
        self.stopped = True
        return []


async def from_events(
    events: AsyncIterable[tuple[str | None, bytes]], *, include_usage: bool = False, secret: str | None = None
) -> AsyncIterator[JSON]:
    """``chat.completion.chunk`` objects from the Messages API's named SSE events.

    The usage chunk (``choices: []``) comes last, and only with
    ``include_usage``. An ``error`` event raises; a stream that ends without
    ``message_stop`` was cut short and raises too. ``secret`` (the API key)
    is blanked out of error messages.
    """
    stream = _Stream()
    async for name, data in events:
        event = parse_object(data)
        kind = event.get("type") or name
        if kind == "error":
            error = _error_from_body(200, event, {})
            error.message = redact(error.message, secret)
            raise error
        handler = getattr(stream, f"on_{kind}", None)
        if handler is None:  # ping, and event types added after this was written
            continue
        items = handler(event)
        if items and not stream.announced:
            # The role chunk waits for the first output, so that an error event right after
            # message_start (an overload, typically) comes before the first chunk and can
            # still be retried or fall back.
            stream.announced = True
            yield stream.chunk({"role": "assistant", "content": ""})
        for item in items:
            yield item
        if stream.stopped:
            if include_usage:
                yield usage_chunk(stream.id, stream.model, stream.created, to_usage(stream.usage))
            return
    raise UpstreamUnavailable("The upstream closed the stream before it was complete.")


# -- errors ----------------------------------------------------------------------------------------


def to_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """The upstream's error, as it would reach an OpenAI client."""
    return _error_from_body(status, error_body(body), headers)


def _error_from_body(status: int, body: JSON, headers: Mapping[str, str]) -> UpstreamError:
    error = _object(body.get("error"))
    kind = str(error.get("type") or "")
    known = _ERRORS.get(kind)
    if status == 529:  # Anthropic's overload status; OpenAI clients know 503 and retry it alike
        status = 503
    elif status < 400:  # an error event inside a 200 stream
        status = known[0] if known else 502
    openai_type = known[1] if known else ("invalid_request_error" if status < 500 else "server_error")
    code = (known[2] if known else None) or kind or None
    if error_code := _object(error.get("details")).get("error_code"):  # e.g. a spend limit: a quota, not a rate
        code = str(error_code)
        openai_type = "insufficient_quota" if kind == "rate_limit_error" else openai_type
    message = error.get("message")
    return UpstreamError(
        message if isinstance(message, str) and message else f"The upstream answered with status {status}.",
        status=status,
        type=openai_type,
        code=code,
        retryable=True if kind == "overloaded_error" else is_retryable_status(status),
        retry_after=retry_after(headers),
    )


def _object(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


# -- adapter ---------------------------------------------------------------------------------------


class AnthropicAdapter(HTTPAdapter):
    """Messages API calls to one Anthropic provider."""

    def __init__(self, provider: Provider) -> None:
        # ``…/v1`` is accepted as well, as OpenAI-style base URLs end in it.
        base_url = (provider.base_url or DEFAULT_BASE_URL).removesuffix("/v1")
        self._url = base_url + "/v1/messages"
        self._version = str(provider.options.get("anthropic_version", DEFAULT_VERSION))
        self._max_tokens = int(provider.options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
        super().__init__(provider, to_error, lambda key: {"x-api-key": key, "anthropic-version": self._version})

    def _body(self, request: JSON, target: Target) -> JSON:
        return to_request(request, target, version=self._version, default_max_tokens=self._max_tokens)

    async def complete(self, request: JSON, target: Target) -> JSON:
        return from_response(await self.post(self._url, self._body(request, target)))

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        reply = await self.open_stream(self._url, {**self._body(request, target), "stream": True})
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = sse_events(reply.chunks())
        return reply.guard(from_events(events, include_usage=include_usage, secret=self._api_key))
