"""What every adapter provides, and the target it is asked to call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from opentelemetry import trace

from unimw.policy import Provider
from unimw.wire import JSON


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete model a request can be sent to."""

    name: str  #: public model name in the policy
    model: str  #: the vendor's model id
    provider: str  #: provider name in the policy
    params: Mapping[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    """Speaks one vendor wire protocol to one provider.

    ``complete`` returns a ``chat.completion``; ``stream`` returns the
    ``chat.completion.chunk`` iterator only once the upstream has accepted
    the request, so that every failure before the first chunk is raised
    from the ``await`` and can still be retried or fall back.
    """

    supports_streaming: ClassVar[bool]
    supports_tools: ClassVar[bool]

    def __init__(self, provider: Provider) -> None: ...

    async def complete(self, request: JSON, target: Target) -> JSON: ...

    async def stream(self, request: JSON, target: Target) -> AsyncIterator[JSON]: ...

    async def aclose(self) -> None: ...


def note_dropped(*params: str) -> None:
    """Record request fields an adapter had to leave out for this target.

    They go on the current span (the upstream attempt's, once tracing is
    on), so a dropped ``temperature`` is visible rather than silent.
    """
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("unimw.request.dropped_params", list(params))


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (a provider's API key) blanked out."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


def merge_params(request: JSON, target: Target) -> JSON:
    """The request for ``target``: its model id, its policy params under the caller's fields."""
    if target.params:
        return {**target.params, **request, "model": target.model}
    return {**request, "model": target.model}
