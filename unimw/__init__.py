"""unimw: an OpenAI-compatible LLM gateway inside your Python web app.

The names below are the public API; every other module and name is internal
and may change between releases.
"""

from unimw.asgi import GatewayApp, UnimwMiddleware
from unimw.calls import CallStream
from unimw.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UnimwError,
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

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AuthenticationFailed",
    "BudgetAlert",
    "BudgetExceeded",
    "CallStream",
    "ConfigError",
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
    "StreamWatch",
    "UnimwError",
    "UnimwMiddleware",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UsageRecord",
    "__version__",
    "hash_key",
    "load_policy",
]

# Public names read as unimw's own in reprs, tracebacks and docs, wherever they are defined.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "unimw"
del _name
