"""unimw: an OpenAI-compatible LLM gateway inside your Python web app."""

from unimw.asgi import GatewayApp, UnimwMiddleware
from unimw.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    InvalidRequest,
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
from unimw.gateway import Gateway
from unimw.loader import ConfigError, load_policy
from unimw.policy import Policy

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "ConfigError",
    "Gateway",
    "GatewayApp",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "RateLimited",
    "ServiceUnavailable",
    "UnimwError",
    "UnimwMiddleware",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "load_policy",
]
