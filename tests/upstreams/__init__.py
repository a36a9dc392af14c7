"""Loopback servers speaking each vendor's wire format, with faults on cue."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp


class ScriptedUpstream:
    """What every test upstream keeps: calls per model, requests and headers received, and fault plans.

    ``plan("m", "429", "ok")`` makes the next two calls for ``m`` answer 429,
    then normally; :meth:`received` records a call and returns its fault as
    ``(name, argument)``, e.g. ``("429", "2")`` for ``"429:2"``.
    """

    app: ASGIApp  #: the vendor's routes, set by each subclass

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._plans: defaultdict[str, deque[str]] = defaultdict(deque)

    def plan(self, model: str, *faults: str) -> None:
        self._plans[model].extend(faults)

    def reset(self) -> None:
        self.calls.clear()
        self.requests.clear()
        self.headers.clear()
        self.urls.clear()
        self._plans.clear()

    def received(self, model: str, body: dict[str, Any], request: Request) -> tuple[str, str]:
        self.calls[model] += 1
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.urls.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        plan = self._plans[model]
        name, _, arg = (plan.popleft() if plan else "ok").partition(":")
        return name, arg
