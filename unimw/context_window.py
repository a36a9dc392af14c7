"""Context windows: what each model holds, what a request needs, and where a call goes when it does not fit.

A model's window is its policy ``context_window``, else the figure of the
built-in table below (by the vendor's model id), else unknown. What a request
needs is an estimate, made without a tokenizer (:func:`estimate_tokens`):
good enough to skip a target that clearly cannot hold the request, never a
count. Unknown windows are never checked, so an unknown model is always
tried.

Two 400s are not the end of a call: a context window overflow
(:class:`~unimw.errors.ContextLengthExceeded`) moves it to the alias's
``on_context_overflow`` targets, or else to its next targets known to hold
more; a content filter refusal (:class:`~unimw.errors.ContentFiltered`)
moves it to the alias's ``on_content_filter`` targets when it names some.
:class:`ContextWindows` makes these choices for the dispatcher.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from unimw.errors import ContentFiltered, ContextLengthExceeded, InvalidRequest, UpstreamError
from unimw.wire import JSON, dumps

if TYPE_CHECKING:
    from unimw.adapters.base import Target
    from unimw.policy import Policy
    from unimw.routing import Route

#: Context windows in tokens by the vendor's model id (prompt and answer together; for Gemini, its input token
#: limit, which is what its 400 is about). A model's ``context_window`` in policies.yaml overrides these.
WINDOWS: dict[str, int] = {
    # OpenAI, "Context window" on platform.openai.com/docs/models/<id>
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "o3": 200_000,
    "o4-mini": 200_000,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    # Anthropic, "Context window" on platform.claude.com/docs/en/about-claude/models/overview (200K models take
    # 1M only with a beta header, which unimw does not send) and platform.claude.com/docs/en/models/<model>/overview
    "claude-3-5-haiku": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-sonnet-4-0": 200_000,
    "claude-opus-4": 200_000,
    "claude-opus-4-0": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-haiku-4-5": 200_000,
    "claude-sonnet-5": 1_000_000,
    "claude-opus-5": 1_000_000,
    # Google, "Input token limit" on ai.google.dev/gemini-api/docs/models/<id>
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.0-flash-lite": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    "gemini-2.5-flash-lite": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
}

#: A snapshot's date or ``-latest``, after the model id the table knows (``gpt-4o-2024-08-06``,
#: ``claude-sonnet-4-5-20250929``, ``claude-3-5-haiku-latest``).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")

# The estimate. Text is about four characters a token in the vendors' tokenizers (fewer for code and most
# non-Latin scripts, so the estimate runs low there: a target is skipped only when it clearly cannot fit).
CHARS_PER_TOKEN = 4
#: Per message: its role and the separators around it (OpenAI counts three or four).
MESSAGE_TOKENS = 4
#: The few tokens that open the answer.
REPLY_TOKENS = 3
#: An image, whatever its size (unimw does not decode it): OpenAI's cost of a 1024x1024 image at high detail
#: (85 + 4 tiles x 170); Anthropic (width x height / 750) and Gemini (258 a 768-pixel tile) charge about as much.
IMAGE_TOKENS = 765
#: An image sent with ``detail: low`` (OpenAI's fixed cost).
LOW_DETAIL_IMAGE_TOKENS = 85


def window_of(model: str) -> int | None:
    """The built-in context window of a vendor model id (a dated snapshot as its model), or ``None``."""
    model = model.removeprefix("models/")
    window = WINDOWS.get(model)
    return window if window is not None else WINDOWS.get(_SNAPSHOT.sub("", model))


def known_windows(policy: Policy) -> dict[str, int]:
    """The context window of each public model whose window is known (its ``context_window``, else the table)."""
    windows = {}
    for name, model in policy.models.items():
        window = model.context_window or window_of(model.model)
        if window is not None:
            windows[name] = window
    return windows


def estimate_tokens(request: JSON, output_cap: int | None = None) -> int:
    """What a chat (or Responses) request needs of a context window, estimated: its prompt plus ``output_cap``.

    Text is counted at :data:`CHARS_PER_TOKEN` characters a token, plus :data:`MESSAGE_TOKENS` a message and
    :data:`REPLY_TOKENS`; an image is :data:`IMAGE_TOKENS` (:data:`LOW_DETAIL_IMAGE_TOKENS` at low detail); tool
    definitions are counted as their JSON text; audio and files are not counted.
    """
    tokens = REPLY_TOKENS + _text(request.get("instructions"))
    if "messages" in request:
        items = _list(request["messages"])
    else:  # a Responses request: the stored conversation it continues, then its input
        from unimw.operations.responses import HISTORY  # loaded with the Responses operation, not at mount

        given = request.get("input")
        items = [*_list(request.get(HISTORY)), *([{"content": given}] if isinstance(given, str) else _list(given))]
    tokens += sum(MESSAGE_TOKENS + _item(item) for item in items)
    if tools := request.get("tools"):
        tokens += len(dumps(tools)) // CHARS_PER_TOKEN
    return tokens + (output_cap or 0)


def _text(value: Any) -> int:
    return (len(value) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN if isinstance(value, str) else 0


def _item(item: Any) -> int:
    """A chat message, or a Responses input item (a message, a function call or its output)."""
    if not isinstance(item, dict):
        return 0
    content = item.get("content")
    tokens = _text(content) if isinstance(content, str) else sum(_part(p) for p in _list(content))
    for call in _list(item.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            tokens += _text(function.get("name")) + _text(function.get("arguments"))
    return tokens + _text(item.get("arguments")) + _text(item.get("output"))


def _part(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
        return LOW_DETAIL_IMAGE_TOKENS if detail == "low" else IMAGE_TOKENS
    return _text(part.get("text")) + _text(part.get("refusal"))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class ContextWindows:
    """The known context windows of a policy's models, and the choices the dispatcher makes with them."""

    def __init__(self, windows: Mapping[str, int] | None = None) -> None:
        self._windows = windows or {}

    def fits(self, target: Target, needs: int) -> bool:
        """Whether ``target`` may hold ``needs`` tokens (a target whose window is unknown may)."""
        window = self._windows.get(target.name)
        return window is None or needs <= window

    def plan(self, route: Route, targets: tuple[Target, ...], needs: int) -> tuple[tuple[Target, ...], tuple[str, ...]]:
        """The targets to try for a request of ``needs`` tokens, and the names of those skipped.

        Those of ``targets`` that can hold it; when none can, the route's
        ``on_context_overflow`` targets that can; when none of those either, a
        400 ``context_length_exceeded``, with no upstream call.
        """
        kept = tuple(t for t in targets if self.fits(t, needs))
        if len(kept) == len(targets):
            return targets, ()
        tried = targets
        if not kept:
            kept = tuple(t for t in route.on_context_overflow if self.fits(t, needs))
            tried += route.on_context_overflow
        skipped = tuple(dict.fromkeys(t.name for t in tried if not self.fits(t, needs)))
        if not kept:
            largest = max(self._windows[name] for name in skipped)
            raise InvalidRequest(
                f"This request needs about {needs} tokens (an estimate of its prompt and its max tokens), more "
                f"than any model of `{route.name}` holds (at most {largest}). Please reduce the length of the "
                "messages or the max tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        return kept, skipped

    def after(
        self,
        error: UpstreamError,
        route: Route,
        failed: Target,
        rest: tuple[Target, ...],
        tried: Collection[str],
        needs: int | None,
    ) -> tuple[Target, ...]:
        """Where a call goes after ``failed`` answered ``error``, a 400 no retry can fix; none: it is returned.

        ``rest`` are the targets that were still to be tried, ``tried`` the names of those that were.
        """
        if isinstance(error, ContextLengthExceeded):
            return self._larger(route, failed, rest, tried, needs)
        if isinstance(error, ContentFiltered):
            return tuple(
                t for t in route.on_content_filter if t.name not in tried and (needs is None or self.fits(t, needs))
            )
        return ()

    def _larger(
        self, route: Route, failed: Target, rest: tuple[Target, ...], tried: Collection[str], needs: int | None
    ) -> tuple[Target, ...]:
        """The alias's ``on_context_overflow`` targets (a window unknown is tried there), else the rest of its
        targets known to hold more than ``failed``; never the same vendor model again."""
        named = bool(route.on_context_overflow)
        limit = self._windows.get(failed.name)

        def larger(target: Target) -> bool:
            if target.name in tried or target.model == failed.model:
                return False
            window = self._windows.get(target.name)
            if window is not None and needs is not None and needs > window:
                return False
            if window is None or limit is None:
                return named  # not known to be larger: only where the alias said to go
            return window > limit

        return tuple(filter(larger, route.on_context_overflow if named else rest))
