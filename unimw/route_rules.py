"""An alias's ``when`` rules: what a call is, and whether a rule matches it.

A rule is compiled once, with the policy, into a tuple of conditions; a
call's facts are worked out only as far as a condition asks (the shape of
the request and its token estimate are looked at only by rules that name
them). The same conditions explain themselves, for ``unimw route``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimw.wire import JSON, dumps

if TYPE_CHECKING:
    from unimw.calls import Call
    from unimw.policy import RouteRule

#: Content parts that are not text: each counts as this many tokens in the estimate.
MEDIA_TOKENS = 1000
#: Part types that carry an image (Chat Completions, Responses).
IMAGE_PARTS = frozenset({"image_url", "input_image"})
_MEDIA_PARTS = IMAGE_PARTS | {"input_audio", "file", "input_file"}
_STRUCTURED = frozenset({"json_schema", "json_object"})


class Facts:
    """What ``when`` rules look at in one call; the request's shape is read on first use, once."""

    __slots__ = (
        "_images",
        "_structured",
        "_tokens",
        "_tools",
        "end_user",
        "headers",
        "plan",
        "request",
        "tags",
        "tenant",
    )

    def __init__(
        self,
        request: JSON,
        *,
        tenant: str | None = None,
        plan: str | None = None,
        end_user: str | None = None,
        tags: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        tokens: int | None = None,
        tools: bool | None = None,
        images: bool | None = None,
        structured: bool | None = None,
    ) -> None:
        self.request = request
        self.tenant = tenant
        self.plan = plan
        self.end_user = end_user
        self.tags: Mapping[str, str] = tags or {}
        #: Lower-case names, as ASGI gives them.
        self.headers: Mapping[str, str] = headers or {}
        self._tokens = tokens
        self._tools = tools
        self._images = images
        self._structured = structured

    @classmethod
    def of(cls, call: Call, headers: Mapping[str, str]) -> Facts:
        """The facts of a call in the pipeline, with the request's headers.

        The end user is the caller's, else (a policy that tells no tenants apart identifies none) the request's
        own ``user`` or ``safety_identifier``.
        """
        caller, request = call.caller, call.request
        end_user = caller.end_user
        if end_user is None and isinstance(user := request.get("user") or request.get("safety_identifier"), str):
            end_user = user
        return cls(request, tenant=caller.tenant, plan=caller.plan, end_user=end_user, tags=call.tags, headers=headers)

    @property
    def tokens(self) -> int:
        if self._tokens is None:
            self._tokens = estimate_tokens(self.request)
        return self._tokens

    @property
    def tools(self) -> bool:
        if self._tools is None:
            self._tools = bool(self.request.get("tools") or self.request.get("functions"))
        return self._tools

    @property
    def images(self) -> bool:
        if self._images is None:
            self._images = _has_image(self.request.get("messages")) or _has_image(self.request.get("input"))
        return self._images

    @property
    def structured(self) -> bool:
        if self._structured is None:
            chat = self.request.get("response_format")
            text = self.request.get("text")  # the Responses API's text.format
            wanted = chat if isinstance(chat, dict) else text.get("format") if isinstance(text, dict) else None
            self._structured = isinstance(wanted, dict) and wanted.get("type") in _STRUCTURED
        return self._structured


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a rule: what it says (``plan: free``), and its test."""

    text: str
    holds: Callable[[Facts], bool]
    #: What the call had, for an explanation of why it did not match.
    seen: Callable[[Facts], str]


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled ``when`` rule: it matches when every condition holds."""

    index: int
    conditions: tuple[Condition, ...]

    def matches(self, facts: Facts) -> bool:
        for condition in self.conditions:  # noqa: SIM110 - all() would make a generator per rule per call
            if not condition.holds(facts):
                return False
        return True

    @property
    def text(self) -> str:
        return ", ".join(condition.text for condition in self.conditions)


def compile_rule(index: int, rule: RouteRule) -> Rule:
    """The conditions ``rule`` sets, in :data:`~unimw.policy.CONDITIONS` order."""
    conditions: list[Condition] = []
    if rule.tenant is not None:
        conditions.append(_one_of("tenant", rule.tenant, lambda f: f.tenant))
    if rule.plan is not None:
        conditions.append(_one_of("plan", rule.plan, lambda f: f.plan))
    for key, values in (rule.tags or {}).items():
        conditions.append(_one_of(f"tag {key}", values, _tag(key)))
    for name, values in (rule.headers or {}).items():
        conditions.append(_one_of(f"header {name}", values, _header(name.lower())))
    if rule.tools is not None:
        conditions.append(_flag("tools", rule.tools, lambda f: f.tools))
    if rule.images is not None:
        conditions.append(_flag("images", rule.images, lambda f: f.images))
    if rule.structured is not None:
        conditions.append(_flag("structured", rule.structured, lambda f: f.structured))
    if (over := rule.tokens_over) is not None:
        conditions.append(
            Condition(f"tokens_over: {over}", lambda f: f.tokens > over, lambda f: f"about {f.tokens} tokens")
        )
    return Rule(index, tuple(conditions))


def _tag(key: str) -> Callable[[Facts], str | None]:
    return lambda facts: facts.tags.get(key)


def _header(lower: str) -> Callable[[Facts], str | None]:
    return lambda facts: facts.headers.get(lower)


def _one_of(what: str, values: list[str], read: Callable[[Facts], str | None]) -> Condition:
    allowed = frozenset(values)
    text = f"{what}: {values[0]}" if len(values) == 1 else f"{what}: one of {', '.join(values)}"

    def seen(facts: Facts) -> str:
        value = read(facts)
        return f"{what} is {value}" if value is not None else f"no {what}"

    return Condition(text, lambda facts: read(facts) in allowed, seen)


def _flag(what: str, wanted: bool, read: Callable[[Facts], bool]) -> Condition:
    return Condition(
        f"{what}: {'true' if wanted else 'false'}",
        lambda facts: read(facts) is wanted,
        lambda facts: f"{what} is {'true' if read(facts) else 'false'}",
    )


def explain(rule: Rule, facts: Facts) -> str:
    """Why ``rule`` did not match ``facts``: what the call had for each condition that failed."""
    return "; ".join(condition.seen(facts) for condition in rule.conditions if not condition.holds(facts))


def estimate_tokens(request: JSON) -> int:
    """The prompt tokens of ``request``, roughly: four characters of text a token, plus the tools' definitions
    as JSON, plus :data:`MEDIA_TOKENS` for each image, audio or file part.

    Cheap on purpose (no tokenizer, a data URL is not read): it decides a route, not a bill.
    """
    chars = (
        _text_length(request.get("messages"))
        + _text_length(request.get("input"))
        + _text_length(request.get("instructions"))
        + _text_length(request.get("system"))
    )
    if tools := request.get("tools"):
        chars += len(dumps(tools))
    return (chars + 3) // 4


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        if value.get("type") in _MEDIA_PARTS:
            return MEDIA_TOKENS * 4
        value = value.values()
    elif not isinstance(value, list):
        return 0
    total = 0
    for item in value:  # strings counted here, without a call each: most of a request
        total += len(item) if isinstance(item, str) else _text_length(item)
    return total


def _has_image(value: Any) -> bool:
    """Whether messages (or Responses input items) carry an image part."""
    if isinstance(value, list):
        return any(_has_image(item) for item in value)
    if isinstance(value, dict):
        return value.get("type") in IMAGE_PARTS or _has_image(value.get("content"))
    return False
