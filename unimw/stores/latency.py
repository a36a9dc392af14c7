"""Latency figures shared by every replica, in one Redis hash (``strategy: least_latency``).

Each target has four fields in the hash ``unimw:latency``: ``<target>:avg``
(seconds, the decaying average), ``<target>:n`` (samples), ``<target>:at``
and ``<target>:failed`` (milliseconds since the epoch of its last sample and
last failure). A push is one Lua script: it folds a batch of samples into
the averages and answers the whole hash, so a replica sends what it saw and
learns what all saw in one round trip. The hash expires a day after its
last sample.
"""

from __future__ import annotations

from typing import Any

from unimw.latency import WEIGHT, Figure, Sample
from unimw.stores.redis import _client, _guard

KEY = "unimw:latency"
#: The figures are forgotten this long after the last sample of any target.
TTL_MS = 86_400_000

# KEYS[1]: the hash. ARGV: now_ms, weight, ttl_ms, then per sample: target, seconds, failed (1/0).
_PUSH = """
local h, now, weight = KEYS[1], ARGV[1], tonumber(ARGV[2])
for i = 4, #ARGV, 3 do
  local name, sample = ARGV[i], tonumber(ARGV[i+1])
  local average = tonumber(redis.call('HGET', h, name .. ':avg'))
  if average then average = average + weight * (sample - average) else average = sample end
  redis.call('HSET', h, name .. ':avg', string.format('%.17g', average), name .. ':at', now)
  redis.call('HINCRBY', h, name .. ':n', 1)
  if ARGV[i+2] == '1' then redis.call('HSET', h, name .. ':failed', now) end
end
redis.call('PEXPIRE', h, ARGV[3])
return redis.call('HGETALL', h)
"""


class RedisLatency:
    """:class:`~unimw.latency.SharedLatency` on Redis (``redis://host:port/db``)."""

    def __init__(self, url: str, key: str = KEY) -> None:
        self._redis = _client(url)
        self._key = key
        self._push = self._redis.register_script(_PUSH)

    async def push(self, samples: list[Sample], now: float) -> dict[str, Figure]:
        args: list[Any] = [int(now * 1000), WEIGHT, TTL_MS]
        for name, seconds, failed in samples:
            args += [name, repr(seconds), int(failed)]
        return figures(await _guard(self._redis, self._push(keys=[self._key], args=args)))

    async def read(self) -> dict[str, Figure]:
        return figures(await _guard(self._redis, self._redis.hgetall(self._key)))

    async def aclose(self) -> None:
        await self._redis.aclose()


def figures(reply: Any) -> dict[str, Figure]:
    """The figures in a hash read as a flat ``[field, value, ...]`` list (or a mapping)."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    fields: dict[str, dict[str, str]] = {}
    for field, value in pairs:
        name, _, part = _text(field).rpartition(":")
        fields.setdefault(name, {})[part] = _text(value)
    out: dict[str, Figure] = {}
    for name, parts in fields.items():
        if "avg" in parts and "at" in parts:
            failed = parts.get("failed")
            out[name] = Figure(
                float(parts["avg"]),
                int(parts.get("n", "0")),
                int(parts["at"]) / 1000,
                int(failed) / 1000 if failed is not None else None,
            )
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
