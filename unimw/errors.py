"""Errors, each one the OpenAI error it becomes on the wire.

::

    UnimwError                    status  type / code
    ├── InvalidRequest            400     invalid_request_error
    ├── AuthenticationFailed      401     invalid_request_error / invalid_api_key
    ├── PermissionDenied          403     invalid_request_error / model_not_allowed
    ├── ModelNotFound             404     invalid_request_error / model_not_found
    ├── NotFound                  404     invalid_request_error / not_found
    ├── MethodNotAllowed          405     invalid_request_error / method_not_allowed
    ├── PayloadTooLarge           413     invalid_request_error / request_too_large
    ├── RateLimited               429     requests / rate_limit_exceeded
    ├── BudgetExceeded            429     insufficient_quota / insufficient_quota
    ├── ServiceUnavailable        503     service_unavailable_error
    └── UpstreamError             any     whatever the vendor said, translated
        ├── UpstreamUnavailable   502     upstream_error / upstream_unreachable
        └── UpstreamTimeout       504     upstream_error / upstream_timeout

Lower-layer exceptions (HTTP client, JSON, pydantic) are mapped to these at
one boundary each, with ``raise ... from exc``; nothing else reaches a door.
"""

from __future__ import annotations

from typing import Any, ClassVar


class UnimwError(Exception):
    """Base of every error unimw raises; renders as the OpenAI error envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def error_type(self) -> str:
        return self.type

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI envelope: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(UnimwError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(UnimwError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(UnimwError):
    status = 403
    type = "invalid_request_error"
    default_code = "model_not_allowed"


class ModelNotFound(UnimwError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class NotFound(UnimwError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(UnimwError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(UnimwError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(UnimwError):
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(UnimwError):
    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class ServiceUnavailable(UnimwError):
    status = 503
    type = "service_unavailable_error"


class UpstreamError(UnimwError):
    """An error answered by (or about) an upstream vendor.

    ``status`` and ``type`` are per instance here, since they come from the
    vendor. ``retryable`` tells dispatch whether another attempt or the next
    target of an alias may succeed where this one failed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str = "upstream_error",
        param: str | None = None,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self._status = status
        self._type = type
        self.retryable = is_retryable_status(status) if retryable is None else retryable
        self.retry_after = retry_after

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def error_type(self) -> str:
        return self._type


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, or broke the connection."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502, code="upstream_unreachable", retryable=True)


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the provider's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=504, code="upstream_timeout", retryable=True)


def is_retryable_status(status: int) -> bool:
    """Statuses worth another attempt: timeouts, conflicts, rate limits, 5xx."""
    return status in (408, 409, 429) or status >= 500
