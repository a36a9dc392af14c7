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

Prompt caching: a request with ``cache_control`` markers is answered as the
API would, from a cache this server keeps (:meth:`AnthropicUpstream.prompt`):
the longest prefix cached before (at a breakpoint or up to 20 blocks before
one) is read, the marked prefixes beyond it (of at least
:data:`MIN_CACHEABLE` tokens) are written, each with its marker's lifetime,
and no more than 4 markers are taken. Tokens are words of
text (50 for a tool, an image or a document, 20 for the request's framing). A
request without markers reports the same few cached tokens every time.

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
``malformed``     a stream with one more event, whose data is not JSON, after the first text
                  (``malformed:start``: the first ``content_block_start`` is not JSON; ``malformed:end``:
                  the extra event comes between ``message_delta`` and ``message_stop``)
``recorded:ID``   the error recorded as ``ID`` in ``fixtures/error_kinds/anthropic.json``
================  =========================================================
"""

from __future__ import annotations

import collections.abc
import hashlib
import itertools
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

from tests.upstreams import ScriptedUpstream, full, recorded

VERSIONS = ("2023-06-01", "2026-10-21")
#: The fewest tokens a marked prefix must have to be cached (Claude Sonnet's documented minimum).
MIN_CACHEABLE = 1024
#: How many blocks before a breakpoint the API looks for a cached prefix.
LOOKBACK = 20
FRAMING_TOKENS = 20
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
        self.cached: set[str] = set()  #: the prefixes in the prompt cache, by digest

    def reset(self) -> None:
        super().reset()
        self.cached.clear()

    def prompt(self, body: dict[str, Any]) -> dict[str, Any]:
        """The input side of the usage for ``body``, reading and writing this server's prompt cache."""
        pieces = _pieces(body)
        marks = [(i, mark) for i, (_, mark) in enumerate(pieces) if mark is not None]
        if not marks:
            return {
                "input_tokens": FRAMING_TOKENS + len(body["messages"]),
                "cache_creation_input_tokens": 4,
                "cache_read_input_tokens": 6,
                "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 0},
            }
        sizes = list(itertools.accumulate(_tokens(piece) for piece, _ in pieces))
        keys = [
            hashlib.sha256(json.dumps([p for p, _ in pieces[: i + 1]]).encode()).hexdigest() for i in range(len(pieces))
        ]
        # Each breakpoint looks back up to LOOKBACK pieces for a prefix an earlier request cached.
        hits = [j for i, _ in marks for j in range(max(0, i - LOOKBACK), i + 1) if keys[j] in self.cached]
        read = sizes[max(hits)] if hits else 0
        written = {"5m": 0, "1h": 0}
        done = read
        for i, mark in marks:
            if sizes[i] > done and sizes[i] >= MIN_CACHEABLE:
                written[mark.get("ttl", "5m")] += sizes[i] - done
                done = sizes[i]
                self.cached.add(keys[i])
        return {
            "input_tokens": FRAMING_TOKENS + sizes[-1] - read - written["5m"] - written["1h"],
            "cache_creation_input_tokens": written["5m"] + written["1h"],
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": written["5m"], "ephemeral_1h_input_tokens": written["1h"]},
        }

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
        prompt = self.prompt(body)
        if body.get("stream"):
            events = stream(body, content, stop_reason, fault + arg, prompt, leak=leaking_error(key))
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(message(body, content, stop_reason, prompt))


def _pieces(body: dict[str, Any]) -> list[tuple[Any, dict[str, Any] | None]]:
    """What the API caches, in the order it renders it (tools, system, messages), each with its marker.

    A marker inside a tool result marks the result; the request's own marker marks the last piece.
    """
    pieces: list[tuple[Any, dict[str, Any] | None]] = []
    for tool in body.get("tools") or ():
        pieces.append((_unmarked(tool), tool.get("cache_control")))
    for block in _blocks(body.get("system")):
        pieces.append((_unmarked(block), block.get("cache_control")))
    for turn in body["messages"]:
        for block in _blocks(turn["content"]):
            inner = _blocks(block.get("content")) if isinstance(block.get("content"), list) else []
            mark = block.get("cache_control") or next((b["cache_control"] for b in inner if "cache_control" in b), None)
            pieces.append(([turn["role"], _unmarked(block)], mark))
    if body.get("cache_control") and pieces and pieces[-1][1] is None:
        pieces[-1] = (pieces[-1][0], body["cache_control"])
    return pieces


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Content as blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content or ())


def _unmarked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(v) for v in value]
    return value


def _tokens(piece: Any) -> int:
    """Words of text; 50 for anything else (a tool, an image, a document, a tool call)."""
    block = piece[1] if isinstance(piece, list) else piece
    if block.get("type") == "text":
        return len(block["text"].split())
    if block.get("type") == "tool_result":
        content = block.get("content") or ""
        texts = [content] if isinstance(content, str) else [b.get("text", "") for b in content]
        return sum(len(t.split()) for t in texts)
    return 50


def _markers(body: dict[str, Any]) -> int:
    """Blocks with ``cache_control`` in ``body``, the request's own marker included."""
    system = body.get("system")
    blocks = [*(system if isinstance(system, list) else ()), *(body.get("tools") or ())]
    for turn in body["messages"]:
        for block in turn["content"] if isinstance(turn["content"], list) else ():
            blocks.append(block)
            blocks.extend(block.get("content") if isinstance(block.get("content"), list) else ())
    return sum("cache_control" in b for b in blocks) + ("cache_control" in body)


def rule_errors(body: dict[str, Any]) -> list[str]:
    """Rules the API enforces beyond the types: a prefill's trailing whitespace, the number of cache
    breakpoints, and those about thinking."""
    errors = []
    if (prefill := _prefill(body)) is not None and prefill != prefill.rstrip():
        errors.append("messages: final assistant content cannot end with trailing whitespace")
    if (count := _markers(body)) > 4:
        errors.append(f"A maximum of 4 blocks with cache_control may be provided. Found {count}.")
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
    text = f"I got {len(results)} tool results for {body['model']}." if results else full(body["model"])
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


def output_tokens(content: list[dict[str, Any]]) -> int:
    return len(json.dumps(content)) // 8


def message(
    body: dict[str, Any], content: list[dict[str, Any]], stop_reason: str, prompt: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": "msg_01LoopbackReply0000000000",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {**prompt, "output_tokens": output_tokens(content), "service_tier": "standard"},
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
    prompt: dict[str, Any],
    *,
    leak: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """The named events that carry ``content``, as the Messages API streams them."""
    start = {**message(body, [], stop_reason, prompt), "stop_reason": None}
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
        if fault == "malformedstart" and index == 0:
            yield b"event: content_block_start\ndata: {not json\n\n"
        else:
            start = {"type": "content_block_start", "index": index, "content_block": empty}
            yield _event("content_block_start", start)
        for k, delta in enumerate(_deltas(block)):
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            if fault == "malformed" and index == 0 and k == 0:
                yield b"event: content_block_delta\ndata: {not json\n\n"
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
    final = {"output_tokens": output_tokens(content)}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    if fault == "malformedend":
        yield b"event: ping\ndata: {not json\n\n"
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
