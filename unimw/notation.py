"""How policies.yaml writes a duration, a callable and a tag key, in plain Python.

The steps need these at run time (a ``unimw_cache`` ttl in a request, a
tag key in a header, a hook's ``module:function``), while the policy's
pydantic models are needed only when a policy is read. Kept apart from
:mod:`unimw.policy` (which re-exports them), so that importing the gateway
loads neither pydantic nor the models: about 60 ms of a 145 ms
``from unimw import Gateway, UnimwMiddleware`` (``python -X importtime``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

#: A duration as written: a number of seconds, or one with a unit.
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_HELP = "seconds, or a duration such as 250ms, 30s, 5m, 1h, 1d"

#: A tag key: what OpenAI allows as a metadata key, kept to names that are safe as attribute suffixes.
TAG_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_duration(value: Any) -> Any:
    """``"1h"``, ``"30s"``, ``"250ms"`` or a number of seconds → seconds."""
    if isinstance(value, str):
        match = DURATION.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r}: use a number of seconds or e.g. 250ms, 30s, 5m, 1h, 1d")
        return float(match[1]) * _UNIT_SECONDS[match[2]]
    return value


def load_callable(path: str) -> Callable[..., Any]:
    """The function a ``"package.module:function"`` path names."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]
