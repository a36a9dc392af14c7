"""Anthropic Messages API (``POST /v1/messages``), spoken to OpenAI clients.

The request is rebuilt field by field, so nothing the Messages API does not
know reaches it; fields with no counterpart are left out, and
:func:`translate` returns them for the attempt's span. What needs a choice is documented where it is made:
messages and tools in :mod:`unimw.adapters.anthropic_messages`;
structured output, thinking and sampling, which depend on the model, in
:mod:`unimw.adapters.anthropic_models`; prompt-cache breakpoints, the
caller's and a model's ``prompt_cache`` policy, in
:mod:`unimw.adapters.anthropic_cache`; reading replies and stream events in
:mod:`unimw.adapters.anthropic_replies`.

Provider options: ``anthropic_version`` (default ``2026-10-21``) and
``default_max_tokens`` (default 4096; the API requires ``max_tokens``). A
model's ``params`` in policies.yaml are Anthropic request fields merged into
every body (e.g. ``{"top_k": 5}`` or ``{"metadata": {"user_id": "..."}}``);
the caller's translated fields win, objects are merged key by key.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, ClassVar

from unimw.adapters.anthropic_cache import add_breakpoints, finish_system, marker, openai_breakpoints
from unimw.adapters.anthropic_messages import tool_id, translate_messages, translate_tools
from unimw.adapters.anthropic_models import (
    JSON_TOOL,
    LEGACY_VERSION,
    Traits,
    add_structured_output,
    add_thinking,
    closed_schema,
    drop_sampling,
    traits,
)
from unimw.adapters.anthropic_replies import Stream, finish_reason, refusal, to_usage
from unimw.adapters.base import (
    HTTPAdapter,
    Target,
    error_body,
    parse_object,
    retry_after,
)
from unimw.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    InvalidRequest,
    UnimwError,
    UpstreamError,
    UpstreamUnavailable,
    is_retryable_status,
)
from unimw.policy import Provider
from unimw.wire import JSON, SKIPPED_EVENTS, dumps, now, skipped_only, sse_events, usage_chunk

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_VERSION",
    "JSON_TOOL",
    "LEGACY_VERSION",
    "AnthropicAdapter",
    "Traits",
    "closed_schema",
    "finish_reason",
    "from_events",
    "from_response",
    "to_error",
    "to_request",
    "to_usage",
    "tool_id",
    "traits",
    "translate_messages",
    "translate_tools",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096
#: The error of a stream whose skipped (unparseable) event held what the answer needs.
LOST_EVENT = "The upstream sent an event that could not be parsed and that the answer needs."
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
        "cache_control",
    }
)  # fmt: skip


# -- request ---------------------------------------------------------------------------------------


def to_request(
    chat: JSON, target: Target, *, version: str = DEFAULT_VERSION, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> JSON:
    """The Messages API body for an OpenAI chat request."""
    return translate(chat, target, version=version, default_max_tokens=default_max_tokens)[0]


def translate(
    chat: JSON, target: Target, *, version: str = DEFAULT_VERSION, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> tuple[JSON, tuple[str, ...]]:
    """The Messages API body for an OpenAI chat request, and the request fields it had to leave out."""
    model = traits(target.model)
    dropped = sorted(k for k, v in chat.items() if k not in _HANDLED and v is not None)
    _refuse_unsupported(chat)
    system, messages = translate_messages(chat["messages"])
    if openai_breakpoints(chat["messages"]):
        dropped.append("prompt_cache_breakpoint")
    body: JSON = {"model": target.model, "messages": messages}
    if system:
        body["system"] = system
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
    add_structured_output(body, chat.get("response_format"), model)
    if user := chat.get("safety_identifier") or chat.get("user"):
        body["metadata"] = {"user_id": str(user)}
    if tier := chat.get("service_tier"):
        if tier in ("auto", "default"):
            body["service_tier"] = "auto" if tier == "auto" else "standard_only"
        else:
            dropped.append("service_tier")
    if chat.get("stream"):
        body["stream"] = True
    if chat.get("cache_control") is not None:  # the API's automatic caching: its last cacheable block
        body["cache_control"] = marker(chat["cache_control"], "cache_control")
    _merge(body, target.params)
    add_breakpoints(body, target.prompt_cache)
    finish_system(body)
    grow = "max_tokens" not in body  # thinking counts against max_tokens: its budget goes on top of a default
    body.setdefault("max_tokens", default_max_tokens)
    add_thinking(body, chat.get("reasoning_effort"), model, dropped, grow=grow)
    drop_sampling(body, model.sampling(version), model, dropped)
    return body, tuple(dropped)


def _refuse_unsupported(chat: JSON) -> None:
    if (chat.get("n") or 1) > 1:
        raise InvalidRequest("This model does not support 'n' greater than 1.", param="n", code="unsupported_value")
    if chat.get("logprobs") or chat.get("top_logprobs"):
        raise InvalidRequest("This model does not return log probabilities.", param="logprobs")


def _merge(body: JSON, params: Mapping[str, Any]) -> None:
    """Add the model's policy ``params`` under ``body``: body values win, objects merge."""
    for key, value in params.items():
        if key not in body:
            body[key] = copy.deepcopy(value)  # the body is changed later; the policy must not be
        elif isinstance(body[key], dict) and isinstance(value, dict):
            body[key] = {**copy.deepcopy(value), **body[key]}


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
        message["refusal"] = refusal(body.get("stop_details"))
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


# -- stream ----------------------------------------------------------------------------------------


