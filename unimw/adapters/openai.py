"""OpenAI Chat Completions, and every server that speaks it.

OpenAI itself, Azure OpenAI, vLLM, Ollama, llama.cpp, Groq, DeepSeek,
Mistral, OpenRouter and the rest are all ``kind: openai`` rows in
policies.yaml. The request is forwarded as the caller sent it, unknown fields
included, with only the model id replaced; so are embeddings requests, to
``{base_url}/embeddings`` (Azure: the deployment's ``/embeddings``).

Azure OpenAI is the ``azure`` option: the key goes in the ``api-key`` header
instead of ``Authorization: Bearer``. With ``api_version`` it is the classic
deployments API, ``{base_url}/deployments/{deployment}/chat/completions?api-version=...``,
where the deployment is ``deployment`` if given, else each model's ``model``
id (a ``base_url`` that already ends in ``/deployments/<name>`` is used as
is). Without it, ``base_url`` is the v1 endpoint, which is plain OpenAI::

    azure:    {kind: openai, base_url: "https://<resource>.openai.azure.com/openai",
               api_key: "${AZURE_OPENAI_API_KEY}", options: {azure: {api_version: "2024-10-21"}}}
    azure-v1: {kind: openai, base_url: "https://<resource>.openai.azure.com/openai/v1",
               api_key: "${AZURE_OPENAI_API_KEY}", options: {azure: true}}
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from unimw.adapters.base import HTTPAdapter, Target, error_body, merge_params, parse_object, retry_after
from unimw.adapters.openai_shapes import check_chunk, check_completion
from unimw.errors import ContentFiltered, ContextLengthExceeded, UpstreamError, UpstreamUnavailable
from unimw.policy import Provider
from unimw.wire import JSON, SKIPPED_EVENTS, aclose, now, skipped_only, sse_events

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def to_request(chat: JSON, target: Target) -> JSON:
    """The body to send upstream: the caller's, with the vendor's model id."""
    return merge_params(chat, target)


def chat_url(base_url: str, azure: Mapping[str, Any] | None, model: str) -> str:
    """Where chat requests for ``model`` go; see the module docstring for Azure."""
    return endpoint_url(base_url, azure, model, "/chat/completions")


def embeddings_url(base_url: str, azure: Mapping[str, Any] | None, model: str) -> str:
    """Where embeddings requests for ``model`` go (the same deployment rules as chat)."""
    return endpoint_url(base_url, azure, model, "/embeddings")


def endpoint_url(base_url: str, azure: Mapping[str, Any] | None, model: str, path: str) -> str:
    """``path`` under the provider's endpoint for ``model``: plain, or Azure's deployment with api-version."""
    if azure is None or "api_version" not in azure:
        return base_url + path
    if "/deployments/" not in base_url:
        base_url += "/deployments/" + quote(str(azure.get("deployment") or model), safe="")
    return f"{base_url}{path}?api-version={quote(str(azure['api_version']), safe='')}"


def azure_options(options: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The provider's ``azure`` option as a mapping (``true`` means ``{}``), or ``None`` when not Azure."""
    azure = options.get("azure")
    if azure is None or azure is False:
        return None
    if azure is True:
        return {}
    if not isinstance(azure, Mapping) or not set(azure) <= {"api_version", "deployment"}:
        raise ValueError("the azure option must be true or a mapping with api_version and/or deployment")
    return azure


def from_response(body: JSON) -> JSON:
    """A ``chat.completion``; compatible servers sometimes omit required keys (those unimw reads are checked)."""
    check_completion(body)
    body.setdefault("object", "chat.completion")
    if "created" not in body:  # now() only when needed: this runs on every call
        body["created"] = now()
    for choice in body.get("choices") or ():
        message = choice.get("message")
        if isinstance(message, dict):
            message.setdefault("refusal", None)
        choice.setdefault("logprobs", None)
    return body


def from_embeddings(body: JSON) -> JSON:
    """A ``CreateEmbeddingResponse``; compatible servers sometimes omit the constant ``object`` keys."""
    body.setdefault("object", "list")
    for item in body.get("data") or ():
        if isinstance(item, dict):
            item.setdefault("object", "embedding")
    return body


async def from_events(
    events: AsyncIterable[tuple[str | None, bytes]], *, skip_malformed: bool = False
) -> AsyncIterator[JSON]:
    """``chat.completion.chunk`` objects from the upstream's SSE events.

    A stream that ends without ``[DONE]`` was cut short: that is an error,
    not a quiet end, so the caller is not told a partial answer is whole.
    With ``skip_malformed``, an event that is not a JSON object is left out
    and counted on the next chunk (:data:`~unimw.wire.SKIPPED_EVENTS`)
    rather than failing the stream; when no chunk follows, on an item of
    its own (:func:`~unimw.wire.skipped_only`).
    """
    skipped = 0
    started = False
    try:
        async for _event, data in events:
            if data == b"[DONE]":
                if skipped and started:
                    yield skipped_only(skipped)
                return
            try:
                obj = parse_object(data)
            except UpstreamError:
                if not skip_malformed:
                    raise
                skipped += 1
                continue
            if "error" in obj:
                if skipped and started:
                    yield skipped_only(skipped)
                raise _error_from_body(500, obj, {})
            check_chunk(obj)
            if skipped:
                obj[SKIPPED_EVENTS], skipped = skipped, 0
            started = True
            yield obj
    finally:
        await aclose(events)  # returning at [DONE] leaves the SSE reader suspended
    if skipped and started:
        yield skipped_only(skipped)
    raise UpstreamUnavailable("The upstream closed the stream before it was complete.")


def to_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """The upstream's error, as it would reach an OpenAI client."""
    return _error_from_body(status, error_body(body), headers)


def _error_from_body(status: int, body: JSON, headers: Mapping[str, str]) -> UpstreamError:
    error = body.get("error")
    if not isinstance(error, dict):
        # Some compatible servers answer ``{"detail": ...}`` or ``{"message": ...}``.
        error = {"message": body.get("message") or body.get("detail")}
    message = error.get("message")
    code = _str_or(error.get("code"), None)
    text = message if isinstance(message, str) and message else f"The upstream answered with status {status}."
    kind = _kind(status, code, text)
    param = _str_or(error.get("param"), None)
    if kind is ContextLengthExceeded:  # OpenAI's code and param, where a compatible server gave none
        code, param = None, param or "messages"
    return kind(
        text,
        status=status,
        type=_str_or(error.get("type"), None) or "upstream_error",
        param=param,
        code=code,
        retry_after=retry_after(headers),
    )


#: Codes of a 400 that mean a content filter refused the request: Azure OpenAI's, and OpenAI's for images.
_FILTERED = frozenset({"content_filter", "content_policy_violation"})


def _kind(status: int, code: str | None, message: str) -> type[UpstreamError]:
    """What a 400 means, for dispatch: a context window overflow, a content filter, or neither.

    OpenAI says ``context_length_exceeded``; compatible servers (vLLM, DeepSeek, ...) often give no code
    but OpenAI's message, "This model's maximum context length is N tokens ...".
    """
    if status != 400:
        return UpstreamError
    if code == "context_length_exceeded" or "maximum context length" in message.lower():
        return ContextLengthExceeded
    return ContentFiltered if code in _FILTERED else UpstreamError


def _str_or(value: Any, default: str | None) -> str | None:
    if value is None:
        return default
    return str(value)


class OpenAIAdapter(HTTPAdapter):
    """Chat Completions over HTTP to one OpenAI-compatible provider."""

    provider_name: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    supports_embeddings: ClassVar[bool] = True

    def __init__(self, provider: Provider) -> None:
        self._base_url = provider.base_url or DEFAULT_BASE_URL
        self._azure = azure_options(provider.options)
        azure = self._azure or {}
        per_model = "api_version" in azure and not azure.get("deployment") and "/deployments/" not in self._base_url
        #: ``None`` when the URL names each model's own deployment.
        self._url = None if per_model else chat_url(self._base_url, self._azure, "")
        self._embeddings_url = None if per_model else embeddings_url(self._base_url, self._azure, "")
        #: Whether /v1/responses calls go to this server as they are (else they are translated to chat).
        self.speaks_responses = speaks_responses(provider, self._azure)
        self._skip_malformed = provider.malformed_events == "skip"
        super().__init__(provider, to_error, _azure_auth if self._azure is not None else _bearer)

    async def complete(self, request: JSON, target: Target) -> JSON:
        return from_response(await self.post(self._url or self._chat_url(target), to_request(request, target)))

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        reply = await self.open_stream(self._url or self._chat_url(target), to_request(request, target))
        # each closes its source, down to the reply
        return from_events(sse_events(reply.chunks()), skip_malformed=self._skip_malformed)

    async def embed(self, request: JSON, target: Target) -> JSON:
        """The caller's request, ``encoding_format`` included, with the vendor's model id."""
        url = self._embeddings_url or embeddings_url(self._base_url, self._azure, target.model)
        return from_embeddings(await self.post(url, merge_params(request, target)))

    async def respond(self, request: JSON, target: Target) -> JSON:
        """A Responses API request, sent as it is with the vendor's model id; the ``Response`` it answers."""
        return await self.post(self._base_url + "/responses", merge_params(request, target))

    async def stream_responses(self, request: JSON, target: Target) -> AsyncIterator[JSON]:
        """A streamed Responses API request: its events, once the upstream accepted it."""
        reply = await self.open_stream(self._base_url + "/responses", merge_params({**request, "stream": True}, target))
        return response_events(sse_events(reply.chunks()))  # each closes its source, down to the reply

    def _chat_url(self, target: Target) -> str:
        return chat_url(self._base_url, self._azure, target.model)


def speaks_responses(provider: Provider, azure: Mapping[str, Any] | None) -> bool:
    """The provider's ``responses`` option; unset, only OpenAI's own endpoint (Azure's deployments API never)."""
    if azure is not None and "api_version" in azure:
        return False
    option = provider.options.get("responses")
    return bool(option) if option is not None else provider.base_url in (None, DEFAULT_BASE_URL)


async def response_events(events: AsyncIterable[tuple[str | None, bytes]]) -> AsyncIterator[JSON]:
    """The events of a Responses stream, passed through; an error or a failed response raises, and a stream
    that ends before its terminal event was cut short."""
    try:
        async for _event, data in events:
            event = parse_object(data)
            kind = event.get("type")
            if kind == "error":
                raise _error_from_body(500, {"error": event}, {})
            if kind == "response.failed":
                failed = event.get("response")
                raise _error_from_body(500, {"error": failed.get("error") if isinstance(failed, dict) else None}, {})
            yield event
            if kind in ("response.completed", "response.incomplete"):
                return
    finally:
        await aclose(events)
    raise UpstreamUnavailable("The upstream closed the stream before it was complete.")


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": "Bearer " + key}


def _azure_auth(key: str) -> dict[str, str]:
    return {"api-key": key}
