"""``unimw serve --workers N``: N worker processes answering on one listening socket.

uvicorn's supervisor (:class:`uvicorn.supervisors.Multiprocess`) binds the
socket once in the parent, starts each worker with multiprocessing's
*spawn*, replaces a worker that dies, and on SIGINT or SIGTERM stops them
all. A spawned worker receives its configuration pickled, so what it serves
crosses the process boundary as plain data (the policy's path, the
exporter's name, the connection bounds) and is built in the worker: the
protocol class of :func:`~unimw.serve_limits.bounded_http` is made in a
closure and cannot be pickled, and an HTTP client session, an event loop or
an exporter's thread would not survive the crossing anyway.

Each worker is a whole gateway with its own memory: a ``memory://`` limit
store would count every limit once per worker, so :func:`counted_in_process`
names what would be, and ``unimw serve`` refuses to start such a policy
with more than one worker. The response cache, the store of
``/v1/responses``, the cooldown of failing targets and a ``key_lookup``'s
answers are per worker too; they are not limits, so they are documented
rather than refused (docs/serve.md). This module needs uvicorn, which
``unimw serve`` does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from unimw.loader import ConfigError
from unimw.policy import HeaderSource, Policy
from unimw.serve_limits import ServeLimits, bounded_http, tune_gc

if TYPE_CHECKING:
    from starlette.types import ASGIApp


def counted_in_process(policy: Policy) -> str | None:
    """The first part of ``policy`` whose counters its limit store keeps in each process, or None.

    That is every limit when ``tenancy.store`` is ``memory://``: the global
    ``limits``, a plan's or a tenant's, and those an identity from the app
    (a ``callable`` or ``key_lookup`` source) may bring, which are metered
    once the policy has tenants or plans. Budgets, their alerts and
    ``on_budget`` are USD limits, so they are among these.
    """
    if not policy.tenancy.store.startswith("memory://"):
        return None
    if policy.limits:
        return "limits"
    for section, rules in (("plans", policy.plans), ("tenants", policy.tenants)):
        for name, rule in rules.items():
            if rule.limits:
                return f"{section}.{name}.limits"
    if policy.tenants or policy.plans:
        for i, source in enumerate(policy.tenancy.resolve):
            if not isinstance(source, str | HeaderSource):
                return f"tenancy.resolve[{i}]"
    return None


@dataclass(frozen=True)
class ServeApp:
    """The app of one worker, as data: called in the worker (uvicorn's app factory) to build it there."""

    path: str
    otel: str | None = None
    reload: bool = False  #: ``--reload``: the worker reloads its policy on SIGHUP (the parent forwards it)

    def __call__(self) -> ASGIApp:
        from unimw.cli import configure_otel, flushing, instrument
        from unimw.server import build_app

        try:
            shutdown = configure_otel(self.otel) if self.otel else None
            app = build_app(self.path)
            if self.reload:
                from unimw.serve_reload import reloading_on_sighup

                app = reloading_on_sighup(app, self.path)
        except (ConfigError, ImportError) as error:
            # Checked by the parent before it started any worker; this is a policy changed meanwhile.
            # STARTUP_FAILURE tells the supervisor not to start the worker again, and to stop.
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(STARTUP_FAILURE) from None
        return app if shutdown is None else flushing(instrument(app), shutdown)


class WorkerConfig(uvicorn.Config):
    """uvicorn's configuration, with ``unimw serve``'s protocol made in each worker as it loads."""

    def __init__(self, app: ServeApp, limits: ServeLimits, **options: Any) -> None:
        super().__init__(app, factory=True, **options)
        self.limits = limits

    def load(self) -> None:
        from unimw.coalescing import coalescing_http

        self.http = coalescing_http(bounded_http(self.limits))
        tune_gc()  # in the worker: its own process
        super().load()


class ForwardingHangup(Multiprocess):
    """uvicorn's supervisor, passing SIGHUP on to every worker (``--reload``: each reloads its policy in place)
    instead of replacing the workers one by one, which would drop their caches and cooldowns."""

    def handle_hup(self) -> None:
        for process in self.processes:
            pid = process.process.pid
            if pid is not None and process.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)


def run_workers(app: ServeApp, limits: ServeLimits, workers: int, **options: Any) -> int:
    """Serve ``app`` from ``workers`` processes until SIGINT or SIGTERM; 1 if a worker could not start.

    What ``uvicorn.run`` does for ``workers > 1``, which takes only an import
    string for the app: bind in the parent, supervise the spawned workers.
    With ``app.reload``, a SIGHUP to the parent is sent on to each worker;
    without, uvicorn replaces the workers one by one.
    """
    config = WorkerConfig(app, limits, workers=workers, **options)
    supervising = ForwardingHangup if app.reload else Multiprocess
    supervisor = supervising(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    # A worker that failed to start is kept in the list, not replaced: the supervisor stopped for it.
    return 1 if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes) else 0
