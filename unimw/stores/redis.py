"""Limits in Redis, shared by every replica of the app.

A reservation over any number of counters is one Lua script (one round
trip), so two replicas can never both take the last unit; settling is
another. Sliding counters are a sorted set of call ids by time plus a hash
of their amounts and running total; calendar counters are plain integers.
Every key expires with its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unimw.stores.base import Counter, Reservation, StoreUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

# KEYS: per counter two keys (sorted set, hash) for sliding, (integer, unused) for fixed.
# ARGV: now_ms, call_id ('' to only read), then per counter: limit, window_ms, sliding (1/0), amount.
_RESERVE = """
local now = tonumber(ARGV[1])
local id = ARGV[2]
local n = (#ARGV - 2) / 4
local totals = {}
for i = 1, n do
  local limit, window = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local sliding, amount = ARGV[4*i+1] == '1', tonumber(ARGV[4*i+2])
  local z, h = KEYS[2*i-1], KEYS[2*i]
  local total
  if sliding then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
    for _, member in ipairs(old) do
      redis.call('HINCRBY', h, '_total', -tonumber(redis.call('HGET', h, member) or '0'))
      redis.call('HDEL', h, member)
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window) end
    total = tonumber(redis.call('HGET', h, '_total') or '0')
  else
    total = tonumber(redis.call('GET', z) or '0')
  end
  totals[i] = total
  if id ~= '' and total + amount > limit then
    local retry = -1
    if amount <= limit then
      if sliding then
        local need, freed = total + amount - limit, 0
        local members = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
        for j = 1, #members, 2 do
          freed = freed + tonumber(redis.call('HGET', h, members[j]) or '0')
          if freed >= need then retry = tonumber(members[j+1]) + window - now; break end
        end
      else
        retry = redis.call('PTTL', z)
      end
    end
    return {0, i - 1, retry, unpack(totals)}
  end
end
if id == '' then return {1, -1, 0, unpack(totals)} end  -- a read: take nothing
for i = 1, n do
  local window, sliding, amount = tonumber(ARGV[4*i]), ARGV[4*i+1] == '1', tonumber(ARGV[4*i+2])
  local z, h = KEYS[2*i-1], KEYS[2*i]
  if sliding then
    redis.call('ZADD', z, now, id)
    redis.call('HSET', h, id, amount)
    redis.call('HINCRBY', h, '_total', amount)
    redis.call('PEXPIRE', z, window)
    redis.call('PEXPIRE', h, window)
  else
    if redis.call('INCRBY', z, amount) == amount then redis.call('PEXPIRE', z, window) end
  end
  totals[i] = totals[i] + amount
end
return {1, -1, 0, unpack(totals)}
"""

# ARGV: call_id, then per counter: sliding (1/0), reserved, actual. Returns the totals after.
_SETTLE = """
local id = ARGV[1]
local totals = {}
for i = 1, (#ARGV - 1) / 3 do
  local sliding, before, after = ARGV[3*i-1] == '1', tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local z, h = KEYS[2*i-1], KEYS[2*i]
  if sliding then
    if redis.call('HEXISTS', h, id) == 1 then
      redis.call('HSET', h, id, after)
      redis.call('HINCRBY', h, '_total', after - before)
    end
    totals[i] = tonumber(redis.call('HGET', h, '_total') or '0')
  elseif redis.call('EXISTS', z) == 1 then
    totals[i] = redis.call('INCRBY', z, after - before)
  else
    totals[i] = 0
  end
end
return totals
"""


class RedisLimitStore:
    """:class:`~unimw.stores.base.LimitStore` on Redis (``redis://host:port/db``)."""

    def __init__(self, url: str) -> None:
        try:
            from redis.asyncio import Redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("a redis:// store needs the redis extra: pip install 'unimw[redis]'") from exc
        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Reservation:
        args: list[Any] = [int(now * 1000), call_id]
        for counter, amount in zip(counters, amounts, strict=True):
            ttl = counter.window if counter.sliding else max(1.0, counter.ends - now)
            args += [counter.limit, int(ttl * 1000), int(counter.sliding), amount]
        reply = await self._call(self._reserve, _keys(counters), args)
        ok, refused, retry_ms, *totals = (int(x) for x in reply)
        retry_after = None if retry_ms < 0 else retry_ms / 1000
        return Reservation(bool(ok), tuple(totals), refused, retry_after)

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        args: list[Any] = [call_id]
        for counter, before, after in zip(counters, reserved, actual, strict=True):
            args += [int(counter.sliding), before, after]
        return tuple(int(x) for x in await self._call(self._settle, _keys(counters), args))

    async def totals(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        # A reservation with no call id reads every total (after expiring old entries) and takes nothing.
        return (await self.reserve("", counters, [0] * len(counters), now)).totals

    async def once(self, key: str, ttl: float, now: float) -> bool:
        return bool(await _guard(self._redis.set(key, 1, nx=True, px=max(1, int(ttl * 1000)))))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = await _guard(script(keys=keys, args=args))
        return reply


def _keys(counters: Sequence[Counter]) -> list[str]:
    keys: list[str] = []
    for counter in counters:
        keys += [counter.key, counter.key + ":a"]
    return keys


class RedisCacheStore:
    """:class:`~unimw.stores.base.CacheStore` on Redis: each entry a key with its TTL set in Redis."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await _guard(self._redis.get(key))
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await _guard(self._redis.set(key, value, px=max(1, int(ttl * 1000))))

    async def aclose(self) -> None:
        await self._redis.aclose()


async def _guard(awaitable: Any) -> Any:
    from redis.exceptions import ConnectionError, TimeoutError

    try:
        return await awaitable
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unreachable ({type(exc).__name__})") from exc
