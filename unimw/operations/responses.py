"""``POST /responses``: the Responses API, for every model of the policy.

An ``openai``-kind provider that speaks Responses (its ``responses`` option;
by default only OpenAI's own endpoint) gets the request as it came. Every
other target (Anthropic, Gemini, chat-only compatible servers, ``mock``) is
served by translating to Chat Completions and back
(:mod:`~unimw.operations.responses_chat`, :mod:`~unimw.operations.responses_events`).

Conversation state is unimw's own: with ``store`` (the default, as OpenAI's)
each answer is kept with the input items that led to it, in the response
store of the policy (``responses.store``), under the tenant's name. So
``previous_response_id`` works on every vendor, a conversation may fall
back from one vendor to another mid-way, and another tenant's id is a 404
like an unknown one. Native targets get the whole conversation too (with
``store: false``), since the earlier turns may have been another vendor's.

A translated stream that fails mid-answer is continued at the chat level
(:mod:`unimw.continuation`): the events go on in the same response, and the
stored response holds the whole text. A native stream keeps its failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, cast

from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OUTPUT_TYPE,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_STREAM,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_REQUEST_TOP_P,
    GenAiOperationNameValues,
    GenAiOutputTypeValues,
)

from unimw.errors import InvalidRequest, NotFound, ServiceUnavailable, UnimwError, UpstreamUnavailable
from unimw.operations.base import CONTROL_FIELD, Operation, Reading
from unimw.operations.chat_streams import replay
from unimw.operations.responses_chat import from_chat, to_chat
from unimw.operations.responses_events import ResponseEvents, encode, failure_code
from unimw.operations.responses_validation import validate_responses
from unimw.stores.base import StoreUnavailable
from unimw.usage import Usage, tokens_in_bytes, utf8_size
from unimw.wire import JSON, SKIPPED_EVENTS, aclose, dumps, loads, skipped_only

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from unimw.adapters.base import Adapter, Target
    from unimw.calls import Call
    from unimw.policy import Policy
    from unimw.stores.base import CacheStore
    from unimw.tenants import Caller

#: Delta events whose text an output estimate counts (the others are bounded but not estimated, as before).
_ESTIMATED: Final = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})
#: unimw's own fields on a Responses request while it is in the pipeline; no upstream sees them.
#: The conversation before this turn (resolved from previous_response_id: part of the cache key)...
HISTORY: Final = "unimw_history"
#: ...and this call's response id and creation time (not part of it).
IDENTITY: Final = "unimw_response"
_PRIVATE: Final = frozenset({HISTORY, IDENTITY})
_OUTPUT_TYPES: Final = {"text": GenAiOutputTypeValues.TEXT.value, "json_object": GenAiOutputTypeValues.JSON.value,
                        "json_schema": GenAiOutputTypeValues.JSON.value}  # fmt: skip


class Responses(Operation):
    """The Responses API, natively where the target speaks it, else through Chat Completions."""

    # The GenAI conventions name the operation of the Responses API as they name Chat Completions'.
    name: ClassVar[str] = GenAiOperationNameValues.CHAT.value
    path: ClassVar[str] = "/responses"
    not_in_cache_key: ClassVar[frozenset[str]] = frozenset(
        {"model", "stream", "stream_options", "user", "safety_identifier", "metadata", "store", "service_tier",
         "previous_response_id", "prompt_cache_key", IDENTITY, CONTROL_FIELD}
    )  # fmt: skip
    stream_end: ClassVar[bytes] = b""  # the terminal event ends a Responses stream: no [DONE]

    def __init__(self, store: CacheStore | None = None, ttl: float = 30 * 86400.0) -> None:
        self._store = store
        self._ttl = ttl

    def bind(self, policy: Policy) -> Responses:
        from unimw.stores import cache_store

        settings = policy.responses
        store = cache_store(
            settings.store, max_entries=settings.max_entries, max_bytes=settings.max_bytes, clock=time.time
        )
        return Responses(store, settings.ttl)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()

    # ── the request ──────────────────────────────────────────────────────────

    def validate(self, body: Any) -> JSON:
        return validate_responses(body)

    def is_stream(self, request: JSON) -> bool:
        return request.get("stream") is True

    async def prepare(self, call: Call) -> None:
        request = call.request
        history: list[JSON] = []
        if (previous := request.get("previous_response_id")) is not None:
            stored = await self._load(call.caller, previous)
            if stored is None:
                raise InvalidRequest(
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = [*stored["input"], *stored["response"]["output"]]
        identity = {"id": "resp_" + call.request_id.removeprefix("req_"), "created_at": int(time.time())}
        call.request = {**request, HISTORY: history, IDENTITY: identity}

    def prompt_tokens(self, request: JSON) -> int:
        return len(dumps([request.get("instructions"), request.get(HISTORY), request.get("input")])) // 4 + 8

    def output_cap(self, request: JSON) -> int | None:
        value = request.get("max_output_tokens")
        return value if isinstance(value, int) else None

    def with_output_cap(self, request: JSON, cap: int) -> JSON:
        current = self.output_cap(request)
        return request if current is not None and current <= cap else {**request, "max_output_tokens": cap}

    # ── asking the adapters ──────────────────────────────────────────────────

    async def complete(self, adapter: Adapter, request: JSON, target: Target) -> JSON:
        if (native := _native(adapter)) is not None:
            return await native.respond(_native_request(request), target)
        completion = await adapter.complete(to_chat(_public(request), request[HISTORY]), target)
        return from_chat(completion, _public(request), **_ids(request))

    async def stream(self, adapter: Adapter, request: JSON, target: Target) -> AsyncIterator[JSON]:
        chat = self.chat_stream_request(adapter, request)
        if chat is None:
            return await cast(SpeaksResponses, adapter).stream_responses(_native_request(request), target)
        return self.from_chat_stream(await adapter.stream(chat, target), request)

    def chat_stream_request(self, adapter: Adapter, request: JSON) -> JSON | None:
        """The chat request of a translated target; None for a native one, whose stream is not continued:
        its events carry the vendor's own ids and items, which another attempt's cannot carry on (and
        OpenAI answers a new turn after a prefilled one)."""
        if _native(adapter) is not None:
            return None
        return to_chat({**_public(request), "stream": True}, request[HISTORY])

    def from_chat_stream(self, chunks: AsyncIterator[JSON], request: JSON) -> AsyncIterator[JSON]:
        return _translated(chunks, ResponseEvents(_public(request), **_ids(request)))

    # ── reading answers ──────────────────────────────────────────────────────

    def read(self, answer: JSON) -> Reading:
        return Reading(
            usage_of(answer.get("usage")),
            answer.get("id") if isinstance(answer.get("id"), str) else None,
            answer.get("model") if isinstance(answer.get("model"), str) else None,
            (str(answer.get("status")),),
        )

    def output_text(self, answer: JSON) -> str:
        return dumps(answer.get("output") or []).decode()

    def watch(self, request: JSON, *, assemble: bool) -> ResponsesWatch:
        return ResponsesWatch()

    def cacheable(self, answer: JSON) -> bool:
        return answer.get("status") == "completed"

    def from_cache(self, answer: JSON, request: JSON) -> JSON:
        """The stored Response under this call's id and time, chained to this call's previous response."""
        identity = request[IDENTITY]
        old_suffix, new_suffix = str(answer.get("id", "")).removeprefix("resp_"), identity["id"].removeprefix("resp_")
        output = [
            {**item, "id": item["id"].replace(old_suffix, new_suffix)}
            if old_suffix and isinstance(item.get("id"), str)
            else item
            for item in answer.get("output") or ()
        ]
        return {
            **answer,
            "id": identity["id"],
            "created_at": identity["created_at"],
            "previous_response_id": request.get("previous_response_id"),
            "output": output,
        }

    def reports_usage(self, event: JSON) -> bool:
        return event.get("type") == "response.completed"

    def replay(self, answer: JSON) -> Iterator[JSON]:
        events = ResponseEvents(
            answer, response_id=answer["id"], created_at=answer.get("created_at") or 0,
            previous_response_id=answer.get("previous_response_id"),
        )  # fmt: skip
        for chunk in replay(_as_completion(answer), include_usage=True):
            yield from events.feed(chunk)
        yield from events.finish()

    # ── state ────────────────────────────────────────────────────────────────

    async def remember(self, call: Call) -> None:
        request, answer = call.request, call.answer
        if self._store is None or answer is None or request.get("store") is False:
            return
        record = {"input": [*request.get(HISTORY, ()), *_items(request.get("input"))], "response": answer}
        await self._store.set(_key(call.caller, answer["id"]), dumps(record), self._ttl)

    async def resource(self, method: str, path: str, caller: Caller) -> JSON:
        response_id, _, rest = path.partition("/")
        if not response_id or rest not in ("", "input_items") or (rest and method != "GET"):
            raise NotFound(f"Invalid URL ({method} {self.path}/{path})")
        if method == "DELETE" and not rest:
            try:
                deleted = self._store is not None and await self._store.delete(_key(caller, response_id))
            except StoreUnavailable as exc:
                raise _store_down() from exc
            if not deleted:
                raise _missing(response_id)
            return {"id": response_id, "object": "response.deleted", "deleted": True}
        if method != "GET":
            raise NotFound(f"Invalid URL ({method} {self.path}/{path})")
        stored = await self._load(caller, response_id)
        if stored is None:
            raise _missing(response_id)
        if not rest:
            return dict(stored["response"])
        items = [_with_id(item, response_id, i) for i, item in enumerate(stored["input"])]
        items.reverse()  # newest first, as OpenAI lists them by default
        return {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }

    async def _load(self, caller: Caller, response_id: str) -> JSON | None:
        if self._store is None or not isinstance(response_id, str):
            return None
        try:
            raw = await self._store.get(_key(caller, response_id))
        except StoreUnavailable as exc:
            raise _store_down() from exc
        return loads(raw) if raw is not None else None

    # ── the wire, for doors ──────────────────────────────────────────────────

    def encode_event(self, item: JSON) -> bytes:
        return encode(item)

    def error_event(self, error: UnimwError, watch: Any) -> bytes:
        if isinstance(watch, ResponsesWatch):
            return encode(watch.failed(error))
        return encode({"type": "error", "code": error.code, "message": error.message, "param": error.param,
                       "sequence_number": 0})  # fmt: skip

    # ── what its spans say ───────────────────────────────────────────────────

    def request_attributes(self, request: JSON) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        for field, name in (("temperature", GEN_AI_REQUEST_TEMPERATURE), ("top_p", GEN_AI_REQUEST_TOP_P),
                            ("max_output_tokens", GEN_AI_REQUEST_MAX_TOKENS)):  # fmt: skip
            value = request.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
        if request.get("stream") is True:
            attributes[GEN_AI_REQUEST_STREAM] = True
        text_format = (request.get("text") or {}).get("format") if isinstance(request.get("text"), dict) else None
        if isinstance(text_format, dict) and text_format.get("type") in _OUTPUT_TYPES:
            attributes[GEN_AI_OUTPUT_TYPE] = _OUTPUT_TYPES[text_format["type"]]
        if isinstance(previous := request.get("previous_response_id"), str):
            attributes[GEN_AI_CONVERSATION_ID] = previous
        return attributes


class ResponsesWatch:
    """Follows Responses stream events: usage from the terminal event, the output's size, the final response.

    The deltas are counted, not kept: the final response, whole, comes in the terminal event.
    """

    __slots__ = ("_final", "_other_bytes", "_produced_bytes", "_response", "_sequence", "_skipped")

    def __init__(self) -> None:
        self._produced_bytes = 0  # answer text and function arguments: what an estimate counts
        self._other_bytes = 0  # every other text delta (reasoning, refusals, tool inputs): bounded, not estimated
        self._final: JSON | None = None
        self._response: JSON | None = None  #: the latest response object an event carried
        self._sequence = 0
        self._skipped = 0

    def see(self, event: JSON) -> JSON | None:
        if SKIPPED_EVENTS in event:  # unimw's own count of upstream events left out: not for the client
            self._skipped += event.pop(SKIPPED_EVENTS)
            if not event:
                return None
        kind = event.get("type")
        if isinstance(sequence := event.get("sequence_number"), int):
            self._sequence = sequence + 1
        if isinstance(response := event.get("response"), dict):
            self._response = response
            if kind in ("response.completed", "response.incomplete"):
                self._final = response
        if isinstance(delta := event.get("delta"), str) and kind != "response.audio.delta":  # audio: not text
            if kind in _ESTIMATED:
                self._produced_bytes += utf8_size(delta)
            else:
                self._other_bytes += utf8_size(delta)
        return event

    def failed(self, error: UnimwError) -> JSON:
        """The event that ends a stream broken after it began: ``response.failed`` once a response was
        announced, else an ``error`` event."""
        if self._response is None:
            return {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                    "sequence_number": self._sequence}  # fmt: skip
        failed = {
            **self._response,
            "status": "failed",
            "error": {"code": failure_code(error), "message": error.message},
        }
        return {"type": "response.failed", "sequence_number": self._sequence, "response": failed}

    def reading(self) -> Reading:
        response = self._final or self._response or {}
        status = response.get("status")
        head = (_text(response.get("id")), _text(response.get("model")))
        finish = (str(status),) if self._final else ()
        return Reading(usage_of((self._final or {}).get("usage")), *head, finish, self._skipped)

    def produced_tokens(self) -> int:
        return tokens_in_bytes(self._produced_bytes)

    def output_bytes(self) -> int:
        return self._produced_bytes + self._other_bytes

    def answer(self) -> JSON | None:
        return self._final


def usage_of(usage: Any) -> Usage | None:
    """A Responses ``usage`` object as unimw's :class:`Usage`; None when there is none."""
    if not isinstance(usage, dict):
        return None
    inputs, outputs = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    inputs = inputs if isinstance(inputs, dict) else {}
    outputs = outputs if isinstance(outputs, dict) else {}
    return Usage(
        _int(usage.get("input_tokens")),
        _int(usage.get("output_tokens")),
        _int(inputs.get("cached_tokens")),
        _int(outputs.get("reasoning_tokens")),
        _int(inputs.get("cache_write_tokens")),
    )


