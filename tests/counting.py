"""A limit store that counts its settlements: how tests see that a call was settled exactly once."""

from __future__ import annotations

from collections.abc import Sequence

from unimw.stores.base import Counter
from unimw.stores.memory import MemoryLimitStore


class CountingLimitStore(MemoryLimitStore):
    """The memory store, counting settlements."""

    def __init__(self) -> None:
        super().__init__()
        self.settled = 0

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        self.settled += 1
        return await super().settle(call_id, counters, reserved, actual, now)
