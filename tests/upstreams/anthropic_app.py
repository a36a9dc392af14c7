"""A loopback server speaking Anthropic's Messages API wire format, with faults on demand.

It checks every request body against the official SDK's request types
(:func:`sdk_errors`, strict about unknown fields, as the API is), the rules
about thinking the API enforces (:func:`rule_errors`) and the ``x-api-key`` /
``anthropic-version`` headers, then answers deterministically:

* a JSON document when ``output_config.format`` asks for one;
* ``tool_use`` blocks when tools are offered and the last turn is not tool
  results: the forced tool, or the first two tools in parallel (one with
  ``disable_parallel_tool_use``);
* a text reply otherwise (mentioning tool results when it got some),
  preceded by a thinking block when ``thinking`` is on.

Streams are named SSE events (``message_start`` … ``message_stop``, with a
``ping``). A test scripts faults per model: ``upstream.plan("m", "529", "ok")``.

================  =========================================================
``529``           529 overloaded_error
``429``           429 rate_limit_error + ``retry-after: 0`` (``429:2`` for 2 s)
``500``           500 api_error
``400``           400 invalid_request_error
``401``           401 authentication_error that echoes the key it was sent
``leak``          401 that echoes the key in every field of the error (``leak:first`` / ``leak:mid``:
                  a stream with such an ``error`` event at the start, or after the first text)
``stream_error``  a stream with an ``error`` event after the first text
``early_error``   a stream with an ``error`` event right after ``message_start``
``cut``           a stream that ends without ``message_stop``
``recorded:ID``   the error recorded as ``ID`` in ``fixtures/error_kinds/anthropic.json``
================  =========================================================
"""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from collections.abc import AsyncIterator
from typing import Any, NotRequired, Required

import pydantic
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from typing_extensions import is_typeddict

from tests.upstreams import ScriptedUpstream, recorded

VERSIONS = ("2023-06-01", "2026-10-21")
#: Declared by the 2023-06-01 API but no longer by the SDK's types.
LEGACY_FIELDS = frozenset({"temperature", "top_p", "top_k"})
_SEQUENCES = (list, collections.abc.Iterable, collections.abc.Sequence)


def sdk_errors(body: dict[str, Any], version: str = "2026-10-21") -> list[str]:
    """Every way ``body`` departs from the SDK's ``MessageCreateParams``, unknown fields included.

    Pydantic's ``TypeAdapter`` cannot do this: TypedDicts ignore extra keys
    and ``Iterable`` fields are validated lazily, so a misspelled block field
    would pass. This walks the value and the type hints together instead.
    """
    kind = MessageCreateParamsStreaming if body.get("stream") else MessageCreateParamsNonStreaming
    extra = LEGACY_FIELDS if version == "2023-06-01" else frozenset()
    errors = check({k: v for k, v in body.items() if k not in extra}, kind, "body")
    for name in extra & body.keys():
        errors += check(body[name], float if name != "top_k" else int, f"body.{name}")
    return errors


