"""What every adapter provides, and the target it is asked to call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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


def merge_params(request: JSON, target: Target) -> JSON:
    """The request for ``target``: its model id, its policy params under the caller's fields."""
    if target.params:
        return {**target.params, **request, "model": target.model}
    return {**request, "model": target.model}
