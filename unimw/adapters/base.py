"""What every adapter provides, and the target it is asked to call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from unimw.errors import InvalidRequest, UpstreamError
from unimw.http import StreamReply, UpstreamClient
from unimw.wire import JSON, dumps, loads, now

if TYPE_CHECKING:
    from unimw.policy import PromptCache, Provider


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete model a request can be sent to."""

    name: str  #: public model name in the policy
    model: str  #: the vendor's model id
    provider: str  #: provider name in the policy
    params: Mapping[str, Any] = field(default_factory=dict)
    prompt_cache: PromptCache | None = None  #: breakpoints to add where the caller marked none


class Adapter(Protocol):
    """Speaks one vendor wire protocol to one provider.

    ``complete`` returns a ``chat.completion``; ``stream`` returns the
    ``chat.completion.chunk`` iterator only once the upstream has accepted
    the request, so that every failure before the first chunk is raised
    from the ``await`` and can still be retried or fall back.
    """

    supports_streaming: ClassVar[bool]
    supports_tools: ClassVar[bool]
    #: Whether :meth:`embed` works: operations skip targets whose adapter cannot serve them.
    supports_embeddings: ClassVar[bool]
    #: The vendor as ``gen_ai.provider.name`` calls it (a well-known value of the GenAI conventions).
    provider_name: ClassVar[str]
    #: The vendor's own endpoint, used when a provider gives no ``base_url`` (None: there is none).
    default_base_url: ClassVar[str | None]

    def __init__(self, provider: Provider) -> None: ...

    def dropped_params(self, request: JSON, target: Target) -> tuple[str, ...]:
        """The request fields this adapter leaves out for ``target`` (recorded on the attempt's span)."""
        ...

    async def complete(self, request: JSON, target: Target) -> JSON: ...

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]: ...

    async def embed(self, request: JSON, target: Target) -> JSON:
        """A ``CreateEmbeddingResponse`` (``data`` in input order) for a validated embeddings request."""
        ...

    async def aclose(self) -> None: ...


def encode(body: JSON) -> bytes:
    """``body`` as JSON for the vendor; a body JSON cannot carry (nested past 254 levels) is the caller's 400."""
    try:
        return dumps(body)
    except TypeError as exc:
        raise InvalidRequest("The request cannot be encoded for the upstream: it is nested too deeply.") from exc


def merge_params(request: JSON, target: Target) -> JSON:
    """The request for ``target``: its model id, its policy params under the caller's fields."""
    if target.params:
        return {**target.params, **request, "model": target.model}
    return {**request, "model": target.model}


def parse_object(data: bytes) -> JSON:
    """A vendor's JSON object; anything else is a 502 for the caller, not a crash."""
    try:
        obj = loads(data)
    except ValueError as exc:
        raise UpstreamError("The upstream sent malformed JSON.", status=502, code="bad_upstream_response") from exc
    if not isinstance(obj, dict):
        raise UpstreamError("The upstream sent an unexpected JSON value.", status=502, code="bad_upstream_response")
    return obj


def error_body(body: bytes) -> JSON:
    """An error response's JSON object, or ``{}`` when it is not one (an HTML page from a proxy, say)."""
    try:
        parsed = loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return float(value)
        except ValueError:
            from email.utils import parsedate_to_datetime  # the rare HTTP-date form: email is a large import

            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now())
            except (TypeError, ValueError):
                return None
    return None


ToError = Callable[[int, bytes, Mapping[str, str]], UpstreamError]

_SSE_ACCEPT = {"accept": "text/event-stream"}


class HTTPAdapter:
    """The HTTP exchange every vendor adapter makes, written once.

    One pooled client per provider with the vendor's auth headers; an error
    status becomes the vendor module's ``to_error`` (redacted by the
    dispatcher, the one boundary for secrets). Subclasses build URLs and
    bodies and translate what comes back.
    """

    supports_streaming: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = None

    def dropped_params(self, request: JSON, target: Target) -> tuple[str, ...]:
        return ()

    def __init__(self, provider: Provider, to_error: ToError, auth: Callable[[str], Mapping[str, str]]) -> None:
        self._to_error = to_error
        api_key = provider.api_key.get_secret_value() if provider.api_key else None
        headers = {"content-type": "application/json", **provider.headers}
        if api_key:
            headers.update(auth(api_key))
        self._client = UpstreamClient(
            timeout=provider.timeout, connect_timeout=provider.connect_timeout, headers=headers
        )

    async def post(self, url: str, body: JSON) -> JSON:
        """POST ``body``; the answer's JSON object, or the vendor's error raised."""
        reply = await self._client.post(url, encode(body), {})
        if reply.status >= 400:
            raise self.error(reply.status, reply.body, reply.headers)
        return parse_object(reply.body)

    async def open_stream(self, url: str, body: JSON) -> StreamReply:
        """POST ``body`` for an event stream; the reply once the upstream accepted it."""
        reply = await self._client.open_stream(url, encode(body), _SSE_ACCEPT)
        if reply.status >= 400:
            try:
                raise self.error(reply.status, await reply.read(), reply.headers)
            finally:
                reply.close()
        return reply

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return self._to_error(status, body, headers)

    async def embed(self, request: JSON, target: Target) -> JSON:
        """Refused: a vendor that has embeddings overrides this and sets ``supports_embeddings``."""
        raise InvalidRequest(f"`{target.name}` cannot create embeddings.", param="model", code="unsupported_model")

    async def aclose(self) -> None:
        await self._client.aclose()
