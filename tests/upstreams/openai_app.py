"""A loopback server speaking OpenAI's Chat Completions wire format, with faults on demand.

Answers are deterministic and shaped like OpenAI's documented examples
(``chat.completion`` with ``usage`` details, data-only SSE chunks ending
in ``[DONE]``, ``include_usage`` giving ``"usage": null`` on every chunk and
a final ``choices: []`` chunk). A test scripts faults per upstream model:
``upstream.plan("m", "429", "ok")`` makes the next two calls for ``m``
answer 429, then normally. Faults:

=========  ==============================================================
``429``    429 + ``Retry-After: 0`` (``429:2`` for 2 s, ``429:none`` for no Retry-After), rate-limit error
``500``    500 server_error (``500:S`` after S seconds)
``503``    503 overloaded
``400``    400 invalid_request_error on ``messages``
``401``    401 that echoes the API key it was sent (to test redaction)
``leak``   401 that echoes the key in every field of the error (``leak:first`` / ``leak:mid``: a
           stream whose first event, or whose event after the first words, is such an error)
``badjson`` 200 with a body that is not JSON
``hang``   answers nothing for 30 s
``reset``  the connection reset (RST) before any response header
``drop``   the connection breaks after the first 3 words of a stream, also a Responses one (``drop:N``: N words;
           ``drop:0``: the role delta)
``stall``  a stream that goes silent for 30 s after its first words
``late:S`` a stream whose headers come at once and whose first chunk comes S seconds later
``nodone`` a whole stream (finish reason, usage) without ``data: [DONE]``
``malformed`` a stream with one event that is not JSON after its first words, otherwise whole
           (``malformed:end``: the event is the last one before ``[DONE]``)
``slow``   like ``ok`` but 0.2 s between stream chunks
``endless`` a stream of ``"endless "`` deltas that never ends; each one's end (the client hung up) is counted
           in ``endless_words``, with the words it sent
``delay:S`` like ``ok`` after S seconds
``filtered`` a completion stopped by the content filter
``recorded:ID`` the error recorded as ``ID`` in ``fixtures/error_kinds/openai.json``
``nousage`` a completion without ``usage``
``cached:N`` like ``ok``, with N prompt tokens read from OpenAI's (implicit) prompt cache
=========  ==============================================================

``POST /v1/embeddings`` answers a ``CreateEmbeddingResponse`` whose vectors
are :func:`vector` (floats, or packed float32 base64 when asked), honours
``dimensions`` and counts usage; its faults are ``429`` and ``nousage``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.upstreams import ScriptedUpstream, full, openai_responses, recorded

CREATED = 1741570283
FINGERPRINT = "fp_fc9f1d7035"
#: The length of this server's embeddings when the request sets no ``dimensions``.
EMBEDDING_DIMENSIONS = 6


class OpenAIUpstream(ScriptedUpstream):
    """The app plus what tests look at: call counts and the requests received."""

    def __init__(self) -> None:
        super().__init__()
        #: The words each ``endless`` stream had sent when the client hung up.
        self.endless_words: list[int] = []
        self.endless_ended = threading.Event()  #: set as an ``endless`` stream ends (the server runs in a thread)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
            ]
        )

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        name, _ = self.received(model, body, request)
        if name == "429":
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        inputs = body["input"]
        items = [inputs] if isinstance(inputs, str) or isinstance(inputs[0], int) else inputs
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
        if dimensions > 3072:
            return _error(400, "Invalid 'dimensions'.", "invalid_request_error", "invalid_value", param="dimensions")
        packed = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            values = vector(model, item, dimensions)
            data.append({"object": "embedding", "index": i, "embedding": pack(values) if packed else values})
        tokens = sum(len(item) if isinstance(item, list) else len(item) // 4 + 1 for item in items)
        answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if name != "nousage":
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(answer)

    async def responses(self, request: Request) -> Response:
        return await openai_responses.answer(self, request)

    def reset(self) -> None:
        super().reset()
        self.endless_words = []
        self.endless_ended.clear()

    async def _endless(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        words = 0
        try:
            async for event in stream(body, {"content": "endless"}, "stop", drop=False, delay=0.0):
                yield event  # the role delta and the first word
                break
            while True:
                words += 1
                chunk = {"id": "chatcmpl-E", "object": "chat.completion.chunk", "created": CREATED, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": "endless "}, "finish_reason": None}]}  # fmt: skip
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                await asyncio.sleep(0)
        finally:
            self.endless_words.append(words)
            self.endless_ended.set()

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        name, arg = self.received(model, body, request)
        if name == "recorded":
            return recorded("openai", arg)
        if name == "429":
            return _error(
                429,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
                headers={} if arg == "none" else {"retry-after": arg or "0"},
            )
        if name == "500":
            await asyncio.sleep(float(arg or 0))
            return _error(
                500, "The server had an error while processing your request. Sorry about that!", "server_error", None
            )
        if name == "503":
            return _error(
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                "server_is_overloaded",
            )
        if name == "400":
            return _error(
                400, "Invalid 'messages': too long.", "invalid_request_error", "invalid_value", param="messages"
            )
        if name == "401":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key")
        if name == "leak":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            error = {"error": {"message": f"Bad key {key}.", "type": f"t-{key}", "param": key, "code": f"c-{key}"}}
            if arg:
                return StreamingResponse(_leaking(body, error, mid=arg == "mid"), media_type="text/event-stream")
            return JSONResponse(error, status_code=401)
        if name == "badjson":
            return Response(b'{"id": "chatcmpl-1", "choices": [', media_type="application/json")
        if name == "endless":
            return StreamingResponse(self._endless(body), media_type="text/event-stream")
        if name == "hang":
            await asyncio.sleep(30)
        if name == "reset":
            return _reset(request)
        if name == "delay":
            await asyncio.sleep(float(arg))
        if name == "filtered":
            return JSONResponse(
                {
                    "id": "chatcmpl-f",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "content_filter",
                            "logprobs": None,
                            "message": {"role": "assistant", "content": None, "refusal": None},
                        }
                    ],
                }
            )
        message, finish = answer(body)
        cached = int(arg) if name == "cached" else 0
        if body.get("stream"):
            delay = 0.2 if name == "slow" else 0.0
            events = stream(body, message, finish, drop=name == "drop", delay=delay, fault=name, arg=arg, cached=cached)
            return StreamingResponse(events, media_type="text/event-stream")
        completion = {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage(body, message, cached),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if name == "nousage":  # some compatible servers leave usage out
            del completion["usage"]
        if name == "drop":
            return StreamingResponse(_broken(json.dumps(completion).encode()), media_type="application/json")
        return JSONResponse(completion)


def vector(model: str, item: str | list[int], dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """This server's embedding of ``item``: multiples of 1/1024, so exact in float32 (and through base64)."""
    digest = hashlib.shake_256(json.dumps([model, item]).encode()).digest(dimensions)
    return [(byte - 128) / 1024 for byte in digest]


