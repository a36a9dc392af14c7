"""Loopback servers speaking each vendor's wire format, with faults on cue."""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

FIXTURES = Path(__file__).parent.parent / "fixtures"


def full(model: str) -> str:
    """The whole answer every loopback upstream gives (as ``model``), a text: what tests compare the client's with."""
    return f"Hello from {model}! The capital of France is Paris."


def recorded(vendor: str, case: str) -> JSONResponse:
    """Fault ``recorded:<case>``: the error answer of that id in ``tests/fixtures/error_kinds/<vendor>.json``,
    in the vendor's exact wire format (status, headers, body)."""
    [found] = [c for c in json.loads((FIXTURES / "error_kinds" / f"{vendor}.json").read_text()) if c["id"] == case]
    return JSONResponse(found["body"], status_code=found["status"], headers=found["headers"])


class ScriptedUpstream:
    """What every test upstream keeps: calls per model, requests and headers received, and fault plans.

    ``plan("m", "429", "ok")`` makes the next two calls for ``m`` answer 429,
    then normally; :meth:`received` records a call and returns its fault as
    ``(name, argument)``, e.g. ``("429", "2")`` for ``"429:2"``. A model in
    :attr:`down` answers ``503`` to every call until it is taken out.
    """

    app: ASGIApp  #: the vendor's routes, set by each subclass

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._plans: defaultdict[str, deque[str]] = defaultdict(deque)
        self.down: set[str] = set()

    def plan(self, model: str, *faults: str) -> None:
        self._plans[model].extend(faults)

    def reset(self) -> None:
        self.calls.clear()
        self.requests.clear()
        self.headers.clear()
        self.urls.clear()
        self._plans.clear()
        self.down.clear()

    def received(self, model: str, body: dict[str, Any], request: Request) -> tuple[str, str]:
        self.calls[model] += 1
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.urls.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        if model in self.down:
            return "503", ""
        plan = self._plans[model]
        name, _, arg = (plan.popleft() if plan else "ok").partition(":")
        return name, arg
