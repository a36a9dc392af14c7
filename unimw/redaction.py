"""Provider secrets kept out of every upstream error, before it reaches anyone.

A vendor may echo the credentials it was sent in any field of an error (a
401's ``message``, but also ``param`` or ``code``, or an error event in the
middle of a stream). Every :class:`~unimw.errors.UpstreamError` leaving an
adapter passes through :meth:`Redactor.error` once, in the dispatcher, which
is the only caller of adapters: clients, logs, spans and metrics all see the
error after that point, never before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from unimw.errors import UpstreamError

if TYPE_CHECKING:
    from unimw.policy import Provider

MASK: Final = "***"
#: Shorter values are not worth masking (and would mask ordinary words): real keys are far longer.
MIN_SECRET: Final = 8
#: Provider headers whose values are credentials (``x-api-key``, ``Authorization``, ``x-goog-api-key``, ...).
_SENSITIVE_HEADER_WORDS: Final = ("auth", "key", "token", "secret", "password", "cookie", "credential")


def provider_secrets(provider: Provider) -> tuple[str, ...]:
    """Every credential the policy gives ``provider``: its API key and its credential headers' values."""
    found: set[str] = set()
    if provider.api_key is not None:
        found.add(provider.api_key.get_secret_value())
    for name, value in provider.headers.items():
        if any(word in name.lower() for word in _SENSITIVE_HEADER_WORDS):
            found.add(value)
            found.add(value.partition(" ")[2])  # the token of "Bearer <token>"
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True))


class Redactor:
    """Blanks one provider's secrets out of text and out of every field of an error."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets  # longest first, so a key containing another is masked whole

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)

    def error(self, error: UpstreamError) -> UpstreamError:
        """``error`` with every field it carries to a client or to telemetry redacted (in place)."""
        if not self._secrets:
            return error
        error.message = self.text(error.message)
        error.args = (error.message,)
        error.param = self.optional(error.param)
        error.code = self.optional(error.code)
        error.type = self.text(error.type)
        error.headers = {name: self.text(value) for name, value in error.headers.items()}
        return error
