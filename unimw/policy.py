"""The policy: policies.yaml as frozen pydantic models, checked as a whole.

Field-level problems are pydantic's to find. Problems that need the whole
file (a model naming a provider that does not exist, an alias cycle) are
raised as :class:`PolicyError` with the path of the offending value, so the
loader can point at its line.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from unimw.adapters import ADAPTERS, adapter_class

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


def _store_url(url: str) -> str:
    if not url.startswith(("memory://", "redis://", "rediss://", "unix://")):
        raise ValueError(f"store must be memory:// or redis://host:port/db, got {url!r}")
    return url


StoreURL = Annotated[str, AfterValidator(_store_url)]


def load_callable(path: str) -> Callable[..., Any]:
    """The function a ``"package.module:function"`` path names."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


def _importable(path: str) -> str:
    # Checked when the policy is read, so `unimw check` names the line of a typo.
    try:
        load_callable(path)
    except (ImportError, AttributeError, TypeError) as exc:
        raise ValueError(f"cannot use {path!r}: {exc}") from None
    return path


#: A ``"package.module:function"`` path to a callable that can be imported.
CallablePath = Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$"), AfterValidator(_importable)]


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
    #: Send the call's W3C ``traceparent`` to this provider. Unset: ``tracing.propagate`` decides, and
    #: when that is unset too, only self-hosted providers get it (see :mod:`unimw.tracing`).
    propagate_trace: bool | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in ADAPTERS:
            raise ValueError(f"unknown provider kind {kind!r}; known kinds: {', '.join(sorted(ADAPTERS))}")
        return kind

    @field_validator("options")
    @classmethod
    def _options_for_kind(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is None:
            return options  # the kind itself was refused
        adapter = adapter_class(kind)
        if unknown := sorted(set(options) - adapter.option_names):
            known = ", ".join(sorted(adapter.option_names)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for kind {kind!r}; it takes: {known}")
        adapter.check_options(options)
        return options

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


Window = Literal["minute", "hour", "day", "month"]


class Limit(_Frozen):
    """At most ``requests`` / ``tokens`` / ``usd`` per window.

    ``minute`` and ``hour`` slide (any 60 s holds at most the limit);
    ``day`` and ``month`` are calendar windows in ``tenancy.reset_timezone``.
    """

    per: Window
    requests: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    usd: float | None = Field(default=None, gt=0)
    #: ``tenant``: one counter for the tenant; ``end_user``: one per end user of the tenant.
    scope: Literal["tenant", "end_user"] = "tenant"

    @model_validator(mode="after")
    def _something_limited(self) -> Limit:
        if self.requests is None and self.tokens is None and self.usd is None:
            raise ValueError("a limit needs at least one of requests, tokens or usd")
        return self


class GlobalLimit(Limit):
    """A limit shared by every tenant, on one public model or one provider."""

    model: str | None = None
    provider: str | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> GlobalLimit:
        if (self.model is None) == (self.provider is None):
            raise ValueError("a global limit names exactly one of model or provider")
        return self


API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class Tenant(_Frozen):
    """One customer: how it authenticates, what it may use, how much."""

    api_keys: list[str] = []
    #: Public models and aliases this tenant may use; all when absent.
    models: list[str] | None = None
    #: Cap on output tokens per request (the request's own cap is lowered to it).
    max_tokens: int | None = Field(default=None, gt=0)
    limits: list[Limit] = []

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not API_KEY_HASH.match(key):
                raise ValueError(
                    "api_keys are stored hashed: write sha256:<64 lowercase hex digits> "
                    "(python -m unimw.cli hash-key <key> prints it)"
                )
        return keys


class HeaderSource(_Frozen):
    header: str


class CallableSource(_Frozen):
    callable: CallablePath


def _source_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "header" if "header" in value else "callable"
    return "api_key"


#: ``api_key``, ``{header: X-Tenant-Id}`` or ``{callable: "module:function"}``; told apart by
#: shape, so an error names the field that is wrong rather than every alternative.
TenantSource = Annotated[
    Annotated[Literal["api_key"], Tag("api_key")]
    | Annotated[HeaderSource, Tag("header")]
    | Annotated[CallableSource, Tag("callable")],
    Discriminator(_source_kind),
]


class Alerts(_Frozen):
    """Budget thresholds: fractions of a limit that fire an alert once per window."""

    at: list[Annotated[float, Field(gt=0, le=1)]] = [0.8, 1.0]
    call: CallablePath | None = None


class Tenancy(_Frozen):
    """How callers are identified and how their limits are kept."""

    #: Tried in order; the first that names a tenant wins.
    resolve: list[TenantSource] = ["api_key"]
    #: Tenant for callers no source identifies; without it they get 401.
    default: str | None = None
    #: Where an end user's id comes from, besides the request's ``user`` field.
    end_user_header: str | None = "X-End-User"
    #: Output tokens reserved for a request that sets no cap (and the cap
    #: it is given when the tenant has token or USD limits).
    default_max_tokens: int = Field(default=4096, gt=0)
    reset_timezone: str = "UTC"
    store: StoreURL = "memory://"
    #: When the store cannot be reached: ``closed`` refuses with 503, ``open`` lets calls through unmetered.
    on_store_error: Literal["closed", "open"] = "closed"
    alerts: Alerts = Alerts()

    @field_validator("reset_timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        return zone


class CacheRule(_Frozen):
    """Cache settings for one model or alias; unset fields follow the cache section."""

    enabled: bool | None = None
    ttl: Seconds | None = None
    scope: Literal["tenant", "global"] | None = None
    when: Literal["always", "temperature_zero"] | None = None


class Cache(_Frozen):
    """The response cache: exact-match, per tenant unless a model says global."""

    enabled: bool = False
    store: StoreURL = "memory://"
    ttl: Seconds = 3600.0
    max_entries: int = Field(default=10_000, gt=0)
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: ``tenant``: one tenant never sees another's entries; ``global``: shared.
    scope: Literal["tenant", "global"] = "tenant"
    #: Which requests are cached: all, or only those asking for ``temperature: 0``.
    when: Literal["always", "temperature_zero"] = "always"
    #: A hit is ``free`` (no tokens, no cost) or charged ``full`` as the original call was.
    charge: Literal["free", "full"] = "free"
    #: How long identical concurrent requests wait for the one call in flight.
    wait: Seconds = 30.0
    models: dict[str, CacheRule] = {}


class UsageSinks(_Frozen):
    """Where a record of every settled call goes."""

    #: ``"module:function"`` called with each :class:`~unimw.usage.UsageRecord`.
    call: CallablePath | None = None
    #: A file that gets one JSON line per call.
    jsonl: str | None = None


class TracingSettings(_Frozen):
    """OpenTelemetry: what spans may carry, and whether the trace goes upstream."""

    #: Prompts and completions on the gateway span (``gen_ai.input.messages``, ...). Off by default;
    #: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, when set, decides instead.
    capture_content: bool = False
    #: W3C ``traceparent`` for the providers that do not set ``propagate_trace``: true for all of
    #: them, false for none. Unset: only self-hosted ones get it, not third-party vendors.
    propagate: bool | None = None


class Policy(_Frozen):
    """The whole policy file."""

    providers: dict[str, Provider] = {}
    models: dict[str, Model] = {}
    aliases: dict[str, Alias] = {}
    dispatch: Dispatch = Dispatch()
    server: Server = Server()
    tenancy: Tenancy = Tenancy()
    tenants: dict[str, Tenant] = {}
    limits: list[GlobalLimit] = []
    usage: UsageSinks = UsageSinks()
    cache: Cache = Cache()
    tracing: TracingSettings = TracingSettings()

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
        public = self.models.keys() | self.aliases.keys()
        for tenant_name, tenant in self.tenants.items():
            for i, allowed in enumerate(tenant.models or ()):
                if allowed not in public:
                    raise PolicyError(
                        ("tenants", tenant_name, "models", i),
                        f"tenant {tenant_name!r} may use {allowed!r}, which is neither a model nor an alias",
                    )
        if self.tenancy.default is not None and self.tenancy.default not in self.tenants:
            raise PolicyError(("tenancy", "default"), f"default tenant {self.tenancy.default!r} is not in tenants")
        for name in self.cache.models:
            if name not in public:
                raise PolicyError(
                    ("cache", "models", name), f"cache rule for {name!r}, which is neither a model nor an alias"
                )
        for i, limit in enumerate(self.limits):
            if limit.model is not None and limit.model not in self.models:
                raise PolicyError(("limits", i, "model"), f"limit on {limit.model!r}, which is not a model")
            if limit.provider is not None and limit.provider not in self.providers:
                raise PolicyError(("limits", i, "provider"), f"limit on {limit.provider!r}, which is not a provider")

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