async def from_events(
    events: AsyncIterable[tuple[str | None, bytes]], *, include_usage: bool = False, skip_malformed: bool = False
) -> AsyncIterator[JSON]:
    """``chat.completion.chunk`` objects from the Messages API's named SSE events.

    The usage chunk (``choices: []``) comes last, and only with
    ``include_usage``. An ``error`` event raises; a stream that ends without
    ``message_stop`` was cut short and raises too.

    With ``skip_malformed``, an event whose data is not a JSON object is
    left out and counted on the next chunk (:data:`~unimw.wire.SKIPPED_EVENTS`),
    or on an item of its own when no chunk follows, as on the OpenAI wire.
    Where that would lose what the answer or its accounting needs, it fails
    instead: before ``message_start`` (the id, the model and the input
    usage; nothing has reached the caller yet, so the attempt is retried or
    falls back), as an ``error`` event (an error whatever its data), and
    once it is clear that the skipped event was a ``message_delta`` (the
    stop reason and the output count) or the start of a tool call (its id
    and name, without which its arguments could not be run; or that it
    held the structured answer). Text and thinking whose block's start was
    skipped still arrive: they need nothing from it.
    """
    stream = Stream()
    skipped = 0  # since the last chunk
    gaps = False  # any event skipped: only then can a missing block start or message_delta be one of them
    async for name, data in events:
        try:
            event = parse_object(data)
        except UpstreamError:
            if not skip_malformed or not stream.started or name == "error":
                raise
            skipped += 1
            gaps = True
            continue
        kind = event.get("type") or name
        if kind == "error":
            if skipped and stream.announced:
                yield skipped_only(skipped)
            raise _error_from_body(200, event, {})
        handler = getattr(stream, f"on_{kind}", None)
        if handler is None:  # ping, and event types added after this was written
            continue
        items = handler(event)
        if gaps and (stream.lost or (stream.stopped and not stream.finished)):
            break  # a skipped event held what the answer needs: a tool call's start, or the stop reason and count
        if items and not stream.announced:
            # The role chunk waits for the first output, so that an error event right after
            # message_start (an overload, typically) comes before the first chunk and can
            # still be retried or fall back.
            stream.announced = True
            items.insert(0, stream.chunk({"role": "assistant", "content": ""}))
        if stream.stopped and include_usage:
            items.append(usage_chunk(stream.id, stream.model, stream.created, to_usage(stream.usage)))
        if skipped and items:
            items[0][SKIPPED_EVENTS], skipped = skipped, 0
        for item in items:
            yield item
        if stream.stopped:
            if skipped and stream.announced:
                yield skipped_only(skipped)
            return
    if skipped and stream.announced:
        yield skipped_only(skipped)
    if gaps and (stream.lost or stream.stopped):
        raise UpstreamError(LOST_EVENT, status=502, code="bad_upstream_response")
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
    text = message if isinstance(message, str) and message else f"The upstream answered with status {status}."
    cls = _kind(status, kind, text)
    return cls(
        text,
        status=status,
        type=openai_type,
        param="messages" if cls is ContextLengthExceeded else None,
        code=code if cls is UpstreamError else None,  # the kind's own OpenAI code
        retryable=True if kind == "overloaded_error" else is_retryable_status(status),
        retry_after=retry_after(headers),
    )


def _kind(status: int, kind: str, message: str) -> type[UpstreamError]:
    """What an ``invalid_request_error`` means, for dispatch; only its message tells.

    A prompt over the context window: "prompt is too long: 208310 tokens > 200000 maximum"; with
    ``max_tokens`` added (models since Claude 3.7 refuse rather than shorten the answer): "input length
    and `max_tokens` exceed context limit: 199759 + 8192 > 200000, ...". The content filter (as the API
    answers it, before or in a stream): "Output blocked by content filtering policy".
    """
    if status != 400 or kind != "invalid_request_error":
        return UpstreamError
    lowered = message.lower()
    if lowered.startswith("prompt is too long") or "exceed context limit" in lowered:
        return ContextLengthExceeded
    return ContentFiltered if lowered.startswith("output blocked by content filtering") else UpstreamError


def _object(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


# -- adapter ---------------------------------------------------------------------------------------


class AnthropicAdapter(HTTPAdapter):
    """Messages API calls to one Anthropic provider."""

    provider_name: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    supports_embeddings: ClassVar[bool] = False  # Anthropic has no embeddings API

    def __init__(self, provider: Provider) -> None:
        # ``…/v1`` is accepted as well, as OpenAI-style base URLs end in it.
        base_url = (provider.base_url or DEFAULT_BASE_URL).removesuffix("/v1")
        self._url = base_url + "/v1/messages"
        self._version = str(provider.options.get("anthropic_version", DEFAULT_VERSION))
        self._max_tokens = int(provider.options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
        self._skip_malformed = provider.malformed_events == "skip"
        super().__init__(provider, to_error, lambda key: {"x-api-key": key, "anthropic-version": self._version})

    def _body(self, request: JSON, target: Target) -> JSON:
        return to_request(request, target, version=self._version, default_max_tokens=self._max_tokens)

    def dropped_params(self, request: JSON, target: Target) -> tuple[str, ...]:
        if "messages" not in request:  # a Responses request: made a chat one only as it is sent
            return ()
        try:
            return translate(request, target, version=self._version, default_max_tokens=self._max_tokens)[1]
        except UnimwError:
            return ()  # the request itself is refused: the attempt says so

    async def complete(self, request: JSON, target: Target) -> JSON:
        return from_response(await self.post(self._url, self._body(request, target)))

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        reply = await self.open_stream(self._url, {**self._body(request, target), "stream": True})
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = sse_events(reply.chunks())
        return reply.guard(from_events(events, include_usage=include_usage, skip_malformed=self._skip_malformed))
