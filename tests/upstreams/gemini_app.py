"""A loopback server speaking the Gemini API's ``generateContent`` wire format, with faults on demand.

``POST /v1beta/models/{model}:generateContent`` answers a
``GenerateContentResponse``; ``:streamGenerateContent?alt=sse`` answers the
same as data-only SSE chunks (no ``[DONE]``: the body just ends). Answers
are deterministic:

* after ``functionResponse`` parts, a sentence about the weather, but only
  if the model turn before them carries the thought signature this server
  issued (or Google's documented dummy): otherwise a 400, as Gemini 3 does;
* with function declarations (and mode not ``NONE``), a call to each of the
  first two functions (or the allowed ones), the first carrying a signature;
* with ``responseMimeType: application/json``, a JSON answer;
* otherwise a sentence, after a thought part when ``includeThoughts`` is on.

Faults, planned per model with ``upstream.plan("m", "503", "ok")``:

==========  ================================================================
``429``     RESOURCE_EXHAUSTED with ``RetryInfo`` (``429:2`` waits 2 s)
``503``     UNAVAILABLE (the model is overloaded)
``400``     INVALID_ARGUMENT
``403``     PERMISSION_DENIED
``404``     NOT_FOUND for the model
``badkey``  400 API_KEY_INVALID whose message echoes the key (to test redaction)
``leak``    401 that echoes the key in every field of the error (``leak:first`` / ``leak:mid``: a
            stream with such an error object as its first event, or after the first words)
``cut``     a stream that ends before any ``finishReason``
``malformed`` a stream with one more event, whose data is not JSON, after its first word
``recorded:ID``  the error recorded as ``ID`` in ``fixtures/error_kinds/gemini.json``
``cached:N`` like ``ok``, with N prompt tokens read from Gemini's (implicit) context cache
==========  ================================================================

``:embedContent`` answers ``{"embedding": {"values"}}`` and
``:batchEmbedContents`` ``{"embeddings": [{"values"}, ...]}``, the vectors
being :func:`vector` (``outputDimensionality`` long), with no token counts,
as the Gemini API answers them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.upstreams import ScriptedUpstream, full, recorded

DUMMY_SIGNATURE = "skip_thought_signature_validator"
#: The length of this server's embeddings when the request sets no ``outputDimensionality``.
EMBEDDING_DIMENSIONS = 12


def signature(model: str, name: str) -> str:
    """The thought signature this server puts on a call to ``name``."""
    return base64.b64encode(f"sig/{model}/{name}".encode()).decode()


class GeminiUpstream(ScriptedUpstream):
    """The app plus what tests look at: calls, request bodies, headers and URLs received."""

    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(
            routes=[
                Route("/v1beta/models/{model}:embedContent", self.embed_content, methods=["POST"]),
                Route("/v1beta/models/{model}:batchEmbedContents", self.batch_embed_contents, methods=["POST"]),
                Route("/v1beta/models/{call}", self.generate, methods=["POST"]),
            ]
        )

    async def embed_content(self, request: Request) -> Response:
        model = request.path_params["model"]
        body = await request.json()
        if fault := _fault(*self.received(model, body, request), model, ""):
            return fault
        return JSONResponse({"embedding": {"values": _embedding(model, body)}})

    async def batch_embed_contents(self, request: Request) -> Response:
        model = request.path_params["model"]
        body = await request.json()
        if fault := _fault(*self.received(model, body, request), model, ""):
            return fault
        if any(r.get("model") != f"models/{model}" for r in body["requests"]):
            return _error(400, "Model in each request must match the model in the URL.", "INVALID_ARGUMENT")
        return JSONResponse({"embeddings": [{"values": _embedding(model, r)} for r in body["requests"]]})

    async def generate(self, request: Request) -> Response:
        model, _, method = request.path_params["call"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method {method} not found.", "NOT_FOUND")
        body = await request.json()
        name, arg = self.received(model, body, request)
        key = request.headers.get("x-goog-api-key", "")
        if name == "recorded":
            return recorded("gemini", arg)
        if name == "leak" and arg:
            return StreamingResponse(_leaking(model, key, mid=arg == "mid"), media_type="text/event-stream")
        if fault := _fault(name, arg, model, key):
            return fault
        if missing := _missing_signature(body, model):
            return _error(400, missing, "INVALID_ARGUMENT")
        parts = answer(body, model)
        response_id = "r" + hashlib.sha256(json.dumps(body["contents"]).encode()).hexdigest()[:20]
        usage = _usage(body, parts, int(arg) if name == "cached" else 0)
        if method == "streamGenerateContent":
            if request.query_params.get("alt") != "sse":
                return _error(400, "This test server only streams with alt=sse.", "INVALID_ARGUMENT")
            chunks = stream(parts, model, response_id, usage, cut=name == "cut", malformed=name == "malformed")
            return StreamingResponse(chunks, media_type="text/event-stream")
        candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}
        return JSONResponse(
            {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}
        )


def vector(model: str, text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """This server's embedding of ``text``: multiples of 1/512, so exact in float32."""
    digest = hashlib.shake_256(json.dumps([model, text]).encode()).digest(dimensions)
    return [(byte - 128) / 512 for byte in digest]


