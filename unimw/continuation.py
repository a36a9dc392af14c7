"""Continuing a stream whose upstream failed after its first chunk reached the caller.

Before the first chunk, a failed stream falls back like any call (the
dispatcher). After it, the caller already holds part of an answer: ending
the stream with an error event throws that away, and starting over would
repeat it. So the text delivered so far is sent back as the start of the
assistant's turn (a *prefill*) to a target that continues such a turn (the
same target first, then the route's others, tried by the dispatcher as
usual), and that stream's chunks carry on the caller's: same ``id``,
``created`` and ``model``, no second role delta, one usage chunk at the end adding up
what every attempt produced.

It gives up, and the caller gets the original error, when the answer
cannot be continued faithfully: tool calls under way, several choices, no
target that accepts a prefill, the resumes allowed used up, a failure a
new attempt cannot fix (a 4xx), or more text delivered than
:data:`MAX_PREFILL` (past it the text is no longer kept, and a prefill of
part of the answer would have the model repeat the rest). A resume that
fails never masks the original error. When nothing but the role delta had been delivered, there
is nothing to prefill and any target may answer afresh.

It works on chat chunks alone. A chat stream is continued as it is; a
``/v1/responses`` stream served by translation is continued below its
translation (the chat chunks feeding
:class:`~unimw.operations.responses_events.ResponseEvents`), so the caller
sees one response whose text goes on in the same output item. Operations
say which of their streams are made of chat chunks
(:meth:`~unimw.operations.base.Operation.chat_stream_request`): a native Responses
stream is not, and keeps its failure.

Whether a target accepts a prefill is in the policy (``models.*.prefill``);
unset, its wire decides: Anthropic's Messages API continues a trailing
assistant turn (documented as prefilling), while OpenAI's Chat Completions
and Gemini answer a new turn after it, which would repeat the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from unimw.errors import UpstreamError
from unimw.usage import Usage, estimate_text_tokens, tokens_in_bytes, utf8_size
from unimw.wire import JSON, aclose

if TYPE_CHECKING:
    from unimw.adapters.base import Target
    from unimw.policy import Policy

#: Characters of delivered text kept for a prefill: some 250k tokens, twice the longest answer models allow
#: (128k tokens), so no real answer passes it; a stream that does (an upstream that would not stop) is no
#: longer continued, and keeps no more of its text.
MAX_PREFILL = 1_000_000

#: Whether a kind's wire continues a trailing assistant turn, when the model does not say.
PREFILL_BY_KIND: dict[str, bool] = {"anthropic": True, "openai": False, "gemini": False, "mock": False}


def prefills(policy: Policy) -> tuple[dict[str, bool], dict[str, JSON]]:
    """By model: whether it accepts a prefill (its own ``prefill``, else its kind's default), and the
    fields its continuation requests add (``prefill_params``). Made once per policy, not per stream."""
    accepts = {
        name: model.prefill
        if model.prefill is not None
        else PREFILL_BY_KIND.get(policy.providers[model.provider].kind, False)
        for name, model in policy.models.items()
    }
    return accepts, {name: model.prefill_params for name, model in policy.models.items() if model.prefill_params}


#: ``(the request for each target, targets to try in order) -> (the target that answered, its chunks)``.
Resume = Callable[[Callable[["Target"], JSON], tuple["Target", ...]], Awaitable[tuple["Target", AsyncIterator[JSON]]]]


@dataclass(frozen=True, slots=True)
class Resumed:
    """One switch: the attempt that failed, what it had produced (estimated), why, and where it went on."""

    target: Target
    usage: Usage
    error: UpstreamError
    to: Target


def can_continue(request: JSON) -> bool:
    """Whether a stream of ``request`` could be continued at all: one choice, and no logprobs to keep whole."""
    return request.get("n") in (None, 1) and not request.get("logprobs")


def continuation_request(request: JSON, delivered: str, params: JSON | None = None) -> JSON:
    """``request`` asked again with ``delivered`` as the start of the answer, and what remains of its cap.

    Trailing whitespace is left out of the prefill: Anthropic refuses a final
    assistant turn that ends with it, and the continuation supplies it again.
    """
    prefill = delivered.rstrip()
    continued: JSON = {**request, **(params or {})}
    if prefill:
        continued["messages"] = [*request["messages"], {"role": "assistant", "content": prefill}]
    spent = estimate_text_tokens(delivered)
    for field in ("max_completion_tokens", "max_tokens"):
        if isinstance(cap := request.get(field), int):
            continued[field] = max(1, cap - spent)
    return continued


def added(a: Usage, b: Usage) -> Usage:
    """Two attempts' usage, added up."""
    return Usage(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(Usage)})


def without(total: Usage, part: Usage) -> Usage:
    """What is left of ``total`` once ``part`` is taken out (never below zero)."""
    return Usage(**{f.name: max(0, getattr(total, f.name) - getattr(part, f.name)) for f in fields(Usage)})


