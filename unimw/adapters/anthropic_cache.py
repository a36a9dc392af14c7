"""Prompt-cache breakpoints: the caller's ``cache_control`` markers, checked, and those a model's policy adds.

OpenAI's chat format has no breakpoints of its own that the Messages API
could take (``prompt_cache_breakpoint`` is reported as left out), but
OpenAI-compatible clients that front Claude send Anthropic's marker in it: on
a content part, on a message (meaning its last block), on a tool, and on the
request itself (the API's automatic caching). Each is checked, copied and
put on the block it marks, as it was sent.

A model's ``prompt_cache`` policy adds markers on the last tool, the last
system block and the last block of a trailing user turn, each only where the
caller marked nothing, in the order the policy lists them and while fewer
than the API's :data:`MAX_BREAKPOINTS` are set. More than that from the
caller is a 400 here, before any upstream call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unimw.errors import InvalidRequest
from unimw.policy import PromptCache
from unimw.wire import JSON

#: Blocks with ``cache_control`` the Messages API takes in one request, the top-level marker included.
MAX_BREAKPOINTS = 4
_TTLS = ("5m", "1h")
#: Block types that can carry a marker (thinking blocks cannot).
_MARKABLE = frozenset({"text", "image", "document", "tool_use", "tool_result"})


def marker(value: Any, where: str) -> JSON:
    """A copy of the caller's ``cache_control`` found at ``where``; a 400 unless the Messages API takes it."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{where}': expected an object.", param=where, code="invalid_value")
    for key in value:
        if key not in ("type", "ttl"):
            raise InvalidRequest(
                f"Unknown parameter: '{where}.{key}'.", param=f"{where}.{key}", code="unknown_parameter"
            )
    if value.get("type") != "ephemeral":
        raise InvalidRequest(
            f"Invalid value for '{where}.type': {value.get('type')!r}. Supported values are: 'ephemeral'.",
            param=f"{where}.type",
            code="invalid_value",
        )
    if "ttl" in value and value["ttl"] not in _TTLS:
        raise InvalidRequest(
            f"Invalid value for '{where}.ttl': {value['ttl']!r}. Supported values are: '5m' and '1h'.",
            param=f"{where}.ttl",
            code="invalid_value",
        )
    return dict(value)


def mark(block: JSON, source: JSON, where: str) -> JSON:
    """``block`` with the marker its ``source`` (a content part, a tool) carries at ``where``, if any."""
    if source.get("cache_control") is not None:
        block["cache_control"] = marker(source["cache_control"], where + ".cache_control")
    return block


def refuse_empty(part: JSON, where: str) -> None:
    """An empty text part becomes no block, so a marker on it has nowhere to go: the API refuses that too."""
    if part.get("cache_control") is not None:
        where += ".cache_control"
        raise InvalidRequest(
            f"'{where}' marks an empty text part: a breakpoint needs content to cache.",
            param=where,
            code="invalid_value",
        )


def mark_message(blocks: list[JSON], message: JSON, i: int) -> None:
    """A marker beside a message's ``role`` goes on the last of its blocks that can carry one (unless marked)."""
    if message.get("cache_control") is None:
        return
    where = f"messages[{i}].cache_control"
    value = marker(message["cache_control"], where)
    for block in reversed(blocks):
        if block["type"] in _MARKABLE:
            block.setdefault("cache_control", value)
            return
    raise InvalidRequest(
        f"'{where}' marks a message with no content: a breakpoint needs content to cache.",
        param=where,
        code="invalid_value",
    )


def openai_breakpoints(messages: list[JSON]) -> bool:
    """Whether a content part carries OpenAI's own ``prompt_cache_breakpoint``, which has no counterpart here."""
    return any(
        isinstance(part, dict) and "prompt_cache_breakpoint" in part
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


# -- the whole request ------------------------------------------------------------------------------


def add_breakpoints(body: JSON, policy: PromptCache | None) -> None:
    """Refuse more markers than the API takes, then add the policy's where the caller marked nothing."""
    count = _count(body)
    if count > MAX_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {count}.",
            code="invalid_value",
        )
    if policy is None:
        return
    value: JSON = {"type": "ephemeral", "ttl": policy.ttl} if policy.ttl else {"type": "ephemeral"}
    for place in policy.breakpoints:
        if count >= MAX_BREAKPOINTS:
            return
        if (block := _PLACES[place](body)) is not None:
            block["cache_control"] = dict(value)
            count += 1


def finish_system(body: JSON) -> None:
    """One unmarked system block is sent as a plain string, as most callers' single system message is."""
    system = body.get("system")
    if isinstance(system, list) and len(system) == 1 and "cache_control" not in system[0]:
        body["system"] = system[0]["text"]


def _markers(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    inner = block.get("content") if block.get("type") == "tool_result" else None
    return ("cache_control" in block) + (sum(_markers(b) for b in inner) if isinstance(inner, list) else 0)


def _count(body: JSON) -> int:
    system = body.get("system")
    blocks = [
        *(system if isinstance(system, list) else ()),
        *(tool for tool in body.get("tools") or ()),
        *(block for turn in body["messages"] if isinstance(turn["content"], list) for block in turn["content"]),
    ]
    return sum(_markers(b) for b in blocks) + ("cache_control" in body)


def _last_tool(body: JSON) -> JSON | None:
    tools = body.get("tools") or []
    return tools[-1] if tools and not any("cache_control" in tool for tool in tools) else None


def _last_system_block(body: JSON) -> JSON | None:
    system = body.get("system")
    if isinstance(system, str) and system:  # from the model's params
        system = body["system"] = [{"type": "text", "text": system}]
    if not isinstance(system, list) or not system or any("cache_control" in block for block in system):
        return None
    last: JSON = system[-1]
    return last


def _last_user_block(body: JSON) -> JSON | None:
    turns = body["messages"]
    if not turns or turns[-1]["role"] != "user" or not isinstance(turns[-1]["content"], list):
        return None
    blocks = turns[-1]["content"]
    if any(_markers(block) for block in blocks):
        return None
    return next((block for block in reversed(blocks) if block["type"] in _MARKABLE), None)


_PLACES: dict[str, Callable[[JSON], JSON | None]] = {
    "tools": _last_tool,
    "system": _last_system_block,
    "last_user": _last_user_block,
}