def _embedding(model: str, request: dict[str, Any]) -> list[float]:
    (part,) = request["content"]["parts"]
    return vector(model, part["text"], request.get("outputDimensionality") or EMBEDDING_DIMENSIONS)


def answer(body: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The parts of the model's answer to ``body``."""
    contents = body["contents"]
    if any("functionResponse" in p for p in contents[-1]["parts"]):
        return [{"text": "It is sunny in Paris, 21 degrees."}]
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    declared = [d["name"] for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
    if declared and calling.get("mode") != "NONE":
        names = calling.get("allowedFunctionNames") or declared[:2]
        calls: list[dict[str, Any]] = [{"functionCall": {"name": n, "args": {"city": "Paris"}}} for n in names]
        calls[0]["thoughtSignature"] = signature(model, names[0])
        return calls
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") == "application/json":
        return [{"text": json.dumps({"answer": "Paris", "confidence": 0.9})}]
    text = [{"text": full(model)}]
    if (config.get("thinkingConfig") or {}).get("includeThoughts"):
        return [{"text": "**Recalling** The user wants a capital.", "thought": True}, *text]
    return text


def _missing_signature(body: dict[str, Any], model: str) -> str | None:
    """Gemini 3 refuses function calls sent back without the signature it gave them."""
    for content in body["contents"]:
        calls = [p for p in content["parts"] if "functionCall" in p]
        if content["role"] == "model" and calls:
            expected = {signature(model, calls[0]["functionCall"]["name"]), DUMMY_SIGNATURE}
            if calls[0].get("thoughtSignature") not in expected:
                return "Function call is missing a thought_signature in functionCall parts."
    return None


def _usage(body: dict[str, Any], parts: list[dict[str, Any]], cached: int = 0) -> dict[str, int]:
    prompt = len(json.dumps(body["contents"])) // 4 + cached
    candidates = len(json.dumps([p for p in parts if not p.get("thought")])) // 4
    thoughts = 12
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "thoughtsTokenCount": thoughts,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if cached:  # promptTokenCount counts them too
        usage["cachedContentTokenCount"] = cached
    return usage


async def stream(
    parts: list[dict[str, Any]],
    model: str,
    response_id: str,
    usage: dict[str, int],
    *,
    cut: bool,
    malformed: bool = False,
) -> AsyncIterator[bytes]:
    def event(chunk_parts: list[dict[str, Any]], **candidate: Any) -> bytes:
        response = {
            "candidates": [{"content": {"parts": chunk_parts, "role": "model"}, **candidate, "index": 0}],
            "usageMetadata": usage if candidate else {"promptTokenCount": usage["promptTokenCount"]},
            "modelVersion": model,
            "responseId": response_id,
        }
        return b"data: " + json.dumps(response).encode() + b"\r\n\r\n"

    if any("functionCall" in p for p in parts):
        yield event(parts, finishReason="STOP")
        return
    for part in parts:
        words = part["text"].split(" ")
        for k, word in enumerate(words):
            yield event([{**part, "text": word if k == 0 else " " + word}])
            if malformed and k == 0 and part is parts[0]:
                yield b"data: {not json\r\n\r\n"
    if not cut:
        yield event([{"text": "", "thoughtSignature": signature(model, "text")}], finishReason="STOP")


def _fault(name: str, arg: str, model: str, key: str) -> Response | None:
    if name == "429":
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{arg or 0}s"}
        return _error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED", [retry])
    if name == "503":
        return _error(503, "The model is overloaded. Please try again later.", "UNAVAILABLE")
    if name == "400":
        return _error(400, "* GenerateContentRequest.contents: contents is not specified\n", "INVALID_ARGUMENT")
    if name == "403":
        return _error(403, "The caller does not have permission", "PERMISSION_DENIED")
    if name == "404":
        return _error(404, f"models/{model} is not found for API version v1beta.", "NOT_FOUND")
    if name == "leak":
        return JSONResponse(_leak(key), status_code=401)
    if name == "badkey":
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
        return _error(400, f"API key not valid: {key}. Please pass a valid API key.", "INVALID_ARGUMENT", [info])
    return None


def _leak(key: str) -> dict[str, Any]:
    return {"error": {"code": 401, "message": f"Bad key {key}.", "status": f"S-{key}", "details": [{"reason": key}]}}


async def _leaking(model: str, key: str, *, mid: bool) -> AsyncIterator[bytes]:
    if mid:
        response = {"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "index": 0}]}
        yield b"data: " + json.dumps({**response, "modelVersion": model}).encode() + b"\r\n\r\n"
    yield b"data: " + json.dumps(_leak(key)).encode() + b"\r\n\r\n"


def _error(code: int, message: str, status: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code)
