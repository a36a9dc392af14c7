"""Google Gemini API (``generateContent``), spoken from OpenAI Chat Completions.

Provider::

    gemini: {kind: gemini, api_key: ${GEMINI_API_KEY}}

Calls go to ``{base_url}/models/{model}:generateContent`` and, for streams,
``:streamGenerateContent?alt=sse`` (``base_url`` defaults to
``https://generativelanguage.googleapis.com/v1beta``), with the key in the
``x-goog-api-key`` header. Options (``providers.<name>.options``):

* ``thinking_levels``: model-id prefix → the thinking levels those models
  accept (longest prefix wins), merged over :data:`THINKING_LEVELS`;
  support changes from release to release.
* ``include_thoughts``: ask for thought summaries on every call.

A model's ``params`` are Gemini request fields, deep-merged under the
translated request (the caller's fields win; lists such as ``tools`` are
replaced, not joined), e.g. ``{"safetySettings": [...]}`` or
``{"generationConfig": {"topK": 40}}``. A thinking budget or level from
``params`` gives way to the caller's ``reasoning_effort`` (both is a 400).

Request: system and developer messages (wherever they are) → ``systemInstruction``;
user → ``user`` and assistant → ``model`` contents, consecutive ones of a role
merged; text, ``image_url`` (data URL → ``inlineData``, http(s)/gs URL →
``fileData`` with a MIME type guessed from the path; nothing is fetched),
``input_audio`` and base64 ``file`` parts; ``tool_calls`` → ``functionCall``
parts; tool messages → ``functionResponse`` parts ``{"result": <JSON or
text>}`` in a ``user`` content, named after the assistant tool call with that
id. ``tools`` → ``functionDeclarations``; ``tool_choice``
auto/none/required/named → ``functionCallingConfig`` AUTO/NONE/ANY/ANY +
``allowedFunctionNames`` (``allowed_tools``: ``required`` → ANY + names,
``auto`` → AUTO over only the allowed declarations); ``temperature``,
``top_p``, ``max_completion_tokens`` (else ``max_tokens``), ``stop``, ``n``,
``seed``, penalties, ``logprobs``/``top_logprobs`` → ``generationConfig``;
``response_format`` → ``responseMimeType`` plus ``responseJsonSchema`` (the
schema as given), or a converted ``responseSchema`` for models before 2.5;
``reasoning_effort`` → ``thinkingLevel`` on Gemini 3+ (the nearest level at
or above the one asked for that the model accepts; ``none`` → the lowest)
or ``thinkingBudget`` on 2.5 (none 0, or 128 on Pro; minimal/low 1024;
medium 8192; high 24576; xhigh 24576, or 32768 on Pro); no effort sends
nothing. ``service_tier`` flex/priority → ``serviceTier``. Anything else
(``user``, ``metadata``, ``logit_bias``, ``reasoning_effort`` for other
models, ...) is left out and recorded with :func:`note_dropped`.

Tool schemas become the OpenAPI-subset ``parameters``: ``$ref`` is inlined
from ``$defs``/``definitions``, its sibling keywords winning (a recursive
reference becomes an ``OBJECT`` with no properties); ``type`` is upper-cased
(several types → ``anyOf``); ``"null"`` as a type, ``anyOf``/``oneOf``
member or ``enum`` value → ``nullable``; ``oneOf`` → ``anyOf``; ``allOf`` is
merged into one schema; ``const`` → ``enum``; a non-string ``enum`` is
dropped and its values are listed in the ``description``;
``exclusiveMinimum``/``exclusiveMaximum`` → ``minimum``/``maximum``;
``examples`` → ``example``; ``format`` is kept only where Gemini knows it
(date-time/enum, float/double, int32/int64); ``required`` keeps only
declared properties; ``properties``, object ``items``, ``title``,
``description``, ``default``, ``pattern``, ``minimum``, ``maximum`` and the
length/item/property counts are kept; every other keyword
(``additionalProperties``, ``$defs``, ``$schema``, ``not``,
``patternProperties``, ``uniqueItems``, tuple ``items``, ...) is dropped. A
tool with no properties is declared without ``parameters``.

Response: candidates → choices; text → ``content``; ``thought`` parts →
``reasoning_content``, never ``content``; ``functionCall`` → ``tool_calls``;
``finishReason`` STOP → stop (tool_calls when the model called a function),
MAX_TOKENS → length, SAFETY, RECITATION, LANGUAGE, BLOCKLIST,
PROHIBITED_CONTENT, SPII, IMAGE_* and a blocked prompt → content_filter,
anything else → stop; ``logprobsResult`` → ``logprobs``; ``usageMetadata`` →
usage with OpenAI meanings (prompt includes tool-use prompt tokens,
completion includes thoughts; cached and reasoning token details). A
stream ends when every candidate has a ``finishReason``; one cut short
raises :class:`UpstreamUnavailable`.

Gemini gives function calls no id, so tool-call ids are made from the
response id, candidate, position, name and arguments: the same response
always gives the same ids (an id Gemini does give is kept and sent back).
Gemini 3 thought signatures must come back on the same parts, so a call's
signature rides in its id as ``<id>~<signature>`` (clients send ids back
untouched) and is restored on the way out; ``extra_content.google
.thought_signature``, where Google's own compatible endpoint puts it, is read
too. A model turn with calls and no signature (history from another model)
gets Google's documented ``skip_thought_signature_validator``.

Not carried: signatures on text parts (Google does not check them), code
execution parts and media in answers, ``image_url.detail``, and Gemini's
built-in tools (reachable through ``params``).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from unimw.adapters.base import HTTPAdapter, Target, note_dropped, parse_object, redact, retry_after
from unimw.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from unimw.policy import Provider
from unimw.wire import JSON, chunk, completion_id, dumps, loads, now, sse_events, usage, usage_chunk

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

#: Thinking levels per model-id prefix; the longest matching prefix wins.
THINKING_LEVELS: Mapping[str, tuple[str, ...]] = {
    "gemini-3": ("minimal", "low", "medium", "high"),
    "gemini-3-pro": ("low", "high"),
    "gemini-3.1-pro": ("low", "high"),
}
SKIP_SIGNATURE = "skip_thought_signature_validator"

_LEVELS = ("minimal", "low", "medium", "high", "xhigh")
_EFFORT_LEVEL = {
    "none": "minimal",  # Gemini 3 cannot turn thinking off: the least there is
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}
_EFFORT_BUDGET = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")
_SYNTHETIC_ID = re.compile(r"call_[0-9a-f]{24}")
_DATA_URL = re.compile(r"data:([^;,]*)(?:;[^;,]*)*;base64,(.*)", re.DOTALL)

_TRANSLATED = frozenset(
    {
        "model", "messages", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty", "max_tokens",
        "max_completion_tokens", "stop", "logprobs", "top_logprobs", "response_format", "reasoning_effort",
        "service_tier",
    }
)  # fmt: skip
_SAMPLING = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        (
            "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER", "MODEL_ARMOR",
        ),
        "content_filter",
    ),
}  # fmt: skip

# JSON Schema keywords the OpenAPI-subset Schema has under the same name.
_SCHEMA_KEPT = (
    "title", "description", "nullable", "default", "example", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
)  # fmt: skip
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}

# google.rpc status → (HTTP status, OpenAI error type, OpenAI code)
_STATUS: dict[str, tuple[int, str, str | None]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", None),
    "FAILED_PRECONDITION": (400, "invalid_request_error", "failed_precondition"),
    "OUT_OF_RANGE": (400, "invalid_request_error", None),
    "UNAUTHENTICATED": (401, "invalid_request_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "invalid_request_error", "permission_denied"),
    "NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    "RESOURCE_EXHAUSTED": (429, "requests", "rate_limit_exceeded"),
    "INTERNAL": (500, "server_error", None),
    "UNKNOWN": (500, "server_error", None),
    "UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "server_error", "deadline_exceeded"),
}


# -- request -----------------------------------------------------------------


def to_request(
    chat: JSON,
    target: Target,
    *,
    thinking_levels: Mapping[str, Sequence[str]] = THINKING_LEVELS,
    include_thoughts: bool = False,
) -> JSON:
    """The ``generateContent`` body for a (validated) chat request."""
    version = model_version(target.model)
    system, contents = to_contents(chat["messages"], version)
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if declarations := _declarations(chat.get("tools"), chat.get("tool_choice")):
        body["tools"] = [{"functionDeclarations": declarations}]
        if (mode := _calling_config(chat.get("tool_choice"))) is not None:
            body["toolConfig"] = {"functionCallingConfig": mode}
    dropped = [k for k in chat if k not in _TRANSLATED]
    if chat.get("parallel_tool_calls") is False:
        dropped.append("parallel_tool_calls")  # Gemini may always call several functions at once
    config = _generation_config(chat, version)
    thinking = to_thinking(chat.get("reasoning_effort"), target.model, thinking_levels)
    if thinking is None:
        dropped.append("reasoning_effort")
        thinking = {}
    if include_thoughts:
        thinking["includeThoughts"] = True
    if thinking:
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    if chat.get("service_tier") in ("flex", "priority"):
        body["serviceTier"] = chat["service_tier"]
    if dropped:
        note_dropped(*sorted(dropped))
    return _with_params(target.params, body) if target.params else body


def model_version(model: str) -> tuple[int, int] | None:
    """``(major, minor)`` from a ``gemini-X.Y-...`` model id; ``None`` for other ids (aliases, tuned models)."""
    match = _VERSION.match(model.rpartition("/")[2])
    return (int(match[1]), int(match[2] or 0)) if match else None


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
            _sign_unsigned_calls(content)
    return system, contents


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    return [p["text"] for p in content or () if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]


def _assistant_parts(message: JSON, names: dict[str, str], i: int) -> list[JSON]:
    parts: list[JSON] = [{"text": text} for text in _texts(message.get("content"))]
    calls = message.get("tool_calls") or []
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
            signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
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
    except ValueError:
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
    except ValueError:
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
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(_media(image.get("url") if isinstance(image, dict) else image, where))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime = "audio/" + str(audio.get("format") or "wav")
            parts.append({"inlineData": {"mimeType": mime, "data": audio.get("data") or ""}})
        elif kind == "file" and (part.get("file") or {}).get("file_data"):
            parts.append(_media(part["file"]["file_data"], where, "application/pdf"))
        else:
            raise InvalidRequest(
                f"Unsupported content part {where} of type {kind!r} for this model.", param=f"{where}.type"
            )
    return parts


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


def _sign_unsigned_calls(content: JSON) -> None:
    """A model turn with calls but no signature (history from elsewhere) gets Google's documented bypass value."""
    calls = [p for p in content["parts"] if "functionCall" in p]
    if content["role"] == "model" and calls and not any("thoughtSignature" in p for p in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE


def _declarations(tools: Any, tool_choice: Any) -> list[JSON]:
    allowed = _allowed_names(tool_choice) if _choice_type(tool_choice) == "allowed_tools" else None
    declarations: list[JSON] = []
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
        parameters = to_schema(function.get("parameters"))
        if parameters.get("properties") or parameters.get("anyOf"):
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return declarations


def _choice_type(choice: Any) -> str | None:
    return choice.get("type") if isinstance(choice, dict) else None


def _allowed_names(choice: JSON) -> list[str]:
    tools = (choice.get("allowed_tools") or {}).get("tools") or ()
    return [t["function"]["name"] for t in tools if isinstance(t, dict) and "function" in t]


def _calling_config(choice: Any) -> JSON | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    if _choice_type(choice) == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    if _choice_type(choice) == "allowed_tools":
        if (choice.get("allowed_tools") or {}).get("mode") == "required":
            return {"mode": "ANY", "allowedFunctionNames": _allowed_names(choice)}
        return {"mode": "AUTO"}  # the declarations are already narrowed to the allowed tools
    raise InvalidRequest(f"Unsupported tool_choice {choice!r} for this model.", param="tool_choice")


def _generation_config(chat: JSON, version: tuple[int, int] | None) -> JSON:
    config: JSON = {theirs: chat[ours] for ours, theirs in _SAMPLING if chat.get(ours) is not None}
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    if stop := chat.get("stop"):
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if chat.get("logprobs"):
        config["responseLogprobs"] = True
        if chat.get("top_logprobs"):
            config["logprobs"] = chat["top_logprobs"]
    config.update(_response_format(chat.get("response_format"), version))
    return config


def _response_format(response_format: JSON | None, version: tuple[int, int] | None) -> JSON:
    kind = (response_format or {}).get("type")
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        out: JSON = {"responseMimeType": "application/json"}
        schema = ((response_format or {}).get("json_schema") or {}).get("schema")
        if schema is not None and version is not None and version < (2, 5):
            out["responseSchema"] = to_schema(schema, ordered=True)
        elif schema is not None:
            out["responseJsonSchema"] = schema  # full JSON Schema, $ref and additionalProperties included
        return out
    raise InvalidRequest(
        f"Invalid value for 'response_format.type': {kind!r}.", param="response_format.type", code="invalid_value"
    )


def to_thinking(effort: Any, model: str, levels: Mapping[str, Sequence[str]] = THINKING_LEVELS) -> JSON | None:
    """``thinkingConfig`` for ``reasoning_effort``: ``{}`` when none is asked, ``None`` when the model has no mapping."""
    if effort is None:
        return {}  # the model's own default
    if effort not in _EFFORT_LEVEL:
        raise InvalidRequest(
            f"Invalid value for 'reasoning_effort': {effort!r}. Supported values are: "
            + ", ".join(f"'{e}'" for e in _EFFORT_LEVEL)
            + ".",
            param="reasoning_effort",
            code="invalid_value",
        )
    version = model_version(model)
    if version is not None and version >= (3, 0):
        return {"thinkingLevel": thinking_level(effort, _levels_for(model, levels))}
    if version == (2, 5):
        return {"thinkingBudget": thinking_budget(effort, model)}
    return None


def thinking_level(effort: str, supported: Sequence[str]) -> str:
    """The level nearest at or above what ``effort`` asks for (the highest if none is)."""
    wanted = _LEVELS.index(_EFFORT_LEVEL[effort])
    ranked = sorted((lv for lv in supported if lv in _LEVELS), key=_LEVELS.index) or list(_LEVELS[:4])
    return next((lv for lv in ranked if _LEVELS.index(lv) >= wanted), ranked[-1]).upper()


def thinking_budget(effort: str, model: str) -> int:
    """Gemini 2.5 thinking tokens for ``effort``; Pro can neither go to 0 nor below 128."""
    pro = "-pro" in model
    if effort == "none":
        return 128 if pro else 0
    if effort in ("xhigh", "max"):
        return 32768 if pro else 24576
    return _EFFORT_BUDGET[effort]


def _levels_for(model: str, levels: Mapping[str, Sequence[str]]) -> Sequence[str]:
    name = model.rpartition("/")[2]
    prefixes = [p for p in levels if name.startswith(p)]
    return levels[max(prefixes, key=len)] if prefixes else _LEVELS[:4]


def _with_params(params: Mapping[str, Any], body: JSON) -> JSON:
    merged = _deep_merge(params, body)
    ours = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    theirs = (merged.get("generationConfig") or {}).get("thinkingConfig") or {}
    # Both fields at once is a 400; the caller's reasoning_effort wins over the policy's.
    if "thinkingLevel" in ours:
        theirs.pop("thinkingBudget", None)
    if "thinkingBudget" in ours:
        theirs.pop("thinkingLevel", None)
    return merged


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> JSON:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = _deep_merge(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


# -- tool schemas ----------------------------------------------------------------


def to_schema(schema: Any, *, ordered: bool = False) -> JSON:
    """A JSON Schema as the OpenAPI-subset ``Schema`` Gemini takes (see the module docstring).

    ``ordered`` adds ``propertyOrdering`` so structured output keeps the schema's key order.
    """
    if not isinstance(schema, dict):
        return {}
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _convert(schema, defs, (), ordered)


def _convert(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...], ordered: bool) -> JSON:
    if not isinstance(node, dict):
        return {}
    node, seen = _resolve(node, defs, seen)
    out: JSON = {}
    for sub in node.get("allOf") or ():
        _merge_schema(out, _convert(sub, defs, seen, ordered))
    types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    if "null" in types:
        out["nullable"] = True
    types = [t.upper() for t in types if isinstance(t, str) and t != "null"]
    if len(types) == 1:
        out["type"] = types[0]
    elif len(types) > 1:
        out["anyOf"] = [{"type": t} for t in types]
    for key in _SCHEMA_KEPT:
        if key in node:
            out[key] = node[key]
    if "exclusiveMinimum" in node and "minimum" not in node:
        out["minimum"] = node["exclusiveMinimum"]
    if "exclusiveMaximum" in node and "maximum" not in node:
        out["maximum"] = node["exclusiveMaximum"]
    if isinstance(node.get("examples"), list) and node["examples"] and "example" not in node:
        out["example"] = node["examples"][0]
    _enum(node, out)
    variants = [*(node.get("anyOf") or ()), *(node.get("oneOf") or ())]
    if any(isinstance(v, dict) and v.get("type") == "null" for v in variants):
        out["nullable"] = True
    subs = [_convert(v, defs, seen, ordered) for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
    if len(subs) == 1:
        _merge_schema(out, subs[0])
    elif subs:
        out["anyOf"] = subs
    if isinstance(properties := node.get("properties"), dict):
        out["properties"] = {name: _convert(sub, defs, seen, ordered) for name, sub in properties.items()}
        if ordered and len(properties) > 1:
            out["propertyOrdering"] = list(properties)
    if isinstance(node.get("required"), list):
        required = [r for r in node["required"] if r in (out.get("properties") or {})]
        if required:
            out["required"] = required
    if isinstance(node.get("items"), dict):
        out["items"] = _convert(node["items"], defs, seen, ordered)
    if "type" not in out and "anyOf" not in out:
        out.update(_implied_type(out))
    if node.get("format") in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = node["format"]
    return out


def _resolve(node: JSON, defs: Mapping[str, Any], seen: tuple[str, ...]) -> tuple[JSON, tuple[str, ...]]:
    """``node`` with its ``$ref`` inlined; sibling keywords (a description, say) win over the target's."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node, seen
    name = ref.rpartition("/")[2]
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    if name in seen or not isinstance(defs.get(name), dict):
        return {"type": "object", **siblings}, seen  # recursive or dangling: cannot be inlined
    target, seen = _resolve(defs[name], defs, (*seen, name))
    return {**target, **siblings}, seen


def _enum(node: JSON, out: JSON) -> None:
    values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else None
    if values is None:
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        out["enum"] = values
        out.setdefault("type", "STRING")
    elif values:  # Gemini enums are strings only: tell the model in words instead
        allowed = "One of: " + ", ".join(dumps(v).decode() for v in values) + "."
        out["description"] = f"{out['description']} {allowed}" if out.get("description") else allowed


def _implied_type(out: JSON) -> JSON:
    if "properties" in out:
        return {"type": "OBJECT"}
    if "items" in out:
        return {"type": "ARRAY"}
    return {}


def _merge_schema(out: JSON, sub: JSON) -> None:
    for key, value in sub.items():
        if key == "properties":
            out.setdefault("properties", {}).update(value)
        elif key == "required":
            out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
        else:
            out.setdefault(key, value)


# -- response ------------------------------------------------------------------


def from_response(body: JSON, model: str = "") -> JSON:
    """A ``chat.completion`` from a ``GenerateContentResponse``."""
    response_id = body.get("responseId")
    choices = []
    for position, candidate in enumerate(body.get("candidates") or ()):
        index = candidate.get("index", position)
        texts, thoughts, calls = _read_parts(candidate, response_id, index, 0)
        message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append({"index": index, "message": message, "finish_reason": reason, "logprobs": _logprobs(candidate)})
    if not choices:  # the prompt itself was blocked
        message = {"role": "assistant", "content": None, "refusal": None}
        choices.append({"index": 0, "message": message, "finish_reason": _blocked(body) or "stop", "logprobs": None})
    out: JSON = {
        "id": _completion_id(body),
        "object": "chat.completion",
        "created": now(),
        "model": body.get("modelVersion") or model,
        "choices": choices,
    }
    if isinstance(meta := body.get("usageMetadata"), dict):
        out["usage"] = to_usage(meta)
    return out


def finish_reason(reason: str | None, called: bool) -> str:
    """The OpenAI ``finish_reason`` for a Gemini ``finishReason``."""
    if called and reason in (None, "STOP"):
        return "tool_calls"  # Gemini ends a function-calling turn with STOP
    return _FINISH.get(reason or "STOP", "stop")


def to_usage(meta: JSON) -> JSON:
    """OpenAI usage from ``usageMetadata``: prompt includes tool-use prompt tokens, completion includes thoughts."""
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    out = usage(
        prompt,
        completion,
        prompt_tokens_details={"cached_tokens": int(meta.get("cachedContentTokenCount") or 0)},
        completion_tokens_details={"reasoning_tokens": thoughts},
    )
    if meta.get("totalTokenCount") is not None:
        out["total_tokens"] = int(meta["totalTokenCount"])
    return out


def tool_call_id(call: JSON, signature: str | None, response_id: str | None, candidate: int, position: int) -> str:
    """Gemini's id for the call, or one made from its content; with the thought signature appended."""
    base = (
        call.get("id")
        or "call_"
        + hashlib.sha256(dumps([response_id, candidate, position, call.get("name"), call.get("args")])).hexdigest()[:24]
    )
    return f"{base}~{signature}" if signature else str(base)


def split_call_id(call_id: str) -> tuple[str | None, str | None]:
    """``(Gemini's own call id or None for one we made, thought signature or None)`` from a tool-call id."""
    base, mark, signature = call_id.rpartition("~")  # "~" is not a base64 character
    if not mark:
        base, signature = call_id, ""
    return (None if not base or _SYNTHETIC_ID.fullmatch(base) else base), (signature or None)


def _read_parts(
    candidate: JSON, response_id: str | None, index: int, first_call: int
) -> tuple[list[str], list[str], list[JSON]]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if isinstance(call := part.get("functionCall"), dict):
            call_id = tool_call_id(call, part.get("thoughtSignature"), response_id, index, first_call + len(calls))
            arguments = dumps(call.get("args") or {}).decode()
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": call.get("name"), "arguments": arguments}}
            )
        elif isinstance(text := part.get("text"), str) and text:
            (thoughts if part.get("thought") else texts).append(text)
        # executableCode, codeExecutionResult and media have no place in a chat message.
    return texts, thoughts, calls


def _logprobs(candidate: JSON) -> JSON | None:
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result.get("chosenCandidates") or ()):
        alternatives = tops[i].get("candidates") or [] if i < len(tops) else []
        content.append({**_token(chosen), "top_logprobs": [_token(a) for a in alternatives]})
    return {"content": content, "refusal": None}


