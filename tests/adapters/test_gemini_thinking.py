"""``reasoning_effort`` on Gemini, family by family, against the table Google documents.

Sources:

* https://ai.google.dev/gemini-api/docs/openai#thinking — Google's own
  OpenAI-compatible endpoint: ``reasoning_effort`` → ``thinking_level``
  (Gemini 3 and later) or ``thinking_budget`` (Gemini 2.5: minimal and low
  1,024, medium 8,192, high 24,576; ``none`` turns thinking off).
* https://ai.google.dev/gemini-api/docs/thinking#thinking-levels — the levels
  each model accepts: all four on 3 Flash and 3.1 Flash-Lite; low, medium and
  high on 3.1 Pro (minimal is not supported) and on 3.7 and 3.8 Flash
  (minimal is an error); low and high on 3 Pro. Thinking cannot be turned off
  on 3.x, nor on 2.5 Pro (whose least budget is 128).
"""

from __future__ import annotations

import pytest

from unimw.adapters.base import Target
from unimw.adapters.gemini import translate
from unimw.adapters.gemini_thinking import thinking_table, to_thinking
from unimw.wire import JSON

MINIMAL, LOW, MEDIUM, HIGH = ({"thinkingLevel": level} for level in ("MINIMAL", "LOW", "MEDIUM", "HIGH"))


def budget(tokens: int) -> JSON:
    return {"thinkingBudget": tokens}


#: The documented rows: reasoning_effort → thinkingConfig, per model.
DOCUMENTED: dict[str, dict[str, JSON]] = {
    "gemini-2.5-flash":              {"minimal": budget(1024), "low": budget(1024), "medium": budget(8192), "high": budget(24576)},
    "gemini-2.5-flash-lite":         {"minimal": budget(1024), "low": budget(1024), "medium": budget(8192), "high": budget(24576)},
    "gemini-2.5-pro":                {"minimal": budget(1024), "low": budget(1024), "medium": budget(8192), "high": budget(24576)},
    "gemini-3-flash-preview":        {"minimal": MINIMAL,      "low": LOW,          "medium": MEDIUM,       "high": HIGH},
    "gemini-3.1-flash-lite-preview": {"minimal": MINIMAL,      "low": LOW,          "medium": MEDIUM,       "high": HIGH},
    "gemini-3.1-pro-preview":        {"minimal": LOW,          "low": LOW,          "medium": MEDIUM,       "high": HIGH},
    "gemini-3.7-flash":              {"minimal": LOW,          "low": LOW,          "medium": MEDIUM,       "high": HIGH},
    "gemini-3.8-flash":              {"minimal": LOW,          "low": LOW,          "medium": MEDIUM,       "high": HIGH},
    "gemini-3-pro-preview":          {"minimal": LOW,          "low": LOW,          "medium": HIGH,         "high": HIGH},
}  # fmt: skip
#: ``none``: thinking off where the model allows it, else the least thinking it takes.
NONE: dict[str, JSON] = {
    "gemini-2.5-flash": budget(0),
    "gemini-2.5-flash-lite": budget(0),
    "gemini-2.5-pro": budget(128),
    "gemini-3-flash-preview": MINIMAL,
    "gemini-3.1-flash-lite-preview": MINIMAL,
    "gemini-3.1-pro-preview": LOW,
    "gemini-3.7-flash": LOW,
    "gemini-3.8-flash": LOW,
    "gemini-3-pro-preview": LOW,
}
ROWS = [(model, effort, config) for model, row in DOCUMENTED.items() for effort, config in row.items()]


@pytest.mark.parametrize(("model", "effort", "expected"), ROWS, ids=[f"{m}-{e}" for m, e, _ in ROWS])
def test_each_documented_row(model: str, effort: str, expected: JSON) -> None:
    assert to_thinking(effort, model) == expected


@pytest.mark.parametrize(("model", "expected"), NONE.items(), ids=list(NONE))
def test_none_turns_thinking_off_where_the_model_allows_it(model: str, expected: JSON) -> None:
    assert to_thinking("none", model) == expected


@pytest.mark.parametrize("model", DOCUMENTED)
def test_the_table_is_the_documented_one(model: str) -> None:
    """The whole table, as data: the documented efforts, ``none``, and the two above ``high``."""
    table = thinking_table(model)
    top = {"gemini-2.5-pro": budget(32768)}.get(model) or DOCUMENTED[model]["high"]
    assert table == {"none": NONE[model], **DOCUMENTED[model], "xhigh": top, "max": top}


@pytest.mark.parametrize(
    "model", ["models/gemini-3.1-pro-preview", "gemini-3.1-pro-preview-customtools", "gemini-3.1-pro"]
)
def test_model_ids_are_matched_by_prefix(model: str) -> None:
    assert to_thinking("medium", model) == MEDIUM


def test_the_request_carries_the_level() -> None:
    body, dropped = translate(
        {"model": "p", "messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "medium"},
        Target("p", "gemini-3.1-pro-preview", "g"),
    )
    assert (body["generationConfig"], dropped) == ({"thinkingConfig": {"thinkingLevel": "MEDIUM"}}, ())


def test_models_outside_the_table_get_no_mapping() -> None:
    assert to_thinking("high", "gemini-2.0-flash") is None
    assert thinking_table("gemini-2.0-flash") == {}
