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

What needs a choice is documented where it is made: messages, tools and
``tool_choice`` in :mod:`unimw.adapters.gemini_messages`; tool and response
schemas in :mod:`unimw.adapters.gemini_schema`; ``reasoning_effort``,
tool-call ids and thought signatures in :mod:`unimw.adapters.gemini_thinking`;
candidates, finish reasons, logprobs and usage in
:mod:`unimw.adapters.gemini_replies`.

Request, besides those: ``temperature``, ``top_p``,
``max_completion_tokens`` (else ``max_tokens``), ``stop``, ``n``, ``seed``,
penalties, ``logprobs``/``top_logprobs`` → ``generationConfig``;
``response_format`` → ``responseMimeType`` plus ``responseJsonSchema`` (the
schema as given), or a converted ``responseSchema`` for models before 2.5;
``service_tier`` flex/priority → ``serviceTier``. Anything else (``user``,
``metadata``, ``logit_bias``, ``reasoning_effort`` for other models, ...) is
left out, and :func:`translate` returns them for the attempt's span.

A stream ends when every candidate has a ``finishReason``; one cut short
raises :class:`UpstreamUnavailable`.

Embeddings go to ``:embedContent`` (one input) or ``:batchEmbedContents``
(several); see :func:`to_embed_requests`. The answer's vectors are floats,
and its usage the ``usageMetadata`` when Gemini sends one.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from unimw.adapters.base import HTTPAdapter, Target, parse_object, retry_after
from unimw.adapters.gemini_messages import to_calling_config, to_contents, to_declarations
from unimw.adapters.gemini_replies import (
    blocked,
    candidate_chunks,
    completion_id_for,
    finish_reason,
    read_parts,
    to_logprobs,
    to_usage,
)
from unimw.adapters.gemini_schema import to_schema
from unimw.adapters.gemini_thinking import (
    SKIP_SIGNATURE,
    THINKING_LEVELS,
    model_version,
    split_call_id,
    thinking_budget,
    thinking_level,
    to_thinking,
    tool_call_id,
)
from unimw.errors import ContextLengthExceeded, InvalidRequest, UnimwError, UpstreamError, UpstreamUnavailable
from unimw.policy import Provider
from unimw.wire import JSON, SKIPPED_EVENTS, chunk, loads, now, skipped_only, sse_events, usage_chunk

__all__ = [
    "DEFAULT_BASE_URL",
    "SKIP_SIGNATURE",
    "THINKING_LEVELS",
    "GeminiAdapter",
    "embed_dropped",
    "finish_reason",
    "from_embed_response",
    "from_events",
    "from_response",
    "model_version",
    "split_call_id",
    "thinking_budget",
    "thinking_level",
    "to_contents",
    "to_embed_requests",
    "to_error",
    "to_request",
    "to_schema",
    "to_thinking",
    "to_usage",
    "tool_call_id",
]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

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


# -- request -------------------------------------------------------------------


def to_request(
    chat: JSON,
    target: Target,
    *,
    thinking_levels: Mapping[str, Sequence[str]] = THINKING_LEVELS,
    include_thoughts: bool = False,
) -> JSON:
    """The ``generateContent`` body for a (validated) chat request."""
    return translate(chat, target, thinking_levels=thinking_levels, include_thoughts=include_thoughts)[0]


def translate(
    chat: JSON,
    target: Target,
    *,
    thinking_levels: Mapping[str, Sequence[str]] = THINKING_LEVELS,
    include_thoughts: bool = False,
) -> tuple[JSON, tuple[str, ...]]:
    """The ``generateContent`` body for a (validated) chat request, and the request fields it left out."""
    version = model_version(target.model)
    system, contents = to_contents(chat["messages"], version)
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if declarations := to_declarations(chat.get("tools"), chat.get("tool_choice")):
        body["tools"] = [{"functionDeclarations": declarations}]
        if (mode := to_calling_config(chat.get("tool_choice"))) is not None:
            body["toolConfig"] = {"functionCallingConfig": mode}
    dropped = [k for k in chat if k not in _TRANSLATED]
    if chat.get("parallel_tool_calls") is False:
        dropped.append("parallel_tool_calls")  # Gemini may always call several functions at once
    dropped.extend(m for m in _cache_markers(chat) if m not in dropped)  # Gemini caches prefixes by itself
    config = _generation_config(chat, version)
    effort = chat.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise InvalidRequest("Invalid type for 'reasoning_effort': expected a string.", param="reasoning_effort")
    thinking = to_thinking(effort, target.model, thinking_levels)
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
    return (_with_params(target.params, body) if target.params else body), tuple(sorted(dropped))


def _cache_markers(chat: JSON) -> set[str]:
    """The prompt-cache markers on the request's messages, parts and tools (Anthropic's, OpenAI's), none sent."""
    messages = chat.get("messages") or []
    parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
    items = [i for i in (*messages, *parts, *(chat.get("tools") or ())) if isinstance(i, dict)]
    return {key for key in ("cache_control", "prompt_cache_breakpoint") for i in items if i.get(key) is not None}


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
            out["responseSchema"] = to_schema(schema, ordered=True, param="response_format.json_schema.schema")
        elif schema is not None:
            out["responseJsonSchema"] = schema  # full JSON Schema, $ref and additionalProperties included
        return out
    raise InvalidRequest(
        f"Invalid value for 'response_format.type': {kind!r}.", param="response_format.type", code="invalid_value"
    )


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


# -- response ------------------------------------------------------------------


def from_response(body: JSON, model: str = "") -> JSON:
    """A ``chat.completion`` from a ``GenerateContentResponse``."""
    response_id = body.get("responseId")
    choices = []
    for position, candidate in enumerate(body.get("candidates") or ()):
        index = candidate.get("index", position)
        texts, thoughts, calls = read_parts(candidate, response_id, index, 0)
        message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(
            {"index": index, "message": message, "finish_reason": reason, "logprobs": to_logprobs(candidate)}
        )
    if not choices:  # the prompt itself was blocked
        message = {"role": "assistant", "content": None, "refusal": None}
        choices.append({"index": 0, "message": message, "finish_reason": blocked(body) or "stop", "logprobs": None})
    out: JSON = {
        "id": completion_id_for(body),
        "object": "chat.completion",
        "created": now(),
        "model": body.get("modelVersion") or model,
        "choices": choices,
    }
    if isinstance(meta := body.get("usageMetadata"), dict):
        out["usage"] = to_usage(meta)
    return out


# -- streaming -----------------------------------------------------------------


async def from_events(
    events: AsyncIterable[tuple[str | None, bytes]],
    *,
    model: str = "",
    include_usage: bool = False,
    skip_malformed: bool = False,
) -> AsyncIterator[JSON]:
    """``chat.completion.chunk`` objects from ``streamGenerateContent?alt=sse`` events.

    Gemini sends no ``[DONE]``: a stream is whole once every candidate has
    a ``finishReason``. Ending before that is an error, not a quiet end.
    With ``skip_malformed``, an event that is not a JSON object is left out
    (and the text it held with it) and counted on the next chunk
    (:data:`~unimw.wire.SKIPPED_EVENTS`), or on an item of its own when no
    chunk follows, as on the OpenAI wire; usage is read from the last event
    that has it, so a skipped one loses none.
    """
    id, created = "", now()
    calls: dict[int, int] = {}  # candidate → tool calls so far; a candidate in it has had a chunk
    finished: set[int] = set()
    meta: JSON | None = None
    skipped = 0
    async for _event, data in events:
        try:
            body = parse_object(data)
        except UpstreamError:
            if not skip_malformed:
                raise
            skipped += 1
            continue
        if isinstance(body.get("error"), dict):
            if skipped and (calls or finished):
                yield skipped_only(skipped)
            code = body["error"].get("code")
            raise _error_from_body(code if isinstance(code, int) else 500, body, {})
        id = id or completion_id_for(body)
        model = body.get("modelVersion") or model
        meta = body.get("usageMetadata") or meta
        if not body.get("candidates") and (reason := blocked(body)):
            finished.add(0)
            out = chunk(id, model, created, {"role": "assistant"}, finish_reason=reason)
            if skipped:
                out[SKIPPED_EVENTS], skipped = skipped, 0
            yield out
        for position, candidate in enumerate(body.get("candidates") or ()):
            index = candidate.get("index", position)
            for out in candidate_chunks(candidate, index, body.get("responseId"), calls, (id, model, created)):
                if skipped:
                    out[SKIPPED_EVENTS], skipped = skipped, 0
                yield out
            if candidate.get("finishReason"):
                finished.add(index)
    if not finished or not finished.issuperset(calls):
        if skipped and calls:
            yield skipped_only(skipped)
        raise UpstreamUnavailable("The upstream closed the stream before it was complete.")
    if include_usage and meta is not None:
        out = usage_chunk(id, model, created, to_usage(meta))
        if skipped:
            out[SKIPPED_EVENTS], skipped = skipped, 0
        yield out
    if skipped:
        yield skipped_only(skipped)


# -- embeddings ----------------------------------------------------------------

#: Embeddings request fields :func:`to_embed_requests` translates (``encoding_format`` unimw handles itself).
_EMBED_TRANSLATED = frozenset({"model", "input", "dimensions", "encoding_format"})


def to_embed_requests(embeddings: JSON, target: Target) -> list[JSON]:
    """One ``EmbedContentRequest`` per input of a (validated) OpenAI embeddings request.

    The model's ``params`` are ``EmbedContentRequest`` fields (``taskType``,
    ``title``, ``outputDimensionality``) put in each request, under the
    caller's ``dimensions``. Gemini embeds text only: token ids are a 400.
    """
    inputs = embeddings["input"]
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequest(
            "This model embeds text only: send 'input' as strings, not token ids.", param="input", code="invalid_value"
        )
    extra: JSON = dict(target.params)
    if (dimensions := embeddings.get("dimensions")) is not None:
        extra["outputDimensionality"] = dimensions
    model = _model_path(target.model)
    return [{**extra, "model": model, "content": {"parts": [{"text": text}]}} for text in texts]


