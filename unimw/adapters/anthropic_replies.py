"""Messages API replies in OpenAI terms: stop reasons, usage, refusals, and stream events as chunks.

:func:`~unimw.adapters.anthropic.from_response` and
:func:`~unimw.adapters.anthropic.from_events` are built on these; the
:class:`Stream` state machine turns each named SSE event into the
``chat.completion.chunk`` objects it means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unimw.adapters.anthropic_models import JSON_TOOL
from unimw.adapters.openai_shapes import check_delta, check_usage
from unimw.wire import JSON, chunk, now, usage

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def refusal(details: JSON | None) -> str:
    """The refusal message for ``stop_details``."""
    explanation = (details or {}).get("explanation")
    return str(explanation) if explanation else "The model declined to answer."


def finish_reason(stop_reason: str | None, tool_calls: bool) -> str:
    """The OpenAI ``finish_reason``; a forced structured-output tool is a plain stop."""
    if stop_reason == "tool_use" and not tool_calls:
        return "stop"
    return _FINISH.get(stop_reason or "end_turn", "stop")


def to_usage(raw: JSON) -> JSON:
    """OpenAI usage: ``prompt_tokens`` counts all input, cache reads and writes included.

    Reads are ``cached_tokens`` and writes ``cache_write_tokens``, as OpenAI names them; the writes made to
    live an hour, which cost more, are also ``cache_write_1h_tokens`` (an extension, present when non-zero).
    """
    cached = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    prompt: JSON = {"cached_tokens": cached, "cache_write_tokens": written}
    if hour := (raw.get("cache_creation") or {}).get("ephemeral_1h_input_tokens"):
        prompt["cache_write_1h_tokens"] = hour
    details: JSON = {"prompt_tokens_details": prompt}
    thinking = (raw.get("output_tokens_details") or {}).get("thinking_tokens")
    if thinking is not None:
        details["completion_tokens_details"] = {"reasoning_tokens": thinking}
    # The vendor's counts, checked as the OpenAI wire's are: a count of another shape is a 502, not a 500 later.
    counted: JSON = usage((raw.get("input_tokens") or 0) + cached + written, raw.get("output_tokens") or 0, **details)
    check_usage(counted)
    return counted


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    kind: str  #: ``text``, ``tool``, ``json``, ``thinking``, or ``other``
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    sent: bool = False


@dataclass(slots=True)
class Stream:
    """What a stream has said so far, and the chunks each event becomes."""

    id: str = ""
    model: str = ""
    created: int = field(default_factory=now)
    usage: JSON = field(default_factory=dict)
    blocks: dict[int, _Block] = field(default_factory=dict)
    tool_calls: int = 0
    signed: int = 0
    started: bool = False  #: message_start came: the id, the model and the input usage are known
    announced: bool = False
    finished: bool = False  #: message_delta came: the stop reason and the output count are known
    stopped: bool = False
    lost: bool = False  #: a tool call's arguments came for a block whose start was skipped

    def chunk(self, delta: JSON | None = None, finish_reason: str | None = None) -> JSON:
        # The delta carries the vendor's values as they came: checked, so a text that is not text is a 502.
        return chunk(self.id, self.model, self.created, delta and check_delta(delta), finish_reason=finish_reason)

    def on_message_start(self, event: JSON) -> list[JSON]:
        message = event.get("message") or {}
        self.id, self.model = message.get("id") or "", message.get("model") or ""
        self.usage.update(message.get("usage") or {})
        self.started = True
        return []

    def on_content_block_start(self, event: JSON) -> list[JSON]:
        block, index = event.get("content_block") or {}, event.get("index", -1)
        kind = block.get("type")
        if kind == "tool_use" and block.get("name") == JSON_TOOL:
            self.blocks[index] = _Block("json")
            return []
        if kind == "tool_use":
            state = self.blocks[index] = _Block("tool", tool_index=self.tool_calls)
            self.tool_calls += 1
            function = {"name": block.get("name"), "arguments": ""}
            head = {"index": state.tool_index, "id": block.get("id"), "type": "function", "function": function}
            return [self.chunk({"tool_calls": [head]})]
        if kind == "redacted_thinking":
            self.blocks[index] = _Block("thinking", data=block.get("data", ""))
            return []
        self.blocks[index] = _Block(kind if kind in ("text", "thinking") else "other")
        return [self.chunk({"content": block["text"]})] if kind == "text" and block.get("text") else []

    def on_content_block_delta(self, event: JSON) -> list[JSON]:
        index, delta = event.get("index", -1), event.get("delta") or {}
        block, kind = self.blocks.get(index), delta.get("type")
        if block is None:
            # Its content_block_start was skipped (unparseable): text and thinking need nothing from it, but a
            # tool call's id and name (or that it was the structured answer) were in it.
            if kind == "input_json_delta":
                self.lost = True
            if kind not in ("text_delta", "thinking_delta"):
                return []
            block = self.blocks[index] = _Block("text" if kind == "text_delta" else "thinking")
        if kind == "text_delta" and delta.get("text"):
            return [self.chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            block.thinking.append(delta["thinking"])
            return [self.chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta":
            block.signature += delta.get("signature", "")
        elif kind == "input_json_delta" and (piece := delta.get("partial_json")):
            block.sent = True
            if block.kind == "json":
                return [self.chunk({"content": piece})]
            if block.kind == "tool":
                return [self.chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": piece}}]})]
        return []

    def on_content_block_stop(self, event: JSON) -> list[JSON]:
        block = self.blocks.get(event.get("index", -1))
        if block is None:
            return []
        if block.kind == "json" and not block.sent:
            return [self.chunk({"content": "{}"})]
        if block.kind == "tool" and not block.sent:  # a tool without arguments still gets a JSON object
            return [self.chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": "{}"}}]})]
        if block.kind == "thinking":  # the signed block, for a client to send back in a tool loop
            signed: JSON = {"index": self.signed, "type": "thinking"}
            if block.data:
                signed.update(type="redacted_thinking", data=block.data)
            else:
                signed.update(thinking="".join(block.thinking), signature=block.signature)
            self.signed += 1
            return [self.chunk({"thinking_blocks": [signed]})]
        return []

    def on_message_delta(self, event: JSON) -> list[JSON]:
        self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        self.finished = True
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        delta: JSON = {}
        if stop_reason == "refusal":
            delta["refusal"] = refusal((event.get("delta") or {}).get("stop_details"))
        return [self.chunk(delta, finish_reason(stop_reason, self.tool_calls > 0))]

    def on_message_stop(self, event: JSON) -> list[JSON]:
        self.stopped = True
        return []
