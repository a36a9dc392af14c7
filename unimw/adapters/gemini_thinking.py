"""Gemini's thinking: model versions, ``reasoning_effort`` → ``thinkingConfig``, and thought signatures.

``reasoning_effort`` follows the table Google documents for its own
OpenAI-compatible endpoint, kept here as data, per model family:
:data:`THINKING_LEVELS` on Gemini 3 and later (``thinkingLevel``: the
nearest level at or above the one asked for that the model accepts, the
highest for ``xhigh``/``max``) and :data:`THINKING_BUDGETS` on 2.5
(``thinkingBudget``). ``none`` turns thinking off where the model allows it
(2.5 Flash and Flash-Lite) and is the least thinking the others take (2.5
Pro's budget of 128, the lowest level on 3.x). No effort sends nothing; other
models get no mapping (the field is dropped). :func:`thinking_table` shows a
model's whole row.

Gemini gives function calls no id, so tool-call ids are made from the
response id, candidate, position, name and arguments: the same response
always gives the same ids (an id Gemini does give is kept and sent back).
Gemini 3 thought signatures must come back on the same parts, so a call's
signature rides in its id as ``<id>~<signature>`` (clients send ids back
untouched) and is restored on the way out; ``extra_content.google
.thought_signature``, where Google's own compatible endpoint puts it, is read
too. A model turn with calls and no signature (history from another model)
gets Google's documented ``skip_thought_signature_validator``.

Not carried: signatures on text parts (Google does not check them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from unimw.errors import InvalidRequest
from unimw.wire import JSON, dumps

#: The thinking levels Gemini 3+ models accept, by model-id prefix (the longest matching prefix wins).
#: Source: https://ai.google.dev/gemini-api/docs/thinking#thinking-levels
THINKING_LEVELS: Mapping[str, tuple[str, ...]] = {
    "gemini-3": ("minimal", "low", "medium", "high"),  # 3 Flash, 3.1 Flash-Lite, 3.5 and 3.6 Flash
    "gemini-3-pro": ("low", "high"),
    "gemini-3.1-pro": ("low", "medium", "high"),
    "gemini-3.7-flash": ("low", "medium", "high"),  # minimal is an error there
    "gemini-3.8-flash": ("low", "medium", "high"),
}
#: Gemini 2.5 thinking budgets per ``reasoning_effort``, by model-id prefix (the longest matching prefix wins).
#: Source: https://ai.google.dev/gemini-api/docs/openai#thinking (1,024 / 8,192 / 24,576); 2.5 Pro cannot
#: turn thinking off (128 is its least) and thinks up to 32,768, Flash up to 24,576.
THINKING_BUDGETS: Mapping[str, Mapping[str, int]] = {
    "gemini-2.5": {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576},
    "gemini-2.5-pro": {"none": 128, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768},
}  # fmt: skip
#: The level each ``reasoning_effort`` asks for, before the model's own levels are looked at.
EFFORT_LEVELS: Mapping[str, str] = {
    "none": "minimal",  # Gemini 3 cannot turn thinking off: the least there is
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}
SKIP_SIGNATURE = "skip_thought_signature_validator"

_LEVELS = ("minimal", "low", "medium", "high", "xhigh")
_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")
_SYNTHETIC_ID = re.compile(r"call_[0-9a-f]{24}")


def model_version(model: str) -> tuple[int, int] | None:
    """``(major, minor)`` from a ``gemini-X.Y-...`` model id; ``None`` for other ids (aliases, tuned models)."""
    match = _VERSION.match(model.rpartition("/")[2])
    return (int(match[1]), int(match[2] or 0)) if match else None


def to_thinking(effort: Any, model: str, levels: Mapping[str, Sequence[str]] = THINKING_LEVELS) -> JSON | None:
    """``thinkingConfig`` for ``reasoning_effort``: ``{}`` when none is asked, ``None`` when the model has no mapping."""
    if effort is None:
        return {}  # the model's own default
    if effort not in EFFORT_LEVELS:
        raise InvalidRequest(
            f"Invalid value for 'reasoning_effort': {effort!r}. Supported values are: "
            + ", ".join(f"'{e}'" for e in EFFORT_LEVELS)
            + ".",
            param="reasoning_effort",
            code="invalid_value",
        )
    version = model_version(model)
    if version is not None and version >= (3, 0):
        family = _family(model, levels)
        return {"thinkingLevel": thinking_level(effort, levels[family] if family else _LEVELS[:4])}
    if version == (2, 5):
        return {"thinkingBudget": thinking_budget(effort, model)}
    return None


def thinking_table(model: str, levels: Mapping[str, Sequence[str]] = THINKING_LEVELS) -> dict[str, JSON]:
    """Every ``reasoning_effort`` and the ``thinkingConfig`` it becomes for ``model`` (empty: no mapping)."""
    table = {effort: to_thinking(effort, model, levels) for effort in EFFORT_LEVELS}
    return {effort: config for effort, config in table.items() if config is not None}


def thinking_level(effort: str, supported: Sequence[str]) -> str:
    """The level nearest at or above what ``effort`` asks for (the highest if none is)."""
    wanted = _LEVELS.index(EFFORT_LEVELS[effort])
    ranked = sorted((lv for lv in supported if lv in _LEVELS), key=_LEVELS.index) or list(_LEVELS[:4])
    return next((lv for lv in ranked if _LEVELS.index(lv) >= wanted), ranked[-1]).upper()


def thinking_budget(effort: str, model: str) -> int:
    """Gemini 2.5 thinking tokens for ``effort``, from :data:`THINKING_BUDGETS`."""
    return THINKING_BUDGETS[_family(model, THINKING_BUDGETS) or "gemini-2.5"][effort]


def _family(model: str, table: Mapping[str, object]) -> str | None:
    """The key of ``table`` that is the longest prefix of the model's name (``models/`` left out)."""
    name = model.rpartition("/")[2]
    prefixes = [p for p in table if name.startswith(p)]
    return max(prefixes, key=len) if prefixes else None


# -- thought signatures --------------------------------------------------------


def tool_call_id(call: JSON, signature: str | None, response_id: str | None, candidate: int, position: int) -> str:
    """Gemini's id for the call, or one made from its content; with the thought signature appended."""
    base = (
        call.get("id")
        or "call_"
        + hashlib.sha256(dumps([response_id, candidate, position, call.get("name"), call.get("args")])).hexdigest()[:24]
    )
    return f"{base}~{signature}" if signature else str(base)


def split_call_id(call_id: str) -> tuple[str | None, str | None]:
    """``(Gemini's own call id or None for one we made, thought signature or None)`` from a tool-call id."""
    base, mark, signature = call_id.rpartition("~")  # "~" is not a base64 character
    if not mark:
        base, signature = call_id, ""
    return (None if not base or _SYNTHETIC_ID.fullmatch(base) else base), (signature or None)


def sign_unsigned_calls(content: JSON) -> None:
    """A model turn with calls but no signature (history from elsewhere) gets Google's documented bypass value."""
    calls = [p for p in content["parts"] if "functionCall" in p]
    if content["role"] == "model" and calls and not any("thoughtSignature" in p for p in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE
