"""``POST /chat/completions``: the Chat Completions operation.

Every adapter speaks it (it is the lingua franca the vendor adapters
translate to and from), so dispatch is the adapter's own ``complete`` and
``stream``. A stream is always asked upstream with its usage chunk, so a
streamed call is charged what it used; the chunk is dropped on the way out
when the caller did not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final

from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_OUTPUT_TYPE,
    GEN_AI_REQUEST_CHOICE_COUNT,
    GEN_AI_REQUEST_FREQUENCY_PENALTY,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_PRESENCE_PENALTY,
    GEN_AI_REQUEST_SEED,
    GEN_AI_REQUEST_STOP_SEQUENCES,
    GEN_AI_REQUEST_STREAM,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_REQUEST_TOP_K,
    GEN_AI_REQUEST_TOP_P,
    GEN_AI_TOOL_DEFINITIONS,
    GenAiOperationNameValues,
    GenAiOutputTypeValues,
)

from unimw.operations.base import CONTROL_FIELD, Operation, Reading
from unimw.operations.chat_content import input_messages, output_messages, tool_definitions
from unimw.operations.chat_streams import Assembler, replay
from unimw.operations.chat_validation import validate_chat
from unimw.usage import Usage, estimate_prompt_tokens, tokens_in_bytes, utf8_size
from unimw.wire import JSON, SKIPPED_EVENTS

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from unimw.adapters.base import Adapter, Target

_NUMBER_PARAMS: Final = (
    ("temperature", GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", GEN_AI_REQUEST_TOP_P),
    ("top_k", GEN_AI_REQUEST_TOP_K),
    ("frequency_penalty", GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", GEN_AI_REQUEST_PRESENCE_PENALTY),
    ("seed", GEN_AI_REQUEST_SEED),
)
_OUTPUT_TYPES: Final = {
    "text": GenAiOutputTypeValues.TEXT.value,
    "json_object": GenAiOutputTypeValues.JSON.value,
    "json_schema": GenAiOutputTypeValues.JSON.value,
}


class ChatCompletions(Operation):
    """Chat Completions, as OpenAI defines it; the operation every adapter implements."""

    name: ClassVar[str] = GenAiOperationNameValues.CHAT.value
    path: ClassVar[str] = "/chat/completions"
    not_in_cache_key: ClassVar[frozenset[str]] = frozenset(
        {
            "model",  # replaced by the route's fingerprint
            "stream",
            "stream_options",
            "user",
            "safety_identifier",
            "metadata",
            "store",
            "service_tier",
            "prompt_cache_key",
            "prompt_cache_retention",
            CONTROL_FIELD,
        }
    )

    def validate(self, body: Any) -> JSON:
        return validate_chat(body)

    def is_stream(self, request: JSON) -> bool:
        return request.get("stream") is True

    def prompt_tokens(self, request: JSON) -> int:
        return estimate_prompt_tokens(request)

    def output_cap(self, request: JSON) -> int | None:
        value = request.get("max_completion_tokens")
        if value is None:
            value = request.get("max_tokens")
        return value if isinstance(value, int) else None

    def worst_output_tokens(self, request: JSON, default_cap: int) -> int:
        return (self.output_cap(request) or default_cap) * int(request.get("n") or 1)  # the cap is per choice

    def with_output_cap(self, request: JSON, cap: int) -> JSON:
        current = self.output_cap(request)
        if current is not None and current <= cap:
            return request
        # Lower the field the caller used; a request with neither gets the current one.
        legacy = "max_tokens" in request and "max_completion_tokens" not in request
        return {**request, "max_tokens" if legacy else "max_completion_tokens": cap}

    async def complete(self, adapter: Adapter, request: JSON, target: Target) -> JSON:
        return await adapter.complete(request, target)

    def stream_request(self, request: JSON) -> JSON:
        if (request.get("stream_options") or {}).get("include_usage"):
            return request
        return {**request, "stream_options": {"include_usage": True}}

    async def stream(self, adapter: Adapter, request: JSON, target: Target) -> AsyncIterator[JSON]:
        return await adapter.stream(request, target)

    def chat_stream_request(self, adapter: Adapter, request: JSON) -> JSON | None:
        return request

    def wants_usage(self, request: JSON) -> bool:
        return bool((request.get("stream_options") or {}).get("include_usage"))

    def read(self, answer: JSON) -> Reading:
        choices = answer.get("choices")
        return Reading(
            Usage.from_openai(answer.get("usage")),
            _str(answer.get("id")),
            _str(answer.get("model")),
            tuple(str(c.get("finish_reason")) for c in choices if isinstance(c, dict))
            if isinstance(choices, list)
            else (),
        )

    def output_text(self, answer: JSON) -> str:
        parts: list[str] = []
        choices = answer.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            parts.append(str(message.get("content") or ""))
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.append(str(function.get("name") or "") + str(function.get("arguments") or ""))
        return "".join(parts)

    def watch(self, request: JSON, *, assemble: bool) -> ChatStreamWatch:
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        return ChatStreamWatch(wants_usage=wants_usage, assemble=assemble)

    def cacheable(self, answer: JSON) -> bool:
        """Answers worth keeping: finished, and neither refused nor filtered."""
        choices = answer.get("choices") or ()
        return bool(choices) and all(
            c.get("finish_reason") not in (None, "content_filter") and not (c.get("message") or {}).get("refusal")
            for c in choices
        )

    def replay(self, answer: JSON) -> Iterator[JSON]:
        return replay(answer, include_usage=True)

    def reports_usage(self, event: JSON) -> bool:
        return bool(event.get("usage"))

    def request_attributes(self, request: JSON) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        for field, name in _NUMBER_PARAMS:
            if (value := request.get(field)) is not None and _number(value):
                attributes[name] = value
        cap = request.get("max_completion_tokens", request.get("max_tokens"))
        if cap is not None and _number(cap):
            attributes[GEN_AI_REQUEST_MAX_TOKENS] = cap
        stop = request.get("stop")
        if isinstance(stop, str):
            attributes[GEN_AI_REQUEST_STOP_SEQUENCES] = (stop,)
        elif isinstance(stop, list) and stop:
            attributes[GEN_AI_REQUEST_STOP_SEQUENCES] = tuple(str(s) for s in stop)
        if (n := request.get("n")) is not None and _number(n) and n != 1:
            attributes[GEN_AI_REQUEST_CHOICE_COUNT] = n
        if request.get("stream") is True:
            attributes[GEN_AI_REQUEST_STREAM] = True
        response_format = request.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in _OUTPUT_TYPES:
            attributes[GEN_AI_OUTPUT_TYPE] = _OUTPUT_TYPES[response_format["type"]]
        return attributes

    def content(self, request: JSON, answer: JSON | None) -> dict[str, AttributeValue]:
        content: dict[str, AttributeValue] = {GEN_AI_INPUT_MESSAGES: input_messages(request)}
        if (tools := tool_definitions(request)) is not None:
            content[GEN_AI_TOOL_DEFINITIONS] = tools
        if answer is not None:
            content[GEN_AI_OUTPUT_MESSAGES] = output_messages(answer)
        return content


class ChatStreamWatch:
    """Follows ``chat.completion.chunk`` objects: usage, output seen, finish reasons, the assembled answer.

    The output is counted, not kept (only the assembler, when the answer is
    to be cached or captured, keeps it): the estimate needs its size alone.
    """

    __slots__ = (
        "_assembler",
        "_finish_reasons",
        "_other_bytes",
        "_produced_bytes",
        "_reading_head",
        "_skipped",
        "_usage",
        "_wants_usage",
    )

    def __init__(self, *, wants_usage: bool, assemble: bool) -> None:
        self._wants_usage = wants_usage
        self._assembler = Assembler() if assemble else None
        self._produced_bytes = 0  # the answer's text and tool calls: what an estimate counts
        self._other_bytes = 0  # reasoning and refusals: bounded with the rest, not estimated
        self._finish_reasons: list[str] = []
        self._usage: Usage | None = None
        self._reading_head: tuple[str | None, str | None] | None = None
        self._skipped = 0

    def see(self, chunk: JSON) -> JSON | None:
        if SKIPPED_EVENTS in chunk:  # the adapter's count of unparseable events it left out: not for the client
            self._skipped += chunk.pop(SKIPPED_EVENTS)
            if "choices" not in chunk:
                return None  # the count alone, as the stream ended (:func:`~unimw.wire.skipped_only`)
        if self._assembler is not None:
            self._assembler.add(chunk)
        if self._reading_head is None:
            self._reading_head = (_str(chunk.get("id")), _str(chunk.get("model")))
        # Most chunks carry no usage (or ``null``): no call for those (callgrind: 1,200 instructions a chunk).
        if (raw := chunk.get("usage")) is not None and (usage := Usage.from_openai(raw)) is not None:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._produced_bytes += _size(content)
            for tool_call in delta.get("tool_calls") or ():
                function = tool_call.get("function") or {}
                self._produced_bytes += _size(function.get("name")) + _size(function.get("arguments"))
            if reasoning := delta.get("reasoning_content"):
                self._other_bytes += _size(reasoning)
            if refusal := delta.get("refusal"):
                self._other_bytes += _size(refusal)
            if reason := choice.get("finish_reason"):
                self._finish_reasons.append(str(reason))
        if not self._wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return None  # the usage chunk unimw asked for on the caller's behalf
            del chunk["usage"]
        return chunk

    def reading(self) -> Reading:
        response_id, model = self._reading_head or (None, None)
        return Reading(self._usage, response_id, model, tuple(self._finish_reasons), self._skipped)

    def produced_tokens(self) -> int:
        return tokens_in_bytes(self._produced_bytes)

    def output_bytes(self) -> int:
        return self._produced_bytes + self._other_bytes

    def answer(self) -> JSON | None:
        if self._assembler is None or not self._assembler.complete:
            return None
        return self._assembler.completion()


def _size(text: Any) -> int:
    return utf8_size(text) if isinstance(text, str) else 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


CHAT: Final = ChatCompletions()
