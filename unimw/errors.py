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
    ├── UnsupportedMediaType      415     invalid_request_error / unsupported_media_type
    ├── RateLimited               429     requests / rate_limit_exceeded (or concurrency_limit_exceeded)
    ├── BudgetExceeded            429     insufficient_quota / insufficient_quota
    ├── ServiceUnavailable        503     service_unavailable_error
    └── UpstreamError             any     whatever the vendor said, translated
        ├── UpstreamUnavailable   502     upstream_error / upstream_unreachable
        ├── UpstreamTimeout       504     upstream_error / upstream_timeout
        ├── CircuitOpen           503     upstream_error / circuit_open
        ├── StreamTooLong         502     upstream_error / stream_output_too_large
        ├── ContextLengthExceeded 400     invalid_request_error / context_length_exceeded
        └── ContentFiltered       400     the vendor's type / content_filter (or the vendor's code)

Lower-layer exceptions (HTTP client, JSON, pydantic) are mapped to these at
one boundary each, with ``raise ... from exc``; nothing else reaches a door.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal


class UnimwError(Exception):
    """Base of every error unimw raises; renders as the OpenAI error envelope.

    ``status`` (the HTTP status) and ``type`` are the class's, except for
    :class:`UpstreamError`, where they are the vendor's for each instance.
    """

    status: int = 500
    type: str = "server_error"
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

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI envelope: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
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


class UnsupportedMediaType(UnimwError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(UnimwError):
    """A rate limit refused the call; ``type`` names what ran out, as OpenAI's own 429s do."""

    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, exhausted: Literal["requests", "tokens"] = "requests", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.type = exhausted


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
        self.status = status
        self.type = type
        self.retryable = is_retryable_status(status) if retryable is None else retryable
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, or broke the connection."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502, code="upstream_unreachable", retryable=True)


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the provider's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=504, code="upstream_timeout", retryable=True)


class CircuitOpen(UpstreamError):
    """Every target of the call has its circuit breaker open (:mod:`unimw.breaker`): none was tried."""

    def __init__(self, targets: list[str], retry_after: int) -> None:
        super().__init__(
            f"Every upstream for this model is failing and is left alone for now ({', '.join(targets)}); "
            f"retry in {retry_after} s.",
            status=503,
            code="circuit_open",
            retryable=False,
            retry_after=retry_after,
            headers={"retry-after": str(retry_after)},
        )


class StreamTooLong(UpstreamError):
    """A stream carried more output than ``server.max_stream_output_bytes``: an upstream that would not end.

    Not retried or continued: another attempt at the same request would be as long.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The answer passed the limit of {limit} bytes of output for one stream "
            "(server.max_stream_output_bytes); the upstream was stopped there.",
            status=502,
            code="stream_output_too_large",
            retryable=False,
        )


class ContextLengthExceeded(UpstreamError):
    """The upstream refused the request (a 400) as longer than its model's context window.

    Never worth another attempt on the same model; a model with a larger window
    may take it, so dispatch moves on (an alias's ``on_context_overflow``).
    """

    default_code = "context_length_exceeded"


class ContentFiltered(UpstreamError):
    """The upstream's content filter refused the request, or the answer it was making (a 400).

    Never retried; dispatch sends it to an alias's ``on_content_filter`` targets
    when it names some, and returns it otherwise.
    """

    default_code = "content_filter"


#: Error codes with a known, bounded meaning: unimw's own, those the adapters map vendor errors to, and
#: OpenAI's documented ones. A metric attribute may carry only these: any other vendor code is free text
#: (unbounded, and possibly an echo of what the vendor was sent), so metrics show its HTTP status instead.
KNOWN_CODES: frozenset[str] = frozenset(
    {
        "invalid_api_key", "model_not_allowed", "model_not_found", "not_found", "method_not_allowed",
        "request_too_large", "rate_limit_exceeded", "insufficient_quota", "limits_unavailable",
        "upstream_unreachable", "upstream_timeout", "bad_upstream_response", "invalid_value", "invalid_type",
        "missing_required_parameter", "unsupported_value", "unsupported_parameter", "context_length_exceeded",
        "content_filter", "server_error", "server_is_overloaded", "service_unavailable", "deadline_exceeded",
        "content_policy_violation", "failed_precondition", "permission_denied", "invalid_prompt",
        "string_above_max_length", "empty_array", "array_above_max_length",
        "unknown_parameter", "unsupported_model", "previous_response_not_found", "responses_unavailable", "csrf_failed",
        "tenant_lookup_unavailable", "plan_not_found", "byok_required", "invalid_tags", "request_timeout",
        "concurrency_limit_exceeded", "circuit_open", "unsupported_media_type", "stream_output_too_large",
    }
)  # fmt: skip


def is_retryable_status(status: int) -> bool:
    """Statuses worth another attempt: timeouts, conflicts, rate limits, 5xx."""
    return status in (408, 409, 429) or status >= 500
