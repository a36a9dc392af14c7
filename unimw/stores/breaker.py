"""Circuit breakers shared by every replica, in one Redis hash (``dispatch.breaker`` on a ``redis://`` store).

Per target, fields of the hash ``unimw:breaker``: ``<target>:n`` and
``<target>:since`` (failures counted, and when the first of them was),
``<target>:open`` (until when its breaker is open) and ``<target>:probe``
(until when a probe holds it half-open); times in milliseconds since the
epoch. Each change is one Lua script, so two replicas counting the same
failure window, or racing for the one probe, cannot both win. The hash
expires a day after its last change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unimw.stores.redis import _client, _guard

if TYPE_CHECKING:
    from unimw.policy import Breaker

KEY = "unimw:breaker"
TTL_MS = 86_400_000

# KEYS[1]: the hash. ARGV: target, now_ms, window_ms, failures, open_ms, ttl_ms. Returns {opened (0/1), open until}.
_FAIL = """
local h, name, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
redis.call('PEXPIRE', h, ARGV[6])
local open = tonumber(redis.call('HGET', h, name .. ':open'))
if open then
  if open > now then return {0, open} end
  open = now + tonumber(ARGV[5])
  redis.call('HSET', h, name .. ':open', open)
  redis.call('HDEL', h, name .. ':probe')
  return {1, open}
end
local since = tonumber(redis.call('HGET', h, name .. ':since'))
local n
if not since or now - since >= tonumber(ARGV[3]) then
  n = 1
  redis.call('HSET', h, name .. ':since', now, name .. ':n', 1)
else
  n = redis.call('HINCRBY', h, name .. ':n', 1)
end
if n < tonumber(ARGV[4]) then return {0, 0} end
open = now + tonumber(ARGV[5])
redis.call('HDEL', h, name .. ':n', name .. ':since')
redis.call('HSET', h, name .. ':open', open)
return {1, open}
"""

# KEYS[1]: the hash. ARGV: target, now_ms, hold_ms. Returns 1 for the caller that is the probe (or when closed).
_CLAIM = """
local h, name, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
local open = tonumber(redis.call('HGET', h, name .. ':open'))
if not open then return 1 end
if open > now then return 0 end
local probe = tonumber(redis.call('HGET', h, name .. ':probe'))
if probe and probe > now then return 0 end
redis.call('HSET', h, name .. ':probe', now + tonumber(ARGV[3]))
return 1
"""


class RedisBreakers:
    """:class:`~unimw.breaker.BreakerStore` on Redis (``redis://host:port/db``)."""

    def __init__(self, url: str, key: str = KEY) -> None:
        self._redis = _client(url)
        self._key = key
        self._fail = self._redis.register_script(_FAIL)
        self._claim = self._redis.register_script(_CLAIM)

    async def fail(self, name: str, now: float, settings: Breaker) -> tuple[bool, float | None]:
        args: list[str | int] = [
            name,
            _ms(now),
            _ms(settings.window),
            settings.failures,
            _ms(settings.open_for),
            TTL_MS,
        ]
        opened, until = await _guard(self._redis, self._fail(keys=[self._key], args=args))
        return bool(opened), int(until) / 1000 if int(until) else None

    async def claim(self, name: str, now: float, hold: float) -> bool:
        return bool(await _guard(self._redis, self._claim(keys=[self._key], args=[name, _ms(now), _ms(hold)])))

    async def close(self, name: str) -> None:
        fields = [f"{name}:{part}" for part in ("open", "probe", "n", "since")]
        await _guard(self._redis, self._redis.hdel(self._key, *fields))

    async def read(self) -> dict[str, float]:
        reply: dict[Any, Any] = await _guard(self._redis, self._redis.hgetall(self._key))
        out: dict[str, float] = {}
        for field, value in reply.items():
            name, _, part = _text(field).rpartition(":")
            if part == "open":
                out[name] = int(_text(value)) / 1000
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
