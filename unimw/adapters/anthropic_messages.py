"""OpenAI chat messages and tools as Messages API turns, content blocks and tools.

* Leading ``system``/``developer`` messages become ``system``; later ones are
  folded into the user turn at their place, marked ``[system]``.
* ``tool`` messages become ``tool_result`` blocks at the head of a user turn;
  consecutive same-role turns are merged.
* ``cache_control`` on a part, a message or a tool stays on the block it
  marks (:mod:`unimw.adapters.anthropic_cache`).
"""

from __future__ import annotations

import re
from typing import Any

from unimw.adapters.anthropic_cache import mark, mark_message, refuse_empty
from unimw.adapters.anthropic_models import Traits
from unimw.errors import InvalidRequest
from unimw.wire import JSON, dumps, loads

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.DOTALL)
_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")


def translate_messages(messages: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    """``(system blocks, turns)``: alternating user/assistant turns with tool results first."""
    system: list[JSON] = []
    turns: list[JSON] = []
    for i, message in enumerate(messages):
        role, content, param = message["role"], message.get("content"), f"messages[{i}].content"
        if role in ("system", "developer"):
            blocks = _text_blocks(content, param)
            mark_message(blocks, message, i)
            if not turns:
                system.extend(blocks)
            else:  # the Messages API has no system turn mid-conversation on most models
                _append(turns, "user", [{**b, "text": "[system] " + b["text"]} for b in blocks])
        elif role == "user":
            _append(turns, "user", _marked(_user_blocks(content, param), message, i))
        elif role == "assistant":
            _append(turns, "assistant", _marked(_assistant_blocks(message, i), message, i))
        elif role == "tool":
            _append(turns, "user", _marked([_tool_result(message, param)], message, i))
        else:
            raise InvalidRequest(
                f"Messages with role '{role}' are not supported by this model; use tools.", param=f"messages[{i}].role"
            )
    for turn in turns:
        if turn["role"] == "user":  # tool results must lead their turn
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _marked(blocks: list[JSON], message: JSON, i: int) -> list[JSON]:
    mark_message(blocks, message, i)
    return blocks


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
        where = f"{param}[{j}]"
        if part.get("type") not in ("text", "refusal"):
            raise InvalidRequest(f"Only text parts are allowed in '{param}'.", param=where)
        if text := _part_text(part, where):
            blocks.append(mark({"type": "text", "text": text}, part, where))
        else:
            refuse_empty(part, where)
    return blocks


def _part_text(part: JSON, where: str) -> str:
    kind = part["type"]
    if not isinstance(text := part.get(kind), str):
        raise InvalidRequest(f"Invalid type for '{where}.{kind}': expected a string.", param=f"{where}.{kind}")
    return text


def _user_blocks(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return _text_blocks(content, param)
    blocks = []
    for j, part in enumerate(content or ()):
        kind, where = part.get("type"), f"{param}[{j}]"
        if kind == "text":
            if text := _part_text(part, where):
                blocks.append(mark({"type": "text", "text": text}, part, where))
            else:
                refuse_empty(part, where)
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append(mark(_image(image.get("url") if isinstance(image, dict) else image, where), part, where))
        elif kind == "file":
            file = part.get("file")
            blocks.append(
                mark(_document(file.get("file_data") if isinstance(file, dict) else None, where), part, where)
            )
        else:
            raise InvalidRequest(f"Content parts of type {kind!r} are not supported by this model.", param=where)
    return blocks


def _image(url: Any, param: str) -> JSON:
    url = url if isinstance(url, str) else ""
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if not match or match["mime"] not in _IMAGE_TYPES:
        raise InvalidRequest(
            "Images must be http(s) URLs or base64 data URLs of type jpeg, png, gif or webp.", param=param
        )
    return {"type": "image", "source": {"type": "base64", "media_type": match["mime"], "data": match["data"]}}


def _document(data: Any, param: str) -> JSON:
    if not isinstance(data, str):
        raise InvalidRequest("Only inline 'file_data' is supported by this model, not 'file_id'.", param=param)
    match = _DATA_URL.match(data)
    if match and match["mime"] != "application/pdf":
        raise InvalidRequest("Only PDF files are supported by this model.", param=param)
    source = {"type": "base64", "media_type": "application/pdf", "data": match["data"] if match else data}
    return {"type": "document", "source": source}


def _assistant_blocks(message: JSON, i: int) -> list[JSON]:
    # Signed thinking must lead the turn when it is sent back (tool loops with thinking on).
    thinking = message.get("thinking_blocks")
    blocks = [_thinking_block(b) for b in thinking if isinstance(b, dict)] if isinstance(thinking, list) else []
    blocks.extend(_text_blocks(message.get("content"), f"messages[{i}].content"))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(
            f"Invalid type for 'messages[{i}].tool_calls': expected an array.", param=f"messages[{i}].tool_calls"
        )
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidRequest("Only function tool calls are supported by this model.", param=param)
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"Missing required parameter: '{param}.function.name'.", param=f"{param}.function.name"
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_id(str(call.get("id") or f"call_{i}_{j}")),
                "name": function["name"],
                "input": _arguments(function.get("arguments"), param + ".function.arguments"),
            }
        )
    return blocks


def _thinking_block(block: JSON) -> JSON:
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data", "")}
    return {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}


def _arguments(arguments: Any, param: str) -> JSON:
    if arguments is None or arguments == "":
        return {}
    try:
        value = loads(arguments) if isinstance(arguments, str) else None
        dumps(value)  # the body is sent as JSON: arguments nested past what the serialiser takes are refused here
    except (ValueError, TypeError):
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


# -- tools -----------------------------------------------------------------------------------------


def translate_tools(chat: JSON, model: Traits, dropped: list[str]) -> JSON:
    """``tools`` and ``tool_choice`` in the Messages API's forms."""
    tools, choice = chat.get("tools") or [], chat.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = _field(choice, "allowed_tools")
        listed = allowed.get("tools")
        names = {_name(t) for t in listed} if isinstance(listed, list) else set()
        tools = [t for t in tools if _name(t) in names - {None}]
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
        if not isinstance(name := _name(choice), str):
            raise InvalidRequest("Only function tool choices are supported by this model.", param="tool_choice")
        out["tool_choice"] = {"type": "tool", "name": name}
    elif choice == "auto":
        out["tool_choice"] = {"type": "auto"}
    if chat.get("parallel_tool_calls") is False:
        out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return out


def _field(obj: Any, key: str) -> JSON:
    """``obj[key]`` when both are objects, else ``{}``: a nested field of the wrong type counts as absent."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _name(tool_or_choice: Any) -> str | None:
    name = _field(tool_or_choice, "function").get("name")
    return name if isinstance(name, str) else None


def _tool(tool: JSON, i: int, model: Traits, dropped: list[str]) -> JSON:
    if tool.get("type") != "function":
        raise InvalidRequest("Only function tools are supported by this model.", param=f"tools[{i}].type")
    function = tool["function"]
    schema = function.get("parameters") or {}
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"Invalid type for 'tools[{i}].function.parameters': expected an object.",
            param=f"tools[{i}].function.parameters",
        )
    out: JSON = {"name": function["name"], "input_schema": {"type": "object", **schema}}
    if description := function.get("description"):
        out["description"] = description
    if function.get("strict") is not None:
        if model.native_json:
            out["strict"] = bool(function["strict"])
        elif "tools.function.strict" not in dropped:
            dropped.append("tools.function.strict")
    return mark(out, tool, f"tools[{i}]")
