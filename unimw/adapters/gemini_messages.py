"""OpenAI messages and tools as Gemini ``contents``, ``systemInstruction``, ``functionDeclarations`` and ``toolConfig``.

System and developer messages (wherever they are) → ``systemInstruction``;
user → ``user`` and assistant → ``model`` contents, consecutive ones of a role
merged; text, ``image_url`` (data URL → ``inlineData``, http(s)/gs URL →
``fileData`` with a MIME type guessed from the path; nothing is fetched),
``input_audio`` and base64 ``file`` parts; ``tool_calls`` → ``functionCall``
parts; tool messages → ``functionResponse`` parts ``{"result": <JSON or
text>}`` in a ``user`` content, named after the assistant tool call with that
id (ids and thought signatures: :mod:`unimw.adapters.gemini_thinking`).

``tools`` → ``functionDeclarations``, their schemas converted by
:mod:`unimw.adapters.gemini_schema`; a tool with no properties is declared
without ``parameters``. ``tool_choice`` auto/none/required/named →
``functionCallingConfig`` AUTO/NONE/ANY/ANY + ``allowedFunctionNames``
(``allowed_tools``: ``required`` → ANY + names, ``auto`` → AUTO over only the
allowed declarations).

Not carried: ``image_url.detail``, and Gemini's built-in tools (reachable
through ``params``).
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping, Sequence
from typing import Any

from unimw.adapters.gemini_schema import Budget, to_schema
from unimw.adapters.gemini_thinking import sign_unsigned_calls, split_call_id
from unimw.errors import InvalidRequest
from unimw.wire import JSON, dumps, loads

_DATA_URL = re.compile(r"data:([^;,]*)(?:;[^;,]*)*;base64,(.*)", re.DOTALL)


def to_contents(messages: Sequence[JSON], version: tuple[int, int] | None = None) -> tuple[list[JSON], list[JSON]]:
    """``(systemInstruction parts, contents)`` for an OpenAI message list."""
    system: list[JSON] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for the tool messages that follow
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(message.get("content")))
            continue
        if role == "assistant":
            gemini_role, parts = "model", _assistant_parts(message, names, i)
        elif role in ("tool", "function"):
            gemini_role, parts = "user", [_function_response(message, names, i)]
        else:
            gemini_role, parts = "user", _user_parts(message.get("content"), i)
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if version is None or version >= (3, 0):
        for content in contents:
            sign_unsigned_calls(content)
    return system, contents


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    return [p["text"] for p in content or () if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]


def _assistant_parts(message: JSON, names: dict[str, str], i: int) -> list[JSON]:
    parts: list[JSON] = [{"text": text} for text in _texts(message.get("content"))]
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(
            f"Invalid type for 'messages[{i}].tool_calls': expected an array.", param=f"messages[{i}].tool_calls"
        )
    if isinstance(legacy := message.get("function_call"), dict):
        calls = [*calls, {"id": "", "type": "function", "function": legacy}]
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"Missing required parameter: '{where}.function.name'.", param=f"{where}.function")
        call_id = str(call.get("id") or "")
        names[call_id] = function["name"]
        gemini_id, signature = split_call_id(call_id)
        if signature is None:  # the field Google's own OpenAI-compatible endpoint uses
            signature = _field(_field(call, "extra_content"), "google").get("thought_signature")
        function_call: JSON = {"name": function["name"], "args": _arguments(function.get("arguments"), where)}
        if gemini_id:
            function_call["id"] = gemini_id
        part: JSON = {"functionCall": function_call}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(arguments: Any, where: str) -> JSON:
    if arguments in (None, ""):
        return {}
    try:
        args = loads(arguments) if isinstance(arguments, str) else arguments
        dumps(args)  # the body is sent as JSON: arguments nested past what the serialiser takes are refused here
    except (ValueError, TypeError):
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"Invalid '{where}.function.arguments': expected a JSON object.",
            param=f"{where}.function.arguments",
            code="invalid_value",
        )
    return args


def _function_response(message: JSON, names: Mapping[str, str], i: int) -> JSON:
    call_id = str(message.get("tool_call_id") or "")
    name = message.get("name") if message["role"] == "function" else names.get(call_id)
    if not isinstance(name, str):
        raise InvalidRequest(
            f"Invalid 'messages[{i}].tool_call_id': no earlier assistant tool call has the id {call_id!r}.",
            param=f"messages[{i}].tool_call_id",
            code="invalid_value",
        )
    text = "".join(_texts(message.get("content")))
    try:
        result = loads(text)
        dumps(result)  # JSON nested past what the serialiser takes goes as the text it came as
    except (ValueError, TypeError):
        result = text
    response: JSON = {"name": name, "response": {"result": result}}
    gemini_id, _ = split_call_id(call_id)
    if gemini_id:
        response["id"] = gemini_id
    return {"functionResponse": response}


def _user_parts(content: Any, i: int) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content or ()):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            if not isinstance(text := part.get("text"), str):
                raise InvalidRequest(f"Invalid type for '{where}.text': expected a string.", param=f"{where}.text")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(_media(image.get("url") if isinstance(image, dict) else image, where))
        elif kind == "input_audio":
            audio = _field(part, "input_audio")
            mime = "audio/" + str(audio.get("format") or "wav")
            parts.append({"inlineData": {"mimeType": mime, "data": audio.get("data") or ""}})
        elif kind == "file" and _field(part, "file").get("file_data"):
            parts.append(_media(part["file"]["file_data"], where, "application/pdf"))
        else:
            raise InvalidRequest(
                f"Unsupported content part {where} of type {kind!r} for this model.", param=f"{where}.type"
            )
    return parts


def _field(obj: Any, key: str) -> JSON:
    """``obj[key]`` when both are objects, else ``{}``: a nested field of the wrong type counts as absent."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _media(url: Any, where: str, default_mime: str = "application/octet-stream") -> JSON:
    """A data URL inlined, or an http(s)/gs URL handed to Gemini to fetch (we fetch nothing)."""
    if isinstance(url, str) and (match := _DATA_URL.fullmatch(url)):
        return {"inlineData": {"mimeType": match[1] or default_mime, "data": match[2]}}
    if isinstance(url, str) and url.startswith(("https://", "http://", "gs://")):
        file_data = {"fileUri": url}
        if mime := mimetypes.guess_type(url.split("?", 1)[0])[0]:
            file_data["mimeType"] = mime
        return {"fileData": file_data}
    if isinstance(url, str) and url.startswith("data:"):
        # Proto bytes on the wire are base64 only.
        raise InvalidRequest(f"The data URL in {where} must be base64-encoded.", param=where)
    raise InvalidRequest(f"Invalid URL in {where}: use a base64 data URL or an http(s) URL.", param=where)


