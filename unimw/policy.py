"""The policy: policies.yaml as frozen pydantic models, checked as a whole.

Field-level problems are pydantic's to find. Problems that need the whole
file (a model naming a provider that does not exist, an alias cycle) are
raised as :class:`PolicyError` with the path of the offending value, so the
loader can point at its line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from unimw.adapters import ADAPTERS

Path = tuple[str | int, ...]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class PolicyError(ValueError):
    """A policy that is well-formed field by field but wrong as a whole."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def parse_duration(value: Any) -> Any:
    """``"1h"``, ``"30s"``, ``"250ms"`` or a number of seconds → seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r}: use a number of seconds or e.g. 250ms, 30s, 5m, 1h, 1d")
        return float(match[1]) * _UNIT_SECONDS[match[2]]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Provider(_Frozen):
    """Where requests go: one upstream endpoint speaking one wire protocol."""

    kind: str
    base_url: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, str] = {}
    timeout: Seconds = 60.0
    connect_timeout: Seconds = 5.0
    retries: int | None = Field(default=None, ge=0, le=10)
    #: Adapter-specific settings (e.g. ``latency`` for ``mock``).
    options: dict[str, Any] = {}

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in ADAPTERS:
            raise ValueError(f"unknown provider kind {kind!r}; known kinds: {', '.join(sorted(ADAPTERS))}")
        return kind

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/") if url else url


class Price(_Frozen):
    """USD per 1M tokens."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)


class Model(_Frozen):
    """A public model name, served by one provider under its own name."""

    provider: str
    model: str
    price: Price | None = None
    #: Request fields merged into every request for this model (the
    #: caller's own fields win), e.g. vendor-specific extras.
    params: dict[str, Any] = {}
    owned_by: str | None = None


class WeightedTarget(_Frozen):
    model: str
    weight: float = Field(default=1.0, gt=0)


def _target(value: Any) -> Any:
    return {"model": value} if isinstance(value, str) else value


class Alias(_Frozen):
    """One public name for several targets, tried by a strategy."""

    targets: list[Annotated[WeightedTarget, BeforeValidator(_target)]] = Field(min_length=1)
    strategy: Literal["fallback", "weighted"] = "fallback"


class Dispatch(_Frozen):
    """How hard to try: retries per target, backoff, cooldown of failed targets."""

    retries: int = Field(default=1, ge=0, le=10)
    backoff: Seconds = 0.25
    max_backoff: Seconds = 8.0
    #: Longest ``Retry-After`` honoured before moving on to the next target.
    max_retry_after: Seconds = 10.0
    #: After a retryable failure a target is skipped for this long while
    #: other targets of its alias remain. 0 turns cooldown off.
    cooldown: Seconds = 5.0


class Server(_Frozen):
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)


class Policy(_Frozen):
    """The whole policy file."""

    providers: dict[str, Provider] = {}
    models: dict[str, Model] = {}
    aliases: dict[str, Alias] = {}
    dispatch: Dispatch = Dispatch()
    server: Server = Server()

    def check(self) -> None:
        """Raise :class:`PolicyError` for the first cross-reference problem."""
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise PolicyError(
                    ("models", name, "provider"),
                    f"model {name!r} uses provider {model.provider!r}, which is not defined in providers",
                )
        for name in self.aliases:
            if name in self.models:
                raise PolicyError(("aliases", name), f"alias {name!r} has the same name as a model")
        for name in self.aliases:
            self.expand(name)

    def expand(self, name: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        """The concrete models behind ``name``, in order, with weights.

        Aliases may point at aliases; they are flattened here, and a cycle or
        a dangling name is a :class:`PolicyError`.
        """
        if name in self.models:
            return [(name, 1.0)]
        if name in _seen:
            cycle = " -> ".join((*_seen[_seen.index(name) :], name))
            raise PolicyError(("aliases", _seen[0]), f"alias cycle: {cycle}")
        alias = self.aliases[name]
        out: list[tuple[str, float]] = []
        for i, target in enumerate(alias.targets):
            if target.model not in self.models and target.model not in self.aliases:
                raise PolicyError(
                    ("aliases", name, "targets", i),
                    f"alias {name!r} points at {target.model!r}, which is neither a model nor an alias",
                )
            for model, weight in self.expand(target.model, (*_seen, name)):
                if model not in (m for m, _ in out):
                    out.append((model, weight * target.weight))
        return out
