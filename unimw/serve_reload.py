"""``unimw serve --reload``: SIGHUP makes the server re-read its policy file and serve it to new calls.

The reload is :meth:`Gateway.reload <unimw.gateway.Gateway.reload>`: calls
in flight finish under the policy they began with, and a file that does not
load is refused with its line, logged, and the policy before it kept. The
signal handler is installed on the server's event loop for as long as its
lifespan runs, so a SIGHUP before the server is up, or after it stopped, is
not taken for a reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from unimw.asgi import UnimwMiddleware
from unimw.loader import ConfigError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from unimw.gateway import Gateway

#: uvicorn's own logger: what the server says, at its ``--log-level``, in its format.
logger = logging.getLogger("uvicorn.error")


async def reload_from(gateway: Gateway, path: str | os.PathLike[str]) -> bool:
    """Serve the policy at ``path`` from now on; False (logged, nothing changed) if it cannot be."""
    try:
        await gateway.reload(path)
    except ConfigError as error:
        logger.error("unimw: the policy was not reloaded, the one before stays: %s", error)
        return False
    except Exception:
        logger.exception("unimw: the policy was not reloaded, the one before stays")
        return False
    logger.info("unimw: reloaded the policy from %s", path)
    return True


def reloading_on_sighup(app: ASGIApp, path: str | os.PathLike[str]) -> ASGIApp:
    """``app`` (as :func:`unimw.server.build_app` makes it), reloading its gateway's policy from ``path`` on
    SIGHUP while its lifespan runs."""
    if not isinstance(app, UnimwMiddleware):
        raise TypeError("reloading_on_sighup needs the app of unimw.server.build_app")
    gateway = app.gateway
    reloads: set[asyncio.Task[bool]] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(reload_from(gateway, path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            await app(scope, receive, send)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    return wrapped
