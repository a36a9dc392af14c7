"""unimw: an OpenAI-compatible LLM gateway inside your Python web app.

The names below are the public API; every other module and name is internal
and may change between releases.

Each name is imported on first use (``from unimw import Gateway`` or
``unimw.Gateway``), not by ``import unimw``. Importing the gateway loads no
policy: an app that mounts unimw at startup pays for pydantic, the policy
models, the steps and the adapters only when it builds a gateway (from a
policy file or data). Type checkers and IDEs read the imports below.
"""

# typing.TYPE_CHECKING without importing typing (a few ms): type checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from unimw.asgi import GatewayApp, UnimwMiddleware
    from unimw.calls import CallStream
    from unimw.errors import (
        AuthenticationFailed,
        BudgetExceeded,
        CircuitOpen,
        ContentFiltered,
        ContextLengthExceeded,
        InvalidRequest,
        MethodNotAllowed,
        ModelNotFound,
        NotFound,
        PayloadTooLarge,
        PermissionDenied,
        RateLimited,
        ServiceUnavailable,
        StreamTooLong,
        UnimwError,
        UnsupportedMediaType,
        UpstreamError,
        UpstreamTimeout,
        UpstreamUnavailable,
    )
    from unimw.gateway import Answer, Gateway, Inbound
    from unimw.identity import Identity
    from unimw.limits import BudgetAlert
    from unimw.loader import ConfigError, load_policy
    from unimw.operations import Operation, Reading, StreamWatch
    from unimw.policy import Limit, Policy
    from unimw.records import UsageRecord
    from unimw.tenants import hash_key
del TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AuthenticationFailed",
    "BudgetAlert",
    "BudgetExceeded",
    "CallStream",
    "CircuitOpen",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "Gateway",
    "GatewayApp",
    "Identity",
    "Inbound",
    "InvalidRequest",
    "Limit",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "Operation",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "RateLimited",
    "Reading",
    "ServiceUnavailable",
    "StreamTooLong",
    "StreamWatch",
    "UnimwError",
    "UnimwMiddleware",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UsageRecord",
    "__version__",
    "hash_key",
    "load_policy",
]

#: The module that defines each public name (the TYPE_CHECKING imports above, as data).
_SOURCES = {
    "Answer": "unimw.gateway",
    "AuthenticationFailed": "unimw.errors",
    "BudgetAlert": "unimw.limits",
    "BudgetExceeded": "unimw.errors",
    "CallStream": "unimw.calls",
    "CircuitOpen": "unimw.errors",
    "ConfigError": "unimw.loader",
    "ContentFiltered": "unimw.errors",
    "ContextLengthExceeded": "unimw.errors",
    "Gateway": "unimw.gateway",
    "GatewayApp": "unimw.asgi",
    "Identity": "unimw.identity",
    "Inbound": "unimw.gateway",
    "InvalidRequest": "unimw.errors",
    "Limit": "unimw.policy",
    "MethodNotAllowed": "unimw.errors",
    "ModelNotFound": "unimw.errors",
    "NotFound": "unimw.errors",
    "Operation": "unimw.operations",
    "PayloadTooLarge": "unimw.errors",
    "PermissionDenied": "unimw.errors",
    "Policy": "unimw.policy",
    "RateLimited": "unimw.errors",
    "Reading": "unimw.operations",
    "ServiceUnavailable": "unimw.errors",
    "StreamTooLong": "unimw.errors",
    "StreamWatch": "unimw.operations",
    "UnimwError": "unimw.errors",
    "UnimwMiddleware": "unimw.asgi",
    "UnsupportedMediaType": "unimw.errors",
    "UpstreamError": "unimw.errors",
    "UpstreamTimeout": "unimw.errors",
    "UpstreamUnavailable": "unimw.errors",
    "UsageRecord": "unimw.records",
    "hash_key": "unimw.tenants",
    "load_policy": "unimw.loader",
}


def __getattr__(name: str) -> object:
    """Import a public name on first use, and keep it here so the next use is a plain lookup."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    _read_as_unimw()
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _read_as_unimw() -> None:
    """Public names read as unimw's own in reprs, tracebacks and docs, wherever they are defined.

    Done for every public name whose module is loaded by now: on each first
    use of a name here, and at the end of the modules that load later, with
    the first policy or gateway (the loader, limits, records). An error
    raised from inside reads as ``unimw.RateLimited`` even if the app never
    named it.
    """
    import sys

    for name, module in _SOURCES.items():
        # A module still being imported may not have defined the name yet: it is set on a later call.
        value = getattr(sys.modules.get(module), name, None)
        if value is not None:
            value.__module__ = __name__