# -- tools ---------------------------------------------------------------------


def to_declarations(tools: Any, tool_choice: Any) -> list[JSON]:
    """``functionDeclarations`` for ``tools``, narrowed to the allowed ones for ``allowed_tools``."""
    allowed = _allowed_names(tool_choice) if _choice_type(tool_choice) == "allowed_tools" else None
    declarations: list[JSON] = []
    budget = Budget("the tools of a request count together")
    for i, tool in enumerate(tools or ()):
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"Unsupported tool type {tool.get('type')!r} in tools[{i}]: this model only takes function tools.",
                param=f"tools[{i}].type",
            )
        function = tool["function"]
        if allowed is not None and function["name"] not in allowed:
            continue
        declaration: JSON = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = to_schema(function.get("parameters"), param=f"tools[{i}].function.parameters", budget=budget)
        if parameters.get("properties") or parameters.get("anyOf"):
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return declarations


def _choice_type(choice: Any) -> str | None:
    return choice.get("type") if isinstance(choice, dict) else None


def _allowed_names(choice: JSON) -> list[str]:
    tools = _field(choice, "allowed_tools").get("tools")
    names = (_field(t, "function").get("name") for t in tools) if isinstance(tools, list) else ()
    return [name for name in names if isinstance(name, str)]


def to_calling_config(choice: Any) -> JSON | None:
    """``functionCallingConfig`` for ``tool_choice``; ``None`` when the caller sent none."""
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    if _choice_type(choice) == "function":
        if not isinstance(name := _field(choice, "function").get("name"), str):
            raise InvalidRequest(
                "Missing required parameter: 'tool_choice.function.name'.", param="tool_choice.function.name"
            )
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    if _choice_type(choice) == "allowed_tools":
        if _field(choice, "allowed_tools").get("mode") == "required":
            return {"mode": "ANY", "allowedFunctionNames": _allowed_names(choice)}
        return {"mode": "AUTO"}  # the declarations are already narrowed to the allowed tools
    raise InvalidRequest(f"Unsupported tool_choice {choice!r} for this model.", param="tool_choice")
