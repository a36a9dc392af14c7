"""Chunks ⇄ completion: assemble a streamed answer into one ``chat.completion``,
and replay a ``chat.completion`` as a well-formed chunk stream.

Together they let a cached answer serve either kind of request, whichever
kind stored it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from unimw.wire import JSON, chunk, usage_chunk

_COPIED = ("id", "created", "model", "system_fingerprint", "service_tier")


class Assembler:
    """Accumulates ``chat.completion.chunk`` objects into the completion they spell out."""

    def __init__(self) -> None:
        self._head: JSON = {}
        self._choices: dict[int, JSON] = {}
        self._usage: JSON | None = None

    def add(self, piece: JSON) -> None:
        if not self._head:
            self._head = {key: piece[key] for key in _COPIED if key in piece}
        if piece.get("usage"):
            self._usage = piece["usage"]
        for choice in piece.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: JSON) -> None:
        index = choice.get("index", 0)
        state = self._choices.setdefault(
            index, {"content": [], "reasoning": [], "refusal": [], "tools": {}, "finish": None}
        )
        delta = choice.get("delta") or {}
        for field, key in (("content", "content"), ("reasoning_content", "reasoning"), ("refusal", "refusal")):
            if isinstance(delta.get(field), str):
                state[key].append(delta[field])
        if isinstance(delta.get("thinking_blocks"), list):  # signed thinking, sent back by clients on the next turn
            state.setdefault("thinking", []).extend(delta["thinking_blocks"])
        for position, call in enumerate(delta.get("tool_calls") or ()):
            slot = state["tools"].setdefault(
                call.get("index", position), {"id": None, "type": "function", "name": [], "arguments": []}
            )
            slot["id"] = call.get("id") or slot["id"]
            slot["type"] = call.get("type") or slot["type"]
            function = call.get("function") or {}
            slot["name"].append(function.get("name") or "")
            slot["arguments"].append(function.get("arguments") or "")
        if choice.get("finish_reason"):
            state["finish"] = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        """Whether every choice has finished (a cut stream has not)."""
        return bool(self._choices) and all(state["finish"] for state in self._choices.values())

    def completion(self) -> JSON:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: JSON = {
                "role": "assistant",
                "content": "".join(state["content"]) if state["content"] or not state["tools"] else None,
                "refusal": "".join(state["refusal"]) or None,
            }
            if state["reasoning"]:
                message["reasoning_content"] = "".join(state["reasoning"])
            if state.get("thinking"):
                message["thinking_blocks"] = state["thinking"]
            if state["tools"]:
                message["tool_calls"] = [
                    {
                        "id": slot["id"],
                        "type": slot["type"],
                        "function": {"name": "".join(slot["name"]), "arguments": "".join(slot["arguments"])},
                    }
                    for _, slot in sorted(state["tools"].items())
                ]
            choices.append({"index": index, "message": message, "finish_reason": state["finish"], "logprobs": None})
        out: JSON = {"object": "chat.completion", **self._head, "choices": choices}
        if self._usage is not None:
            out["usage"] = self._usage
        return out


def assemble(chunks: Iterable[JSON]) -> JSON:
    assembler = Assembler()
    for piece in chunks:
        assembler.add(piece)
    return assembler.completion()


def replay(completion: JSON, *, include_usage: bool) -> Iterator[JSON]:
    """The chunks a stream of ``completion`` would have had: role, content or
    tool calls, finish, and the usage chunk when asked for."""
    id, model, created = completion.get("id", ""), completion.get("model", ""), completion.get("created", 0)
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message: JSON = choice.get("message") or {}
        yield chunk(id, model, created, {"role": "assistant", "content": ""}, index=index)
        if message.get("reasoning_content"):
            yield chunk(id, model, created, {"reasoning_content": message["reasoning_content"]}, index=index)
        if message.get("thinking_blocks"):
            yield chunk(id, model, created, {"thinking_blocks": message["thinking_blocks"]}, index=index)
        if message.get("content"):
            yield chunk(id, model, created, {"content": message["content"]}, index=index)
        if message.get("refusal"):
            yield chunk(id, model, created, {"refusal": message["refusal"]}, index=index)
        for position, call in enumerate(message.get("tool_calls") or ()):
            head: dict[str, Any] = {"index": position, "id": call.get("id"), "type": call.get("type", "function")}
            head["function"] = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
            yield chunk(id, model, created, {"tool_calls": [head]}, index=index)
        yield chunk(id, model, created, finish_reason=choice.get("finish_reason") or "stop", index=index)
    if include_usage and completion.get("usage"):
        yield usage_chunk(id, model, created, completion["usage"])