def _token(candidate: JSON) -> JSON:
    token = str(candidate.get("token", ""))
    return {"token": token, "logprob": float(candidate.get("logProbability", 0.0)), "bytes": list(token.encode())}


def _blocked(body: JSON) -> str | None:
    return "content_filter" if (body.get("promptFeedback") or {}).get("blockReason") else None


def _completion_id(body: JSON) -> str:
    return "chatcmpl-" + body["responseId"] if body.get("responseId") else completion_id()


# -- streaming -----------------------------------------------------------------


async def from_events(
    events: AsyncIterable[tuple[str | None, bytes]],
    *,
    model: str = "",
    include_usage: bool = False,
    secret: str | None = None,
) -> AsyncIterator[JSON]:
    """``chat.completion.chunk`` objects from ``streamGenerateContent?alt=sse`` events.

    Gemini sends no ``[DONE]``: a stream is whole once every candidate has
    a ``finishReason``. Ending before that is an error, not a quiet end.
    """
    id, created = "", now()
    calls: dict[int, int] = {}  # candidate → tool calls so far
    finished: set[int] = set()
    meta: JSON | None = None
    async for _event, data in events:
        body = parse_object(data)
        if isinstance(body.get("error"), dict):
            code = body["error"].get("code")
            raise _redacted(_error_from_body(code if isinstance(code, int) else 500, body, {}), secret)
        id = id or _completion_id(body)
        model = body.get("modelVersion") or model
        meta = body.get("usageMetadata") or meta
        if not body.get("candidates") and (reason := _blocked(body)):
            finished.add(0)
            yield chunk(id, model, created, {"role": "assistant"}, finish_reason=reason)
        for position, candidate in enumerate(body.get("candidates") or ()):
            index = candidate.get("index", position)
            for out in _candidate_chunks(candidate, index, body.get("responseId"), calls, (id, model, created)):
                yield out
            if candidate.get("finishReason"):
                finished.add(index)
    if not finished or not finished.issuperset(calls):
        raise UpstreamUnavailable("The upstream closed the stream before it was complete.")
    if include_usage and meta is not None:
        yield usage_chunk(id, model, created, to_usage(meta))


