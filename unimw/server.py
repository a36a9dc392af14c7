"""The app ``unimw serve`` runs: a bare Starlette app with the middleware in front."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from unimw.asgi import UnimwMiddleware
from unimw.errors import MethodNotAllowed, NotFound, UnimwError


async def health(_: object) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def not_served(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 and 405 (a path outside ``/v1``, a wrong method on ``/health``) in OpenAI's envelope,
    worded as the gateway's: every answer of ``unimw serve`` is one a client of the API can read."""
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    error: UnimwError
    if exc.status_code == 405:
        # Starlette lists a route's methods from a set: sorted, the header is the same on every run.
        allowed = ", ".join(sorted(name.strip() for name in (exc.headers or {}).get("Allow", "").split(",")))
        error = MethodNotAllowed(
            f"Method {method} is not allowed for {path}; use {allowed}.", headers={"allow": allowed}
        )
    else:
        error = NotFound(f"Invalid URL ({method} {path})")
    return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)


def build_app(config: str | os.PathLike[str]) -> ASGIApp:
    """A standalone app serving the policy at ``config`` under ``/v1``, plus ``/health``."""
    app = Starlette(routes=[Route("/health", health)], exception_handlers={404: not_served, 405: not_served})
    return UnimwMiddleware(app, config=config)
