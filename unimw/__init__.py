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
from unimw.limits import BudgetAlert
from unimw.loader import ConfigError, load_policy
from unimw.operations import Operation, Reading, StreamWatch
from unimw.policy import Policy
from unimw.records import UsageRecord

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
    "Inbound",
    "InvalidRequest",
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
    "load_policy",
]

# Public names read as unimw's own in reprs, tracebacks and docs, wherever they are defined.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "unimw"
del _name