def pack(values: list[float]) -> str:
    """OpenAI's ``base64`` embedding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def answer(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Tool calls when tools are offered (one per tool, in parallel), else text."""
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    if tools and body.get("tool_choice", "auto") != "none":
        calls = [
            {
                "id": f"call_{i}{tool['function']['name']}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": json.dumps({"city": "Paris", "n": i})},
            }
            for i, tool in enumerate(tools[:2])
        ]
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": calls,
            "annotations": [],
        }, "tool_calls"
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        content = json.dumps({"answer": "Paris", "confidence": 0.9})
    else:
        content = full(body["model"])
    last = body["messages"][-1]
    if body.get("continue_final_message") and last.get("role") == "assistant" and isinstance(last["content"], str):
        # vLLM's extension: the final assistant turn is continued, and the reply is what follows it.
        prefill = last["content"]
        content = content[len(prefill) :] if content.startswith(prefill) else content
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is not None and len(content) > cap * 4:
        return {"role": "assistant", "content": content[: cap * 4], "refusal": None, "annotations": []}, "length"
    return {"role": "assistant", "content": content, "refusal": None, "annotations": []}, "stop"


def usage(body: dict[str, Any], message: dict[str, Any], cached: int = 0) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4 + 7 + cached
    completion = len(json.dumps(message.get("tool_calls")) if message.get("tool_calls") else message["content"]) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def stream(
    body: dict[str, Any],
    message: dict[str, Any],
    finish: str,
    *,
    drop: bool,
    delay: float,
    fault: str = "ok",
    arg: str = "",
    cached: int = 0,
) -> AsyncIterator[bytes]:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if fault == "late":
        await asyncio.sleep(float(arg))  # the headers are out: only the first chunk is late

    def event(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": body["model"],
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    yield event({"role": "assistant", "content": "", "refusal": None})
    if message.get("tool_calls"):
        for i, call in enumerate(message["tool_calls"]):
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            yield event({"tool_calls": [head]})
            arguments = call["function"]["arguments"]
            for j in range(0, len(arguments), 7):
                yield event({"tool_calls": [{"index": i, "function": {"arguments": arguments[j : j + 7]}}]})
    elif drop and arg == "0":
        await asyncio.sleep(0.05)
        raise ConnectionResetError("dropped after the role delta")
    else:
        for k, word in enumerate(message["content"].split(" ")):
            if delay:
                await asyncio.sleep(delay)
            yield event({"content": word if k == 0 else " " + word})
            if drop and k == int(arg or 3) - 1:
                await asyncio.sleep(0.05)  # let what was sent reach the client before the reset
                raise ConnectionResetError("dropped mid-stream")
            if fault == "stall" and k == 2:
                await asyncio.sleep(30)
            if fault == "malformed" and not arg and k == 2:
                yield b"data: {not json\n\n"
    yield event({}, finish)
    if include_usage:
        yield event(None, usage=usage(body, message, cached))
    if fault == "malformed" and arg == "end":
        yield b"data: {not json\n\n"
    if fault != "nodone":
        yield b"data: [DONE]\n\n"


async def _leaking(body: dict[str, Any], error: dict[str, Any], *, mid: bool) -> AsyncIterator[bytes]:
    if mid:
        async for event in stream(body, {"content": "Hello there"}, "stop", drop=False, delay=0.0):
            if b'"content": " there"' in event:
                break
            yield event
    yield b"data: " + json.dumps(error).encode() + b"\n\n"


async def _broken(payload: bytes) -> AsyncIterator[bytes]:
    yield payload[: len(payload) // 2]
    raise ConnectionResetError("dropped mid-body")


def _reset(request: Request) -> Response:
    """Reset the request's connection before any header: a close with SO_LINGER 0 sends an RST, no FIN."""
    # Starlette hands the server's own ``receive`` through: uvicorn's is a method of the request's cycle,
    # which holds the connection's asyncio transport.
    transport: asyncio.Transport = request.receive.__self__.transport  # type: ignore[attr-defined]
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return Response(status_code=204)  # never written: the connection is gone


def _error(
    status: int,
    message: str,
    type: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status, headers=headers
    )