async def _translated(chunks: AsyncIterator[JSON], events: ResponseEvents) -> AsyncIterator[JSON]:
    """The Responses events of a chat chunk stream; a cut stream raises (the door then sends ``response.failed``).

    The adapter's count of upstream events it skipped rides on the first event a chunk makes, or alone.
    """
    try:
        async for chunk in chunks:
            skipped = chunk.pop(SKIPPED_EVENTS, 0)
            made = events.feed(chunk) if chunk else []
            if skipped:
                if made:
                    made[0][SKIPPED_EVENTS] = skipped
                else:
                    yield skipped_only(skipped)
            for event in made:
                yield event
    finally:
        await aclose(chunks)
    closing = events.finish()
    if closing and closing[-1]["type"] == "response.failed":
        raise UpstreamUnavailable("The upstream closed the stream before it was complete.")
    for event in closing:
        yield event


def _as_completion(response: JSON) -> JSON:
    """A stored Response as the chat completion it would have been, to replay it as Responses events."""
    message: JSON = {"role": "assistant", "content": None, "refusal": None}
    calls: list[JSON] = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    message["content"] = (message["content"] or "") + str(part.get("text") or "")
                elif part.get("type") == "refusal":
                    message["refusal"] = part.get("refusal")
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})  # fmt: skip
        elif item.get("type") == "reasoning":
            summary = "".join(str(s.get("text") or "") for s in item.get("summary") or ())
            message["reasoning_content"] = summary
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls else "stop"
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        finish = "content_filter" if reason == "content_filter" else "length"
    usage = response.get("usage") or {}
    return {
        "id": response.get("id", ""),
        "object": "chat.completion",
        "created": response.get("created_at") or 0,
        "model": response.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": _int(usage.get("input_tokens")),
            "completion_tokens": _int(usage.get("output_tokens")),
            "total_tokens": _int(usage.get("total_tokens")),
            "prompt_tokens_details": {
                "cached_tokens": _int((usage.get("input_tokens_details") or {}).get("cached_tokens"))
            },
            "completion_tokens_details": {
                "reasoning_tokens": _int((usage.get("output_tokens_details") or {}).get("reasoning_tokens"))
            },
        },
    }


