"""Prompts and completions in the GenAI conventions' message form, for opt-in content capture.

``gen_ai.input.messages`` and ``gen_ai.output.messages`` are JSON arrays of
``{"role", "parts": [...]}`` (output messages add ``finish_reason``), with
parts ``text``, ``tool_call``, ``tool_call_response``, ``uri``, ``blob`` and
``file`` (schemas ``gen-ai-input-messages.json`` / ``gen-ai-output-messages.json``).
Chat Completions carries system and developer messages inside the history,
so, as the conventions ask, they are input messages with role ``system``
rather than ``gen_ai.system_instructions`` (for APIs that take instructions
apart from the history). Only the request body and the answer are read here,
never headers: nothing secret can get in.

These functions run when a call is finished, after it was charged, on
whatever the caller and the vendor sent: they accept any JSON and never
raise (a value of an unexpected shape is skipped or kept as it is).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from unimw.wire import JSON, dumps, loads

#: OpenAI finish reasons → the conventions' (``stop``, ``length``, ``content_filter``, ``tool_call``, ``error``).
FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}
_ROLES = {"developer": "system", "function": "tool"}


def input_messages(request: JSON) -> str:
    """The request's messages as ``gen_ai.input.messages``."""
    return _json([_input_message(m) for m in _list(request.get("messages")) if isinstance(m, dict)])


def tool_definitions(request: JSON) -> str | None:
    """The request's tools as ``gen_ai.tool.definitions``; None when it offers none."""
    tools = request.get("tools")
    if not tools or not isinstance(tools, list):
        return None
    return _json([_tool_definition(t) for t in tools if isinstance(t, dict)])


def output_messages(completion: JSON) -> str:
    """The choices of a ``chat.completion`` as ``gen_ai.output.messages``."""
    out = []
    for choice in _list(completion.get("choices")):
        if not isinstance(choice, dict):
            continue
        message = _object(choice.get("message"))
        reason = str(choice.get("finish_reason") or "error")
        out.append(
            {
                "role": "assistant",
                "parts": [*_parts(message.get("content")), *_tool_calls(message.get("tool_calls"))],
                "finish_reason": FINISH_REASONS.get(reason, reason),
            }
        )
    return _json(out)


def _input_message(message: JSON) -> JSON:
    role = str(message.get("role"))
    role = _ROLES.get(role, role)
    if role == "tool":
        content = message.get("content")
        response = content if isinstance(content, str) else "".join(str(p.get("content", "")) for p in _parts(content))
        parts: list[JSON] = [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": response}]
    else:
        parts = [*_parts(message.get("content")), *_tool_calls(message.get("tool_calls"))]
    out: JSON = {"role": role, "parts": parts}
    if isinstance(name := message.get("name"), str):
        out["name"] = name
    return out


def _parts(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if not isinstance(content, list):
        return []
    return [_part(p) for p in content if isinstance(p, dict)]


def _part(part: JSON) -> JSON:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "content": part.get("text")}
    if kind == "image_url":
        url = str(_object(part.get("image_url")).get("url") or "")
        if url.startswith("data:") and ";base64," in url:
            mime, _, data = url[5:].partition(";base64,")
            return {"type": "blob", "modality": "image", "mime_type": mime, "content": data}
        return {"type": "uri", "modality": "image", "uri": url}
    if kind == "input_audio":
        audio = _object(part.get("input_audio"))
        return {
            "type": "blob",
            "modality": "audio",
            "mime_type": f"audio/{audio.get('format')}",
            "content": audio.get("data"),
        }
    if kind == "file" and (file_id := _object(part.get("file")).get("file_id")):
        return {"type": "file", "file_id": file_id}
    return dict(part)  # the schema's generic part: {"type": ..., ...}


def _tool_calls(calls: Any) -> Iterable[JSON]:
    for call in _list(calls):
        if not isinstance(call, dict):
            continue
        function = _object(call.get("function"))
        yield {
            "type": "tool_call",
            "id": call.get("id"),
            "name": function.get("name"),
            "arguments": _arguments(function.get("arguments")),
        }


def _arguments(arguments: Any) -> Any:
    """Tool arguments as a value (the conventions' form), when OpenAI's JSON string parses."""
    if isinstance(arguments, str):
        try:
            return loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _tool_definition(tool: JSON) -> JSON:
    function = tool.get("function")
    if tool.get("type") == "function" and isinstance(function, dict):
        return {"type": "function", **function}
    return dict(tool)


def _object(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json(value: Any) -> str:
    try:
        return dumps(value).decode()
    except TypeError:  # nested past what JSON serialisers take (a vendor's answer is only bounded by its parser)
        return "[]"