def usage_json(usage: Usage) -> JSON:
    """``usage`` as an OpenAI ``CompletionUsage``."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            **({"cache_write_1h_tokens": usage.cache_write_1h_tokens} if usage.cache_write_1h_tokens else {}),
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ContinuedStream:
    """A chat chunk stream that continues itself elsewhere when its upstream fails mid-answer (the caller
    gets its chunks as they are for chat, translated into Responses events for ``/v1/responses``).

    ``targets`` are the route's targets in the order they were offered;
    ``prefill`` names (by model) those that accept a prefill and ``params``
    what their continuation requests add (:func:`prefills`);
    ``prompt_tokens`` estimates what a failed attempt read, only once one
    has failed; ``on_resume`` hears of each switch (the gateway records it
    on the call and its span).

    A failure after every choice finished ends the stream cleanly when
    nothing the caller asked for is missing: the usage chunk, if the caller
    asked for one (a stream is complete without ``[DONE]`` then).
    """

    __slots__ = (
        "_chunks",
        "_continued",
        "_delivered",
        "_earlier",
        "_finished",
        "_head",
        "_kept",
        "_left",
        "_on_cut",
        "_on_resume",
        "_params",
        "_prefill",
        "_prompt_tokens",
        "_request",
        "_resume",
        "_since",
        "_skip",
        "_target",
        "_targets",
        "_tools",
        "_usage_seen",
        "_wants_usage",
    )

    def __init__(
        self,
        chunks: AsyncIterator[JSON],
        target: Target,
        request: JSON,
        *,
        wants_usage: bool,
        targets: tuple[Target, ...],
        prefill: Mapping[str, bool],
        params: Mapping[str, JSON],
        resumes: int,
        resume: Resume,
        prompt_tokens: Callable[[JSON], int],
        on_resume: Callable[[Resumed], None],
        on_cut: Callable[[Target, UpstreamError], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._target = target
        self._request = request
        self._wants_usage = wants_usage
        self._targets = targets
        self._prefill = prefill
        self._params = params
        self._left = resumes
        self._resume = resume
        self._prompt_tokens = prompt_tokens
        self._on_resume = on_resume
        self._on_cut = on_cut
        #: The first chunk's id, created and model, kept by every later one: one answer, under one name.
        self._head: tuple[Any, Any, Any] | None = None
        self._delivered: list[str] | None = []  # the text the caller has, over every attempt; None past MAX_PREFILL
        self._kept = 0  # its characters
        self._since = 0  # UTF-8 bytes of it the current attempt produced
        self._tools = False
        self._finished = False
        self._usage_seen = False
        self._continued = False  # the current attempt continues an earlier one
        self._skip = ""  # whitespace the prefill left out, which the continuation may repeat
        self._earlier = Usage()  # what the failed attempts produced, estimated

    def __aiter__(self) -> ContinuedStream:
        return self

    async def __anext__(self) -> JSON:
        while True:
            try:
                chunk = await anext(self._chunks)
            except UpstreamError as error:
                if self._finished and (self._usage_seen or not self._wants_usage):
                    raise StopAsyncIteration from None  # whole: only the end of the stream was lost
                await self._continue(error)
                continue
            if self._continued:
                rejoined = self._rejoined(chunk)
                if rejoined is None:
                    continue
                chunk = rejoined
            self._see(chunk)
            return chunk

    async def aclose(self) -> None:
        await aclose(self._chunks)

    def _see(self, chunk: JSON) -> None:
        if self._head is None:
            self._head = (chunk.get("id"), chunk.get("created"), chunk.get("model"))
        if chunk.get("usage"):
            self._usage_seen = True
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._keep(content)
            if delta.get("tool_calls"):
                self._tools = True
            if choice.get("finish_reason"):
                self._finished = True

    def _keep(self, content: str) -> None:
        self._since += utf8_size(content)
        if self._delivered is None:
            return
        self._kept += len(content)
        if self._kept > MAX_PREFILL:
            self._delivered = None  # too long to prefill: given up, and its text let go
        else:
            self._delivered.append(content)

    def _rejoined(self, chunk: JSON) -> JSON | None:
        """A continuation's chunk as part of the caller's stream; None for one that adds nothing."""
        assert self._head is not None
        chunk["id"], chunk["created"], model = self._head
        if model is not None:
            chunk["model"] = model
        choices = chunk.get("choices") or ()
        useful = not choices or bool(chunk.get("usage"))
        for choice in choices:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                delta.pop("role", None)
                content = delta.get("content")
                if self._skip and isinstance(content, str) and content:
                    if content.startswith(self._skip):
                        delta["content"] = content = content[len(self._skip) :]
                    self._skip = ""
                useful = useful or bool(content) or bool(delta.get("tool_calls"))
            useful = useful or bool(choice.get("finish_reason"))
        if isinstance(usage := chunk.get("usage"), dict):
            chunk["usage"] = usage_json(added(self._earlier, Usage.from_openai(usage) or Usage()))
        return chunk if useful else None

    async def _continue(self, error: UpstreamError) -> None:
        """Carry on elsewhere after ``error``, or raise it when the answer cannot be continued faithfully."""
        if self._finished or self._tools or self._left <= 0 or not error.retryable:
            raise error
        if not can_continue(self._request) or self._delivered is None:
            raise error
        delivered = "".join(self._delivered)
        needs_prefill = bool(delivered.strip())
        failed = self._target
        order = (failed, *(t for t in self._targets if t != failed))
        candidates = tuple(t for t in order if not needs_prefill or self._prefill.get(t.name, False))
        if not candidates:
            raise error
        self._left -= 1
        spent = Usage(self._prompt_tokens(self._request), tokens_in_bytes(self._since))
        await aclose(self._chunks)

        def request_for(target: Target) -> JSON:
            return continuation_request(
                self._request, delivered, self._params.get(target.name) if needs_prefill else None
            )

        if self._on_cut is not None:
            self._on_cut(failed, error)  # before the continuation's attempts, which come after it
        try:
            self._target, self._chunks = await self._resume(request_for, candidates)
        except UpstreamError:
            raise error from None  # the original failure is the caller's to see, not the resume's
        self._earlier = added(self._earlier, spent)
        self._since = 0
        self._continued = True
        self._skip = delivered[len(delivered.rstrip()) :]
        self._on_resume(Resumed(failed, spent, error, self._target))
