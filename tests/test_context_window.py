"""Context windows: the built-in table, the token estimate, and the dispatcher's choices after a 400."""

from __future__ import annotations

import pytest

from unimw import ConfigError
from unimw.adapters.base import Target
from unimw.context_window import (
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    ContextWindows,
    estimate_tokens,
    known_windows,
    window_of,
)
from unimw.errors import ContentFiltered, ContextLengthExceeded, InvalidRequest, UpstreamError
from unimw.loader import parse_policy
from unimw.policy import Policy
from unimw.routing import Route, Router
from unimw.wire import JSON

# -- the table -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4.1-mini", 1_047_576),
        ("claude-sonnet-4-5-20250929", 200_000),
        ("claude-3-5-haiku-latest", 200_000),
        ("claude-opus-5", 1_000_000),
        ("models/gemini-2.5-pro", 1_048_576),
        ("llama3", None),
        ("gpt-4o-custom", None),
    ],
)
def test_the_built_in_windows(model: str, window: int | None) -> None:
    assert window_of(model) == window


def test_a_model_s_context_window_overrides_the_table_and_unknown_models_have_none() -> None:
    policy = Policy.model_validate(
        {
            "providers": {"p": {"kind": "mock"}},
            "models": {
                "listed": {"provider": "p", "model": "gpt-4o"},
                "pinned": {"provider": "p", "model": "gpt-4o", "context_window": 32_000},
                "local": {"provider": "p", "model": "llama3"},
                "sized": {"provider": "p", "model": "llama3", "context_window": 8192},
            },
        }
    )
    assert known_windows(policy) == {"listed": 128_000, "pinned": 32_000, "sized": 8192}


# -- the estimate --------------------------------------------------------------------------------------

WEATHER_CALL: JSON = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ],
}