def from_embed_response(body: JSON, count: int, model: str) -> JSON:
    """A ``CreateEmbeddingResponse`` (float vectors) from ``embedContent`` or ``batchEmbedContents``."""
    found = [body["embedding"]] if isinstance(body.get("embedding"), dict) else body.get("embeddings")
    if not isinstance(found, list) or len(found) != count:
        raise UpstreamError(
            f"The upstream sent {len(found) if isinstance(found, list) else 'no'} embeddings for {count} inputs.",
            status=502,
            code="bad_upstream_response",
        )
    data = [
        {"object": "embedding", "index": i, "embedding": item.get("values") if isinstance(item, dict) else None}
        for i, item in enumerate(found)
    ]
    if any(not isinstance(item["embedding"], list) for item in data):
        raise UpstreamError("The upstream sent an embedding without values.", status=502, code="bad_upstream_response")
    out: JSON = {"object": "list", "data": data, "model": model}
    meta = body.get("usageMetadata")
    if isinstance(meta, dict) and isinstance(tokens := meta.get("promptTokenCount"), int):
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return out  # no usage: Gemini does not always count, and the operation estimates it


def embed_dropped(embeddings: JSON) -> tuple[str, ...]:
    """The embeddings request fields Gemini has no place for (``user``, and any unknown field)."""
    return tuple(sorted(k for k in embeddings if k not in _EMBED_TRANSLATED))


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else "models/" + model


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
    text = message if isinstance(message, str) and message else f"The upstream answered with status {status}."
    if http == 400 and error.get("status") == "INVALID_ARGUMENT" and _too_long(text):
        return ContextLengthExceeded(text, status=400, type=type, param="messages")
    return UpstreamError(
        text,
        status=http,
        type=type,
        code=code,
        param="model" if code == "model_not_found" else None,
        retry_after=_first(retry_after(headers), _retry_delay(details)),
    )


def _too_long(message: str) -> bool:
    """Whether an ``INVALID_ARGUMENT`` is a prompt over the model's input token limit; only its message tells:
    "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576)."

    Gemini has no content filter error to tell apart: a blocked prompt is an answer (``promptFeedback``).
    """
    lowered = message.lower()
    return "input token count" in lowered and "exceeds the maximum number of tokens" in lowered


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


class GeminiAdapter(HTTPAdapter):
    """``generateContent`` over HTTP to one Gemini API provider."""

    provider_name: ClassVar[str] = "gcp.gemini"  # the Gemini API (generativelanguage), not Vertex AI
    default_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    supports_embeddings: ClassVar[bool] = True

    def __init__(self, provider: Provider) -> None:
        self._base_url = provider.base_url or DEFAULT_BASE_URL
        super().__init__(provider, to_error, lambda key: {"x-goog-api-key": key})
        levels = provider.options.get("thinking_levels") or {}
        self._levels = {**THINKING_LEVELS, **{prefix: tuple(lv) for prefix, lv in levels.items()}}
        self._include_thoughts = bool(provider.options.get("include_thoughts", False))
        self._skip_malformed = provider.malformed_events == "skip"

    async def complete(self, request: JSON, target: Target) -> JSON:
        body = await self.post(self._url(target.model, "generateContent"), self._body(request, target))
        return from_response(body, target.model)

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        url = self._url(target.model, "streamGenerateContent?alt=sse")
        reply = await self.open_stream(url, self._body(request, target))
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = sse_events(reply.chunks())
        chunks = from_events(
            events, model=target.model, include_usage=include_usage, skip_malformed=self._skip_malformed
        )
        return reply.guard(chunks)

    async def embed(self, request: JSON, target: Target) -> JSON:
        """``:embedContent`` for one input, ``:batchEmbedContents`` for several."""
        requests = to_embed_requests(request, target)
        if len(requests) == 1:
            single = {k: v for k, v in requests[0].items() if k != "model"}  # the URL names the model
            body = await self.post(self._url(target.model, "embedContent"), single)
        else:
            body = await self.post(self._url(target.model, "batchEmbedContents"), {"requests": requests})
        return from_embed_response(body, len(requests), target.model)

    def _body(self, request: JSON, target: Target) -> JSON:
        return to_request(request, target, thinking_levels=self._levels, include_thoughts=self._include_thoughts)

    def dropped_params(self, request: JSON, target: Target) -> tuple[str, ...]:
        if "messages" not in request:  # an embeddings request
            return embed_dropped(request)
        try:
            return translate(request, target, thinking_levels=self._levels, include_thoughts=self._include_thoughts)[1]
        except UnimwError:
            return ()  # the request itself is refused: the attempt says so

    def _url(self, model: str, method: str) -> str:
        return f"{self._base_url}/{quote(_model_path(model))}:{method}"
