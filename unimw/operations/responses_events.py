"""Chat chunks → Responses stream events, for a Responses call served by a chat adapter.

:class:`ResponseEvents` reads the ``chat.completion.chunk`` objects of the
first choice as they come and says the same thing as Responses events:
``response.created`` and ``response.in_progress``, then for each output
item its ``output_item.added``, deltas and ``.done`` events, then the
terminal ``response.completed`` or ``response.incomplete``.

The terminal event's ``response`` is :func:`~unimw.operations.responses_chat.from_chat`
of the completion the chunks spell out, and each item's ``.done`` events
carry that response's item, so a streamed and a whole answer cannot
differ. Items are numbered as they begin; a reasoning item is closed when
the answer begins (as OpenAI does), the others when the chunks end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from unimw.errors import UnimwError
from unimw.operations.chat_streams import Assembler
from unimw.operations.responses_chat import (
    from_chat,
    function_call_item,
    message_item,
    output_text,
    reasoning_item,
    shell,
)
from unimw.wire import JSON, dumps

#: ``response.failed``'s ``error.code`` for an error of each HTTP status; ``server_error`` for the rest.
_FAILED_CODES: Final = {429: "rate_limit_exceeded"}


@dataclass
class _Item:
    """An output item the events have begun: its place, and the parts of it opened so far."""

    kind: str  # "reasoning", "message" or "function_call" (its key: the tool call's index)
    output_index: int
    item: JSON
    parts: list[str] = field(default_factory=list)  # message: "output_text" / "refusal", in the order opened
    texts: dict[str, list[str]] = field(default_factory=dict)
    done: bool = False


def failure_code(error: UnimwError | None) -> str:
    """The ``ResponseErrorCode`` a failed response carries for ``error`` (the spec allows only its own codes)."""
    return _FAILED_CODES.get(error.status, "server_error") if error is not None else "server_error"


class ResponseEvents:
    """Translates one stream of chat chunks into Responses stream events (pure: no I/O, work per chunk)."""

    def __init__(
        self,
        request: JSON,
        *,
        response_id: str,
        created_at: int,
        previous_response_id: str | None = None,
    ) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._previous_response_id = previous_response_id
        self._assembler = Assembler()
        self._thinking: list[JSON] = []
        self._sequence = 0
        self._started = False
        self._items: list[_Item] = []
        self._reasoning: _Item | None = None
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._final: JSON | None = None

    # ── the API ──────────────────────────────────────────────────────────────

    def feed(self, chunk: JSON) -> list[JSON]:
        """The events one chat chunk makes (none once the stream was finished or failed)."""
        if self._final is not None:
            return []
        events = self._start()
        self._assembler.add(chunk)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                events.extend(self._delta(_object(choice.get("delta"))))
        return events

    def finish(self) -> list[JSON]:
        """The closing events once the chunks ended: every item done, then the terminal event.

        A stream that ended before its finish reason came was cut short, and
        fails (``response.failed``) rather than pretend to be complete.
        """
        if self._final is not None:
            return []
        if not self._assembler.complete:
            return self.failed(None)
        events = self._start()
        completion = self._assembler.completion()
        if self._thinking:  # signed thinking, which the chunk assembler does not keep
            completion["choices"][0]["message"]["thinking_blocks"] = list(self._thinking)
        final = from_chat(
            completion,
            self._request,
            response_id=self._response_id,
            created_at=self._created_at,
            previous_response_id=self._previous_response_id,
        )
        ordered: list[tuple[int, JSON]] = []
        for item in final["output"]:
            begun = self._begun(item)
            if begun is None:  # said only by the finished answer (an empty message): begin it now
                events.extend(self._add(item))
                begun = self._items[-1]
                begun.parts = [p["type"] for p in item.get("content") or ()]
                events.extend(self._part_added(begun, kind) for kind in begun.parts)
            ordered.append((begun.output_index, item))
        for index, item in sorted(ordered, key=lambda pair: pair[0]):
            begun = self._items[index]
            if not begun.done:
                events.extend(self._close(begun, item))
        final["output"] = [item for _, item in sorted(ordered, key=lambda pair: pair[0])]
        self._final = final
        terminal = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        events.append(self._event(terminal, response=final))
        return events

    def failed(self, error: UnimwError | None) -> list[JSON]:
        """The ``response.failed`` event for a stream that broke off (``error``: why; None for a cut stream)."""
        if self._final is not None:
            return []
        events = self._start()
        code = failure_code(error)
        message = error.message if error is not None else "The model's answer ended before it was finished."
        final = self._shell()
        final.update(status="failed", error={"code": code, "message": message})
        self._final = final
        events.append(self._event("response.failed", response=final))
        return events

    def response(self) -> JSON | None:
        """The final ``Response`` (completed, incomplete or failed), once the stream ended."""
        return self._final

    # ── chunks → events ──────────────────────────────────────────────────────

    def _start(self) -> list[JSON]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self._shell()),
            self._event("response.in_progress", response=self._shell()),
        ]

    def _delta(self, delta: JSON) -> list[JSON]:
        events: list[JSON] = []
        if isinstance(blocks := delta.get("thinking_blocks"), list):
            self._thinking.extend(b for b in blocks if isinstance(b, dict))
        if isinstance(text := delta.get("reasoning_content"), str) and text:
            events.extend(self._reasoning_delta(text))
        for field_name, part in (("content", "output_text"), ("refusal", "refusal")):
            if isinstance(text := delta.get(field_name), str) and text:
                events.extend(self._message_delta(part, text))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            if isinstance(call, dict):
                events.extend(self._call_delta(call, position))
        return events

    def _reasoning_delta(self, text: str) -> list[JSON]:
        events: list[JSON] = []
        item = self._reasoning
        if item is None:
            events.extend(self._add(reasoning_item(self._response_id, "", ())))
            item = self._reasoning = self._items[-1]
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event("response.reasoning_summary_part.added", **self._at(item), summary_index=0, part=part)
            )
        if item.done:
            return events  # reasoning after the answer began: kept for the final response only
        item.texts.setdefault("summary_text", []).append(text)
        events.append(
            self._event("response.reasoning_summary_text.delta", **self._at(item), summary_index=0, delta=text)
        )
        return events

    def _message_delta(self, part: str, text: str) -> list[JSON]:
        events = self._answer_begins()
        item = self._message
        if item is None:
            events.extend(self._add(message_item(self._response_id, [], "in_progress")))
            item = self._message = self._items[-1]
        if part not in item.parts:
            item.parts.append(part)
            events.append(self._part_added(item, part))
        item.texts.setdefault(part, []).append(text)
        kind = "response.output_text.delta" if part == "output_text" else "response.refusal.delta"
        extra: JSON = {"logprobs": []} if part == "output_text" else {}
        events.append(self._event(kind, **self._at(item), content_index=item.parts.index(part), delta=text, **extra))
        return events

    def _call_delta(self, call: JSON, position: int) -> list[JSON]:
        events = self._answer_begins()
        slot = call.get("index", position)
        slot = slot if isinstance(slot, int) else position
        function = _object(call.get("function"))
        item = self._calls.get(slot)
        if item is None:
            n = len(self._calls)
            name = str(function.get("name") or "")
            events.extend(self._add(function_call_item(self._response_id, n, call.get("id"), name, "", "in_progress")))
            item = self._calls[slot] = self._items[-1]
        if isinstance(arguments := function.get("arguments"), str) and arguments:
            events.append(self._event("response.function_call_arguments.delta", **self._at(item), delta=arguments))
        return events

    def _answer_begins(self) -> list[JSON]:
        """Close the reasoning item, if open, as the answer begins."""
        item = self._reasoning
        if item is None or item.done:
            return []
        text = "".join(item.texts.get("summary_text", ()))
        return self._close(item, reasoning_item(self._response_id, text, self._thinking))

    # ── items ────────────────────────────────────────────────────────────────

    def _add(self, item: JSON) -> list[JSON]:
        begun = _Item(item["type"], len(self._items), item)
        self._items.append(begun)
        return [self._event("response.output_item.added", output_index=begun.output_index, item=item)]

    def _begun(self, item: JSON) -> _Item | None:
        """The begun item the finished answer's ``item`` is (matched by id)."""
        return next((b for b in self._items if b.item["id"] == item["id"]), None)

    def _part_added(self, begun: _Item, part: str) -> JSON:
        empty = output_text("") if part == "output_text" else {"type": "refusal", "refusal": ""}
        return self._event(
            "response.content_part.added", **self._at(begun), content_index=begun.parts.index(part), part=empty
        )

    def _close(self, begun: _Item, item: JSON) -> list[JSON]:
        """The ``.done`` events of a begun item, saying what ``item`` (its finished form) says."""
        begun.done = True
        events: list[JSON] = []
        at = self._at(begun)
        if item["type"] == "reasoning":
            text = "".join(s["text"] for s in item["summary"])
            events.append(self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=text))
            part = {"type": "summary_text", "text": text}
            events.append(self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part))
        elif item["type"] == "message":
            for part in item["content"]:
                if part["type"] not in begun.parts:  # said only by the finished answer
                    begun.parts.append(part["type"])
                    events.append(self._part_added(begun, part["type"]))
                index = begun.parts.index(part["type"])
                if part["type"] == "output_text":
                    events.append(
                        self._event(
                            "response.output_text.done", **at, content_index=index, text=part["text"], logprobs=[]
                        )
                    )
                else:
                    events.append(
                        self._event("response.refusal.done", **at, content_index=index, refusal=part["refusal"])
                    )
                events.append(self._event("response.content_part.done", **at, content_index=index, part=part))
        else:
            done = self._event(
                "response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"]
            )
            events.append(done)
        events.append(self._event("response.output_item.done", output_index=begun.output_index, item=item))
        return events

    def _at(self, begun: _Item) -> JSON:
        return {"item_id": begun.item["id"], "output_index": begun.output_index}

    def _shell(self) -> JSON:
        return shell(
            self._request,
            response_id=self._response_id,
            created_at=self._created_at,
            previous_response_id=self._previous_response_id,
        )

    def _event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event


def encode(event: JSON) -> bytes:
    """One event as a named server-sent event (Responses streams end without ``[DONE]``)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


def _object(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}