def _candidate_chunks(
    candidate: JSON, index: int, response_id: str | None, calls: dict[int, int], head: tuple[str, str, int]
) -> Iterable[JSON]:
    delta: JSON = {} if index in calls else {"role": "assistant"}
    first_call = calls.setdefault(index, 0)
    texts, thoughts, tool_calls = _read_parts(candidate, response_id, index, first_call)
    if thoughts:
        delta["reasoning_content"] = "".join(thoughts)
    if texts:
        delta["content"] = "".join(texts)
    if tool_calls:
        delta["tool_calls"] = [{"index": first_call + k, **call} for k, call in enumerate(tool_calls)]
        calls[index] = first_call + len(tool_calls)
    if delta:
        out = chunk(*head, delta, index=index)
        out["choices"][0]["logprobs"] = _logprobs(candidate)
        yield out
    if reason := candidate.get("finishReason"):
        yield chunk(*head, finish_reason=finish_reason(reason, calls[index] > 0), index=index)


# -- errors --------------------------------------------------------------------


def to_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Google's ``{"error": {code, message, status, details}}`` as it would reach an OpenAI client."""
    try:
        parsed = loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and parsed:  # some Google endpoints wrap the error in a list
        parsed = parsed[0]
    return _error_from_body(status, parsed if isinstance(parsed, dict) else {}, headers)