def check(value: Any, hint: Any, path: str) -> list[str]:
    """Errors of ``value`` against the type ``hint`` (empty when it fits)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is object or hint is Any:
        return []
    if origin in (typing.Annotated, Required, NotRequired):
        return check(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        tries = []
        for arm in args:
            errors = check(value, arm, path)
            if not errors:
                return []
            tries.append((arm, errors))

        # Report the arm most likely meant: its discriminator matches and it knows most of the keys.
        def rank(attempt: tuple[Any, list[str]]) -> tuple[bool, int, int]:
            arm, errors = attempt
            wrong_kind = any(e.startswith((f"{path}.type:", f"{path}.role:", f"{path}: expected")) for e in errors)
            return wrong_kind, -_known_keys(value, arm), len(errors)

        return min(tries, key=rank)[1]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if is_typeddict(hint):
        return _check_typeddict(value, hint, path)
    if origin in _SEQUENCES:
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        return [e for i, item in enumerate(value) for e in check(item, args[0] if args else Any, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        return [e for k, v in value.items() for e in check(v, args[1] if args else Any, f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        return [f"{path}: expected a request param, not a response model"]
    return _check_scalar(value, hint, path)


def _known_keys(value: Any, hint: Any) -> int:
    if not (is_typeddict(hint) and isinstance(value, dict)):
        return 0
    return len(value.keys() & typing.get_type_hints(hint).keys())


def _check_typeddict(value: Any, hint: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({hint.__name__})"]
    hints = typing.get_type_hints(hint, include_extras=True)
    extra_allowed = (getattr(hint, "__pydantic_config__", None) or {}).get("extra") == "allow"
    errors = [f"{path}: unknown field {k!r} for {hint.__name__}" for k in value if k not in hints and not extra_allowed]
    errors += [
        f"{path}: missing required field {k!r}"
        for k, h in hints.items()
        if typing.get_origin(h) is Required and k not in value
    ]
    for key, item in value.items():
        if key in hints:
            errors += check(item, hints[key], f"{path}.{key}")
    return errors


def _check_scalar(value: Any, hint: Any, path: str) -> list[str]:
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:  # generic protocols such as IO[bytes]: never what a JSON body holds
        ok = False
    return [] if ok else [f"{path}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}"]


class AnthropicUpstream(ScriptedUpstream):
    """The app plus what tests look at: call counts, requests and headers received."""

    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model"))
        fault, arg = self.received(model, body, request)
        key, version = request.headers.get("x-api-key"), request.headers.get("anthropic-version", "")
        if not key:
            return error(401, "authentication_error", "x-api-key header is required")
        if version not in VERSIONS:
            return error(400, "invalid_request_error", f"anthropic-version: invalid version {version!r}")
        if problems := sdk_errors(body, version) + rule_errors(body):
            return error(400, "invalid_request_error", "; ".join(problems))
        if fault == "recorded":
            return recorded("anthropic", arg)
        if fault == "529":
            return error(529, "overloaded_error", "Overloaded")
        if fault == "429":
            text = "This request would exceed the rate limit for your organization."
            return error(429, "rate_limit_error", text, headers={"retry-after": arg or "0"})
        if fault == "500":
            return error(500, "api_error", "Internal server error")
        if fault == "400":
            return error(400, "invalid_request_error", "messages.0.content: text content blocks must be non-empty")
        if fault == "401":
            return error(401, "authentication_error", f"invalid x-api-key: {key}")
        if fault == "leak" and not arg:
            return JSONResponse(leaking_error(key), status_code=401)
        content, stop_reason = answer(body)
        if body.get("stream"):
            events = stream(body, content, stop_reason, fault + arg, leak=leaking_error(key))
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(message(body, content, stop_reason))


def rule_errors(body: dict[str, Any]) -> list[str]:
    """Rules the API enforces beyond the types: a prefill's trailing whitespace, and those about thinking."""
    errors = []
    if (prefill := _prefill(body)) is not None and prefill != prefill.rstrip():
        errors.append("messages: final assistant content cannot end with trailing whitespace")
    if (body.get("thinking") or {}).get("type") not in ("enabled", "adaptive"):
        return errors
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        errors.append("Thinking may not be enabled when tool_choice forces tool use.")
    turns = [m["content"] for m in body["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)]
    last = turns[-1] if turns else []
    if any(b["type"] == "tool_use" for b in last) and last[0]["type"] not in ("thinking", "redacted_thinking"):
        errors.append("Expected `thinking` or `redacted_thinking`, but found `tool_use`.")
    return errors


def sample(schema: Any) -> Any:
    """A value fitting a JSON schema's types: strings say Paris, numbers 0.9."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {name: sample(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items"))]
    return {"string": "Paris", "number": 0.9, "integer": 1, "boolean": True}.get(str(kind))


def answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The content blocks and stop reason for ``body``."""
    thinking: list[dict[str, Any]] = []
    if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
        thinking = [{"type": "thinking", "thinking": "The user wants Paris.", "signature": "EqQBCgIYAhIMsig"}]
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:
        return [*thinking, {"type": "text", "text": json.dumps(sample(fmt["schema"]))}], "end_turn"
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {"type": "auto"}
    last = body["messages"][-1]["content"]
    results = [b for b in last if isinstance(b, dict) and b["type"] == "tool_result"] if isinstance(last, list) else []
    if tools and choice["type"] != "none" and (not results or choice["type"] == "tool"):
        if choice["type"] == "tool":
            tools = [t for t in tools if t["name"] == choice["name"]]
        count = 1 if choice.get("disable_parallel_tool_use") else 2
        calls = [
            {"type": "tool_use", "id": f"toolu_0{i}{t['name']}", "name": t["name"], "input": sample(t["input_schema"])}
            for i, t in enumerate(tools[:count])
        ]
        return [*thinking, *calls], "tool_use"
    if results:
        text = f"I got {len(results)} tool results for {body['model']}."
    else:
        text = f"Hello from {body['model']}! The capital of France is Paris."
    if (prefill := _prefill(body)) is not None:
        # A final assistant turn is continued, as the API documents: the reply is what follows it.
        text = text[len(prefill) :] if text.startswith(prefill) else text
    return [*thinking, {"type": "text", "text": text}], "end_turn"


def _prefill(body: dict[str, Any]) -> str | None:
    """The text of a final assistant turn (a prefill), if the request ends with one."""
    last = body["messages"][-1]
    if last["role"] != "assistant":
        return None
    content = last["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def usage(body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "input_tokens": 20 + len(body["messages"]),
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 6,
        "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 0},
        "output_tokens": len(json.dumps(content)) // 8,
        "service_tier": "standard",
    }


def message(body: dict[str, Any], content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    return {
        "id": "msg_01LoopbackReply0000000000",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "stop_details": None,
        "usage": usage(body, content),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def leaking_error(key: str) -> dict[str, Any]:
    """An error that echoes the key in every field it has."""
    return {
        "type": "error",
        "error": {"type": f"t-{key}", "message": f"Bad key {key}.", "details": {"error_code": key}},
    }


async def stream(
    body: dict[str, Any],
    content: list[dict[str, Any]],
    stop_reason: str,
    fault: str,
    *,
    leak: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """The named events that carry ``content``, as the Messages API streams them."""
    start = {**message(body, [], stop_reason), "stop_reason": None}
    start["usage"] = {**start["usage"], "output_tokens": 1}
    yield _event("message_start", {"type": "message_start", "message": start})
    yield _event("ping", {"type": "ping"})
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    if fault == "early_error":
        yield _event("error", overloaded)
        return
    if fault == "leakfirst" and leak is not None:
        yield _event("error", leak)
        return
    for index, block in enumerate(content):
        empty = {**block, "input": {}} if block["type"] == "tool_use" else {**block, block["type"]: ""}
        if block["type"] == "thinking":
            empty["signature"] = ""
        yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": empty})
        for delta in _deltas(block):
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            if fault == "stream_error":
                yield _event("error", overloaded)
                return
            if fault == "leakmid" and leak is not None:
                yield _event("error", leak)
                return
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    if fault == "cut":
        return
    delta = {"stop_reason": stop_reason, "stop_sequence": None, "stop_details": None}
    final = {"output_tokens": usage(body, content)["output_tokens"]}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    yield _event("message_stop", {"type": "message_stop"})


def _deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "text":
        words = block["text"].split(" ")
        return [{"type": "text_delta", "text": w if i == 0 else " " + w} for i, w in enumerate(words)]
    if block["type"] == "thinking":
        return [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    arguments = json.dumps(block["input"])
    pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
    return [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]


def error(status: int, type: str, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "error", "error": {"type": type, "message": message}, "request_id": "req_011CLoopback0000"}
    return JSONResponse(body, status_code=status, headers={"request-id": "req_011CLoopback0000", **(headers or {})})