@pytest.mark.parametrize(
    ("request_", "cap", "tokens"),
    [
        pytest.param({"messages": [{"role": "user", "content": "abcdefgh"}]}, None, 3 + 4 + 2, id="text"),
        pytest.param({"messages": [{"role": "user", "content": "abcdefghi"}]}, 100, 3 + 4 + 3 + 100, id="cap"),
        pytest.param(
            {
                "messages": [
                    {"role": "system", "content": "abcd"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "abcd"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                            {"type": "input_audio", "input_audio": {"data": "A" * 4000, "format": "wav"}},
                        ],
                    },
                ]
            },
            None,
            3 + (4 + 1) + (4 + 1 + IMAGE_TOKENS + LOW_DETAIL_IMAGE_TOKENS),
            id="parts",
        ),
        pytest.param(
            {
                "messages": [WEATHER_CALL, {"role": "tool", "tool_call_id": "c", "content": "sunny"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            },
            None,
            3 + (4 + 3 + 4) + (4 + 2) + 61 // 4,
            id="tools",
        ),
        pytest.param({"instructions": "Be brief.", "input": "abcdefgh"}, 10, 3 + 3 + (4 + 2) + 10, id="responses-text"),
        pytest.param(
            {
                "unimw_history": [
                    {"role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "abcdefgh"},
                    {"type": "function_call_output", "call_id": "c", "output": "abcd"},
                ],
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
            },
            None,
            3 + (4 + 1) + (4 + 2) + (4 + 1) + (4 + IMAGE_TOKENS),
            id="responses-history",
        ),
    ],
)
def test_the_estimate(request_: JSON, cap: int | None, tokens: int) -> None:
    assert estimate_tokens({"model": "m", **request_}, cap) == tokens


# -- the choices ---------------------------------------------------------------------------------------

SMALL = Target("small", "m-small", "p")
SMALL_TOO = Target("small-too", "m-small", "q")  # the same vendor model on another provider
MID = Target("mid", "m-mid", "p")
BIG = Target("big", "m-big", "p")
UNKNOWN = Target("unknown", "m-unknown", "p")
WINDOWS = ContextWindows({"small": 8000, "small-too": 8000, "mid": 4000, "big": 16000})
TOO_LONG = ContextLengthExceeded("prompt is too long", status=400)
FILTERED = ContentFiltered("blocked", status=400)


def route(*targets: Target, overflow: tuple[Target, ...] = (), filtered: tuple[Target, ...] = ()) -> Route:
    return Route("long", "fallback", targets, (1.0,) * len(targets), overflow, filtered)


@pytest.mark.parametrize(
    ("the_route", "rest", "tried", "needs", "expected"),
    [
        # The rest of the alias: only targets known to hold more, never the same vendor model.
        (route(SMALL, MID, SMALL_TOO, UNKNOWN, BIG), (MID, SMALL_TOO, UNKNOWN, BIG), {"small"}, None, (BIG,)),
        (route(SMALL, BIG), (BIG,), {"small"}, 20_000, ()),  # the estimate does not fit big either
        # Named overflow targets: tried in order, an unknown window included, a known smaller one not.
        (route(SMALL, BIG, overflow=(MID, UNKNOWN, SMALL_TOO, BIG)), (BIG,), {"small"}, None, (UNKNOWN, BIG)),
        (route(SMALL, overflow=(UNKNOWN, BIG)), (), {"small", "unknown"}, None, (BIG,)),  # not twice
    ],
    ids=["larger-rest", "larger-rest-too-small", "named", "named-once"],
)
def test_after_a_context_overflow(
    the_route: Route, rest: tuple[Target, ...], tried: set[str], needs: int | None, expected: tuple[Target, ...]
) -> None:
    assert WINDOWS.after(TOO_LONG, the_route, SMALL, rest, tried, needs) == expected


def test_after_an_overflow_on_a_target_of_unknown_size_only_named_targets_are_tried() -> None:
    assert WINDOWS.after(TOO_LONG, route(UNKNOWN, BIG), UNKNOWN, (BIG,), {"unknown"}, None) == ()
    assert WINDOWS.after(TOO_LONG, route(UNKNOWN, overflow=(BIG,)), UNKNOWN, (), {"unknown"}, None) == (BIG,)


def test_after_a_content_filter_only_on_content_filter_targets() -> None:
    assert WINDOWS.after(FILTERED, route(SMALL, BIG), SMALL, (BIG,), {"small"}, None) == ()
    assert WINDOWS.after(FILTERED, route(SMALL, filtered=(SMALL, MID, BIG)), SMALL, (), {"small"}, 5000) == (BIG,)


def test_after_any_other_400_nowhere() -> None:
    plain = UpstreamError("bad", status=400)
    assert WINDOWS.after(plain, route(SMALL, overflow=(BIG,), filtered=(BIG,)), SMALL, (), {"small"}, None) == ()


def test_the_plan_keeps_what_fits() -> None:
    the_route = route(SMALL, MID, UNKNOWN, BIG, overflow=(BIG,))
    assert WINDOWS.plan(the_route, the_route.targets, 4000) == (the_route.targets, ())
    assert WINDOWS.plan(the_route, the_route.targets, 6000) == ((SMALL, UNKNOWN, BIG), ("mid",))


def test_the_plan_goes_to_the_overflow_targets_when_none_fits() -> None:
    the_route = route(SMALL, MID, overflow=(MID, BIG))
    assert WINDOWS.plan(the_route, the_route.targets, 9000) == ((BIG,), ("small", "mid"))


def test_the_plan_refuses_what_nothing_holds() -> None:
    the_route = route(SMALL, MID, overflow=(BIG,))
    with pytest.raises(InvalidRequest) as caught:
        WINDOWS.plan(the_route, the_route.targets, 16_001)
    assert caught.value.to_dict() == {
        "error": {
            "message": "This request needs about 16001 tokens (an estimate of its prompt and its max tokens), more "
            "than any model of `long` holds (at most 16000). Please reduce the length of the messages or the max "
            "tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


# -- the policy ----------------------------------------------------------------------------------------

RECOVERING = """\
providers:
  p: {kind: mock}
  own: {kind: mock}
dispatch: {context_check: true}
models:
  small: {provider: p, model: m-small, context_window: 8000}
  big: {provider: p, model: m-big}
  theirs: {provider: own, model: m-theirs}
aliases:
  wide: {targets: [big, theirs]}
  long:
    targets: [small]
    on_context_overflow: [wide, big]
    on_content_filter: [theirs]
    context_check: false
"""


def test_the_routes_carry_the_recovery_targets_flattened() -> None:
    routes = Router(parse_policy(RECOVERING, env={})).routes
    long = routes["long"]
    assert [t.name for t in long.on_context_overflow] == ["big", "theirs"]
    assert [t.name for t in long.on_content_filter] == ["theirs"]
    assert (long.context_check, routes["wide"].context_check, routes["small"].context_check) == (False, True, True)
    # A tenant that must bring its own key for a provider, and brought none, never reaches it, even so.
    assert long.without({"own"}).on_context_overflow == (long.on_context_overflow[0],)
    assert long.without({"own"}).on_content_filter == ()


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (
            ("on_content_filter: [theirs]", "on_content_filter: [theirs, ghost]"),
            14,
            "on_content_filter of alias 'long' names 'ghost', which is neither a model nor an alias",
        ),
        (
            ("on_context_overflow: [wide, big]", "on_context_overflow: [long]"),
            13,
            "on_context_overflow of alias 'long' names the alias itself",
        ),
        (
            ("context_window: 8000", "context_window: 0"),
            6,
            "models.small.context_window: Input should be greater than 0",
        ),
    ],
    ids=["unknown-name", "itself", "window-zero"],
)
def test_broken_recovery_settings_name_line_and_reason(change: tuple[str, str], line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(RECOVERING.replace(*change), source="p.yaml", env={})
    assert str(caught.value) == f"p.yaml:{line}: {reason}"