def _error_from_body(status: int, body: JSON, headers: Mapping[str, str]) -> UpstreamError:
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    details = [d for d in error.get("details") or () if isinstance(d, dict)]
    mapped: tuple[int, str, str | None] = _STATUS.get(str(error.get("status")), _by_http_status(status))
    if any(d.get("reason") == "API_KEY_INVALID" for d in details):
        mapped = (401, "invalid_request_error", "invalid_api_key")  # Google answers a bad key with 400
    http, type, code = mapped
    message = error.get("message")
    return UpstreamError(
        message if isinstance(message, str) and message else f"The upstream answered with status {status}.",
        status=http,
        type=type,
        code=code,
        param="model" if code == "model_not_found" else None,
        retry_after=_first(retry_after(headers), _retry_delay(details)),
    )


def _by_http_status(status: int) -> tuple[int, str, str | None]:
    if status == 429:
        return 429, "requests", "rate_limit_exceeded"
    if status >= 500:
        return status, "server_error", None
    return status, "invalid_request_error", None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _retry_delay(details: Iterable[JSON]) -> float | None:
    """``RetryInfo.retryDelay`` (a proto Duration such as ``"23s"`` or ``"1.5s"``) in seconds."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            try:
                return float(str(detail.get("retryDelay", "")).removesuffix("s"))
            except ValueError:
                return None
    return None


def _redacted(error: UpstreamError, secret: str | None) -> UpstreamError:
    error.message = redact(error.message, secret)
    return error


class GeminiAdapter(HTTPAdapter):
    """``generateContent`` over HTTP to one Gemini API provider."""

    def __init__(self, provider: Provider) -> None:
        self._base_url = provider.base_url or DEFAULT_BASE_URL
        super().__init__(provider, to_error, lambda key: {"x-goog-api-key": key})
        levels = provider.options.get("thinking_levels") or {}
        self._levels = {**THINKING_LEVELS, **{prefix: tuple(lv) for prefix, lv in levels.items()}}
        self._include_thoughts = bool(provider.options.get("include_thoughts", False))

    async def complete(self, request: JSON, target: Target) -> JSON:
        body = await self.post(self._url(target.model, "generateContent"), self._body(request, target))
        return from_response(body, target.model)

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        url = self._url(target.model, "streamGenerateContent?alt=sse")
        reply = await self.open_stream(url, self._body(request, target))
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = sse_events(reply.chunks())
        return reply.guard(from_events(events, model=target.model, include_usage=include_usage, secret=self._api_key))

    def _body(self, request: JSON, target: Target) -> JSON:
        return to_request(request, target, thinking_levels=self._levels, include_thoughts=self._include_thoughts)

    def _url(self, model: str, method: str) -> str:
        path = model if model.startswith(("models/", "tunedModels/")) else "models/" + model
        return f"{self._base_url}/{quote(path)}:{method}"
