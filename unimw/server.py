"""The app ``unimw serve`` runs: a bare Starlette app with the middleware in front."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from unimw.asgi import UnimwMiddleware


async def health(_: object) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def build_app(config: str | os.PathLike[str]) -> ASGIApp:
    """A standalone app serving the policy at ``config`` under ``/v1``, plus ``/health``."""
    app = Starlette(routes=[Route("/health", health)])
    return UnimwMiddleware(app, config=config)
