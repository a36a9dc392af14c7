"""What an operation gives the pipeline: everything that differs between kinds of call.

The pipeline (:class:`unimw.gateway.Gateway`) is written once: identify the
tenant, validate, resolve the route, authorize, look up the cache, reserve,
dispatch, then finish (settle, store, record, trace). An :class:`Operation`
supplies only what one kind of call does differently at those steps: how
its body is checked, which fields key the cache, how its answer and its
chunks are read for usage, how a stream is assembled and replayed, how
adapters are asked for it, and what its span says. Adding one is a module
like :mod:`unimw.operations.chat` and a route; no step changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from unimw.errors import NotFound, UnimwError
from unimw.operations.fields import check_body
from unimw.usage import Usage
from unimw.wire import JSON, SSE_DONE, dumps, sse_event

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from unimw.adapters.base import Adapter, Target
    from unimw.calls import Call
    from unimw.policy import Policy
    from unimw.tenants import Caller

#: unimw's own per-request field (cache directives): read by the cache step, never sent upstream.
CONTROL_FIELD = "unimw_cache"


@dataclass(frozen=True, slots=True)
class Reading:
    """What an answer (or the chunks of a stream so far) says about the call."""

    usage: Usage | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    skipped_events: int = 0  #: upstream stream events that could not be parsed and were left out


class StreamWatch(Protocol):
    """Follows the chunks of one streamed call on their way to the client."""

    def see(self, chunk: JSON) -> JSON | None:
        """Note what ``chunk`` says; the chunk to send the client, or None if it is not for the client."""
        ...

    def reading(self) -> Reading:
        """What the chunks seen so far say (the usage chunk's counts, once it came)."""
        ...

    def produced_tokens(self) -> int:
        """The output seen so far, in tokens estimated from its size, for a stream whose vendor never said.

        Counted as the chunks pass, not kept: a stream may be long (or, from
        a broken upstream, endless), and its text is the client's, not ours.
        """
        ...

    def output_bytes(self) -> int:
        """UTF-8 bytes of all the text generated so far (answer, tool arguments, reasoning, refusals): what
        ``server.max_stream_output_bytes`` bounds."""
        ...

    def answer(self) -> JSON | None:
        """The whole answer the chunks spell out, if they finished it (None when cut short or not assembled)."""
        ...


class Operation:
    """One kind of call. Subclasses set the class attributes and override what they use.

    The defaults describe an operation that is answered whole (no stream),
    is keyed in the cache by every field but ``model`` and unimw's own, and
    whose usage is estimated from the size of the request and the answer.
    """

    #: ``gen_ai.operation.name``, and the first word of its spans' names.
    name: ClassVar[str]
    #: Where the doors serve it, below their prefix (``/chat/completions``).
    path: ClassVar[str]
    #: Request fields that cannot change the answer, so do not split the cache.
    not_in_cache_key: ClassVar[frozenset[str]] = frozenset({"model", "user", "metadata", CONTROL_FIELD})
    #: What a door sends after the last event of a stream (``data: [DONE]`` for the OpenAI chat wire).
    stream_end: ClassVar[bytes] = SSE_DONE

    def bind(self, policy: Policy) -> Operation:
        """This operation for one gateway's policy (an operation with state, a store say, builds it here)."""
        return self

    async def aclose(self) -> None:
        """Release what :meth:`bind` built."""

    def validate(self, body: Any) -> JSON:
        """``body`` if it is a well-formed request (an object, bounded in depth, naming a ``model``), else
        :class:`InvalidRequest`."""
        return check_body(body)

    def is_stream(self, request: JSON) -> bool:
        """Whether the caller asked for the answer as a stream."""
        return False

    def serves(self, adapter: type[Adapter]) -> bool:
        """Whether models behind ``adapter`` can answer this operation (listed on ``/v1/models``)."""
        return True

    async def prepare(self, call: Call) -> None:
        """Complete ``call.request`` once the caller and route are known, before the cache and the limits see it
        (e.g. a conversation's earlier turns, from a store)."""

    async def remember(self, call: Call) -> None:
        """Keep what a finished call leaves behind (a finishing step: isolated, after the answer went out)."""

    async def resource(self, method: str, path: str, caller: Caller) -> JSON:
        """Answer ``method`` on ``{operation path}/{path}`` (a stored object, say) for ``caller``."""
        raise NotFound(f"Invalid URL ({method} {self.path}/{path})")

    # ── what a call may cost, before it is made ──────────────────────────────

    def prompt_tokens(self, request: JSON) -> int:
        """A generous estimate of the request's input tokens (about four bytes of JSON a token)."""
        return len(dumps(request)) // 4 + 8

    def output_cap(self, request: JSON) -> int | None:
        """The request's own cap on output tokens, when it sets one."""
        return None

    def worst_output_tokens(self, request: JSON, default_cap: int) -> int:
        """The most output tokens the call can produce, ``default_cap`` standing in for a missing cap."""
        return self.output_cap(request) or default_cap

    def with_output_cap(self, request: JSON, cap: int) -> JSON:
        """``request`` with its output cap lowered to ``cap`` when it has none or a larger one (a copy)."""
        return request

    # ── asking the adapters ──────────────────────────────────────────────────

    async def complete(self, adapter: Adapter, request: JSON, target: Target) -> JSON:
        """The whole answer from ``target``."""
        raise NotImplementedError

    def stream_request(self, request: JSON) -> JSON:
        """The request as sent upstream for a stream (e.g. asking for the usage chunk)."""
        return request

    async def stream(self, adapter: Adapter, request: JSON, target: Target) -> AsyncIterator[JSON]:
        """The answer from ``target`` as chunks, once the upstream accepted the request."""
        raise NotImplementedError

    # ── streams continued mid-answer (:mod:`unimw.continuation`) ─────────────

    def chat_stream_request(self, adapter: Adapter, request: JSON) -> JSON | None:
        """The Chat Completions request whose chunks make a stream of ``request`` on ``adapter``, when that
        stream may be continued elsewhere should it fail mid-answer; None when it cannot be (the default).

        Continuing works on chat chunks alone: the text delivered is read from them, and a continuation
        is a chat request with that text as a prefill, whatever the operation.
        """
        return None

    def from_chat_stream(self, chunks: AsyncIterator[JSON], request: JSON) -> AsyncIterator[JSON]:
        """The caller's stream of ``request`` made of the chunks of :meth:`chat_stream_request`'s request (the same
        stream :meth:`stream` gives, for a target :meth:`chat_stream_request` names a request for)."""
        return chunks

    def wants_usage(self, request: JSON) -> bool:
        """Whether the caller's stream ends with its usage (a stream cut only after its answer finished is
        whole when it does not)."""
        return True

    # ── reading answers ──────────────────────────────────────────────────────

    def read(self, answer: JSON) -> Reading:
        """What a whole answer says: its usage (None when the vendor left it out), ids, finish reasons."""
        return Reading(response_id=_str(answer.get("id")), response_model=_str(answer.get("model")))

    def output_text(self, answer: JSON) -> str:
        """The output of an answer, to estimate its tokens when the vendor did not count them."""
        return dumps(answer).decode()

    def watch(self, request: JSON, *, assemble: bool) -> StreamWatch:
        """A watcher for the chunks of one streamed call (``assemble``: keep the whole answer)."""
        raise NotImplementedError

    def cacheable(self, answer: JSON) -> bool:
        """Whether the answer may be stored and given to the next identical request."""
        return True

    def from_cache(self, answer: JSON, request: JSON) -> JSON:
        """A cached answer as this call's own (an answer that carries its call's identity gets this one's)."""
        return answer

    def replay(self, answer: JSON) -> Iterator[JSON]:
        """The chunks a stream of ``answer`` would have had (usage included), for a cached answer."""
        raise NotImplementedError

    def reports_usage(self, event: JSON) -> bool:
        """Whether ``event`` is the one of a stream that tells the caller its usage (and so may carry its cost)."""
        return False

    def with_cost(self, event: JSON, cost_usd: float) -> JSON:
        """The usage event with the call's cost, as the ``x_unimw.cost_usd`` extension field (SDKs ignore it)."""
        return {**event, "x_unimw": {"cost_usd": cost_usd}}

    # ── the wire, for doors ──────────────────────────────────────────────────

    def encode_event(self, item: JSON) -> bytes:
        """One stream item as a server-sent event."""
        return sse_event(item)

    def error_event(self, error: UnimwError, watch: StreamWatch) -> bytes:
        """The event that ends a stream which failed after it began (never a clean end)."""
        return sse_event(error.to_dict())

    # ── what its spans say ───────────────────────────────────────────────────

    def request_attributes(self, request: JSON) -> dict[str, AttributeValue]:
        """Span attributes from the request's parameters (``gen_ai.request.*``)."""
        return {}

    def content(self, request: JSON, answer: JSON | None) -> dict[str, AttributeValue]:
        """The prompt and answer as span attributes, for opt-in content capture."""
        return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
