"""Usage and cost: token counts from a response, USD from the price table.

USD amounts are kept as integer micro-dollars wherever they are added up,
so that budgets are exact: float sums drift, integer sums do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unimw.wire import JSON, dumps

if TYPE_CHECKING:
    from unimw.policy import Price

    #: List prices in USD per 1M tokens for common models, by the vendor's model id (see _LIST_PRICES).
    DEFAULT_PRICES: dict[str, Price]
    #: The price of a model in neither the policy nor the list.
    FREE: Price

MICRO = 1_000_000

#: List prices in USD per 1M tokens for common models, by the vendor's model
#: id, as published by the vendors; a model's ``price`` in policies.yaml
#: overrides them. Models in neither cost 0. Kept as each price's fields and
#: made into ``DEFAULT_PRICES`` on first use: :class:`~unimw.policy.Price` is a
#: pydantic model, and importing the gateway loads no pydantic.
_LIST_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "cached_input": 0.50, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "cached_input": 0.025, "output": 0.40},
    "o3": {"input": 2.00, "cached_input": 0.50, "output": 8.00},
    "o4-mini": {"input": 1.10, "cached_input": 0.275, "output": 4.40},
    # Claude's cache writes: 5-minute ones at 1.25 times input, hour-long ones at twice it.
    "claude-3-5-haiku-latest": {"input": 0.80, "cached_input": 0.08, "cache_write": 1.00, "cache_write_1h": 1.60,
                                "output": 4.00},
    "claude-sonnet-4-0": {"input": 3.00, "cached_input": 0.30, "cache_write": 3.75, "cache_write_1h": 6.00,
                          "output": 15.00},
    "claude-opus-4-0": {"input": 15.00, "cached_input": 1.50, "cache_write": 18.75, "cache_write_1h": 30.00,
                        "output": 75.00},
    "gemini-2.5-flash": {"input": 0.30, "cached_input": 0.075, "output": 2.50},
    "gemini-2.5-pro": {"input": 1.25, "cached_input": 0.31, "output": 10.00},
    # Embedding models: input only (an embedding has no output tokens).
    "text-embedding-3-small": {"input": 0.02},
    "text-embedding-3-large": {"input": 0.13},
    "gemini-embedding-001": {"input": 0.15},
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """``DEFAULT_PRICES`` and ``FREE``, made on first use (by the first gateway's limiter) and kept.

    Made with model_construct, as constants: validating them would build Price's validator, which waits for
    the first policy read.
    """
    if name not in ("DEFAULT_PRICES", "FREE"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from unimw.policy import Price

    # None: the fields set are those given, as when each price was written out as a call.
    prices = {model: Price.model_construct(None, **fields) for model, fields in _LIST_PRICES.items()}
    globals().update(DEFAULT_PRICES=prices, FREE=Price.model_construct())
    return globals()[name]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts with OpenAI's meanings: input includes cached, output includes reasoning.

    ``cached_tokens`` were read from the vendor's prompt cache and ``cache_write_tokens`` written to it
    (both part of the input); ``cache_write_1h_tokens`` are the writes made to live an hour.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """From a ``CompletionUsage`` object; None if there is none."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        details = usage.get("prompt_tokens_details") or {}
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        return cls(
            int(prompt),
            int(completion),
            int(details.get("cached_tokens") or 0),
            int(reasoning),
            int(details.get("cache_write_tokens") or 0),
            int(details.get("cache_write_1h_tokens") or 0),
        )


def cost_micros(price: Price, usage: Usage) -> int:
    """What ``usage`` costs at ``price``, in micro-USD, rounded up.

    Input is priced in three parts: read from the prompt cache (``cached_input``), written to it
    (``cache_write``, or ``cache_write_1h`` for hour-long writes), and the rest (``input``). An
    unset read or write price is the input price; an unset hour-long one, the write price.
    """
    read_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    hour_rate = write_rate if price.cache_write_1h is None else price.cache_write_1h
    read = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - read)  # a vendor's overcount costs nothing extra
    hour = min(usage.cache_write_1h_tokens, written)
    uncached = max(0, usage.input_tokens - read - written)
    # price is USD per 1M tokens, so tokens x price is already micro-USD.
    micros = (
        uncached * price.input
        + read * read_rate
        + (written - hour) * write_rate
        + hour * hour_rate
        + usage.output_tokens * price.output
    )
    return math.ceil(round(micros, 6))  # round first: 1000 x 0.4 is 400.00000000000006 in floats


def estimate_prompt_tokens(request: JSON) -> int:
    """A generous estimate of a request's input tokens, before any vendor counts them.

    About four bytes of JSON a token over messages and tool definitions,
    which over-counts ordinary text (the JSON punctuation is included).
    """
    size = len(dumps(request.get("messages") or ()))
    if tools := request.get("tools"):
        size += len(dumps(tools))
    return size // 4 + 8


def estimate_text_tokens(text: str) -> int:
    """Tokens in generated text, for output we saw but the vendor never counted."""
    return tokens_in_bytes(utf8_size(text))


def tokens_in_bytes(size: int) -> int:
    """:func:`estimate_text_tokens` of text of ``size`` UTF-8 bytes: streams count bytes as they go."""
    return (size + 3) // 4


def utf8_size(text: str) -> int:
    """``len(text.encode())`` without the copy for ASCII text (``isascii`` reads a flag: no scan)."""
    return len(text) if text.isascii() else len(text.encode())
