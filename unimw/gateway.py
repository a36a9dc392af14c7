"""The Gateway: owns the pipeline every call goes through, whatever the door."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from unimw.adapters import adapter_class
from unimw.adapters.base import Adapter
from unimw.dispatch import Dispatcher
from unimw.errors import ModelNotFound
from unimw.loader import build_policy, load_policy
from unimw.policy import Policy
from unimw.routing import Router
from unimw.validation import validate_chat
from unimw.wire import JSON, model_object

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from unimw.transport import GatewayTransport


class Gateway:
    """OpenAI-compatible endpoints over the providers of one policy.

    Use it as an async context manager (or call :meth:`aclose`) so that its
    upstream connections are closed.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.created = int(time.time())
        self._router = Router(policy)
        self._adapters: dict[str, Adapter] = {
            name: adapter_class(provider.kind)(provider) for name, provider in policy.providers.items()
        }
        retries = {name: p.retries for name, p in policy.providers.items() if p.retries is not None}
        self._dispatcher = Dispatcher(self._router, self._adapters, policy.dispatch, retries=retries)
        self._models = [self._model_object(name) for name in self._router.routes]

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Gateway:
        """A gateway for the policy file at ``path``."""
        return cls(load_policy(path, env))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gateway:
        """A gateway for a policy given as data (already interpolated)."""
        return cls(build_policy(dict(data)))

    async def chat_completions(self, body: JSON, *, tenant: str | None = None) -> JSON | AsyncIterator[JSON]:
        """Answer a chat request: a ``chat.completion``, or its chunks when ``stream`` is true.

        For a stream, everything up to the first chunk (validation, routing,
        the upstream accepting the request) happens before this returns, so
        errors are raised here, not from the iterator.
        """
        request = validate_chat(body)
        route = self._router.resolve(request["model"])
        if request.get("stream"):
            return await self._dispatcher.stream(route, request)
        return await self._dispatcher.complete(route, request)

    def models(self, *, tenant: str | None = None) -> JSON:
        """``GET /models``: every public model and alias."""
        return {"object": "list", "data": list(self._models)}

    def model(self, name: str, *, tenant: str | None = None) -> JSON:
        """``GET /models/{name}``."""
        if name not in self._router.routes:
            raise ModelNotFound(name)
        return self._model_object(name)

    def asgi_app(self, prefix: str = "/v1") -> ASGIApp:
        """An ASGI app serving the OpenAI routes under ``prefix``, to mount in a host app."""
        from unimw.asgi import GatewayApp

        return GatewayApp(self, prefix=prefix)

    def transport(self, prefix: str = "/v1") -> GatewayTransport:
        """An ``httpx`` transport that sends requests straight to this gateway, with no socket.

        Give the client a ``base_url`` ending in ``prefix``, e.g. ``http://unimw/v1``.
        """
        from unimw.transport import GatewayTransport

        return GatewayTransport(self.asgi_app(prefix=prefix))

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _model_object(self, name: str) -> JSON:
        route = self._router.routes[name]
        if route.is_alias:
            owner = "unimw"
        else:
            model = self.policy.models[name]
            owner = model.owned_by or route.targets[0].provider
        return model_object(name, owner, self.created)