class SpeaksResponses(Protocol):
    """An adapter whose server takes Responses API requests as they are (the openai kind's, when it does)."""

    speaks_responses: bool

    async def respond(self, request: JSON, target: Target) -> JSON: ...

    async def stream_responses(self, request: JSON, target: Target) -> AsyncIterator[JSON]: ...


def _native(adapter: Adapter) -> SpeaksResponses | None:
    """``adapter`` if its server speaks Responses (a capability only some adapters have), else None."""
    return cast(SpeaksResponses, adapter) if getattr(adapter, "speaks_responses", False) else None


def _native_request(request: JSON) -> JSON:
    """The request for a target that speaks Responses: the whole conversation inline, nothing stored there."""
    public = _public(request)
    public.pop("previous_response_id", None)
    public["input"] = [*request[HISTORY], *_items(request.get("input"))]
    public["store"] = False
    return public


def _public(request: JSON) -> JSON:
    return {k: v for k, v in request.items() if k not in _PRIVATE}


def _ids(request: JSON) -> dict[str, Any]:
    identity = request[IDENTITY]
    return {
        "response_id": identity["id"],
        "created_at": identity["created_at"],
        "previous_response_id": request.get("previous_response_id"),
    }


def _items(value: Any) -> list[JSON]:
    """The request's ``input`` as items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return [item for item in value or () if isinstance(item, dict)]


def _with_id(item: JSON, response_id: str, index: int) -> JSON:
    return item if "id" in item else {**item, "id": f"item_{response_id.removeprefix('resp_')}_{index}"}


def _key(caller: Caller, response_id: str) -> str:
    return f"unimw:responses:{caller.tenant or '-'}:{response_id}"


def _store_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The response store is unreachable, so stored responses cannot be read. Please try again later.",
        code="responses_unavailable",
    )


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


RESPONSES: Final = Responses()
