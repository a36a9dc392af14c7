"""Limits in Redis, shared by every replica of the app.

A reservation over any number of counters is one Lua script (one round
trip), so two replicas can never both take the last unit; settling is
another, which the gateway makes after the call's answer is sent
(``settles_later``), so a call waits for one round trip, not two. Sliding
counters are a sorted set of call ids by time plus a hash of their amounts
and running total; calendar counters are plain integers. Every key expires
with its window.

Connections come from a blocking pool: at most ``max_connections`` (50 by
default) and a call waits up to ``timeout`` seconds (5 by default) for a free
one, so a burst of concurrent calls queues instead of failing. Both are read
from the store URL by redis-py, as are its socket options:
``redis://127.0.0.1:6379/0?max_connections=20&timeout=2&socket_timeout=1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unimw.stores.base import Counter, Reservation, StoreUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Pool defaults; the URL's ``max_connections`` and ``timeout`` (the wait for a free connection) win.
POOL_DEFAULTS: dict[str, Any] = {
    "max_connections": 50,
    "timeout": 5.0,
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}

# KEYS: per counter two keys (sorted set, hash) for sliding, (integer, unused) for fixed.
# ARGV: now_ms, call_id ('' to only read), then per counter: limit, window_ms, sliding (1/0), amount.
_RESERVE = """
local now = tonumber(ARGV[1])
local id = ARGV[2]
local n = (#ARGV - 2) / 4
local totals = {}
local refused = 0
for i = 1, n do
  local limit, window = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local sliding, amount = ARGV[4*i+1] == '1', tonumber(ARGV[4*i+2])
  local z, h = KEYS[2*i-1], KEYS[2*i]
  if sliding then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
    for _, member in ipairs(old) do
      redis.call('HINCRBY', h, '_total', -tonumber(redis.call('HGET', h, member) or '0'))
      redis.call('HDEL', h, member)
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window) end
    totals[i] = tonumber(redis.call('HGET', h, '_total') or '0')
  else
    totals[i] = tonumber(redis.call('GET', z) or '0')
  end
  -- The first counter that does not fit is refused; every total is still read (one per counter).
  if refused == 0 and id ~= '' and totals[i] + amount > limit then refused = i end
end
if refused > 0 then
  local i = refused
  local limit, window = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local sliding, amount = ARGV[4*i+1] == '1', tonumber(ARGV[4*i+2])
  local z, h = KEYS[2*i-1], KEYS[2*i]
  local retry = -1
  if amount <= limit then
    if sliding then
      local need, freed = totals[i] + amount - limit, 0
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

    #: A settlement is a round trip: the gateway runs it after the answer is sent (see LimitStore).
    settles_later = True

    def __init__(self, url: str) -> None:
        self._redis = _client(url)
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
        return bool(await _guard(self._redis, self._redis.set(key, 1, nx=True, px=max(1, int(ttl * 1000)))))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = await _guard(self._redis, script(keys=keys, args=args))
        return reply


def _keys(counters: Sequence[Counter]) -> list[str]:
    keys: list[str] = []
    for counter in counters:
        keys += [counter.key, counter.key + ":a"]
    return keys


class RedisCacheStore:
    """:class:`~unimw.stores.base.CacheStore` on Redis: each entry a key with its TTL set in Redis."""

    def __init__(self, url: str) -> None:
        self._redis = _client(url)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await _guard(self._redis, self._redis.get(key))
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await _guard(self._redis, self._redis.set(key, value, px=max(1, int(ttl * 1000))))

    async def delete(self, key: str) -> bool:
        return bool(await _guard(self._redis, self._redis.delete(key)))

    async def aclose(self) -> None:
        await self._redis.aclose()


def _client(url: str) -> Redis:
    """A client on a blocking pool: a busy pool makes a call wait (bounded), it is not a failure."""
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("a redis:// store needs the redis extra: pip install 'unimw[redis]'") from exc
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **POOL_DEFAULTS))


async def _guard(client: Redis, awaitable: Any) -> Any:
    """Await a Redis call, mapping its failures to StoreUnavailable with what went wrong."""
    from redis.asyncio import BlockingConnectionPool
    from redis.exceptions import ConnectionError, TimeoutError

    try:
        return await awaitable
    except ConnectionError as exc:
        # The pool raises ConnectionError from the builtin TimeoutError when no connection came free in time.
        pool = client.connection_pool
        if isinstance(exc.__cause__, asyncio.TimeoutError) and isinstance(pool, BlockingConnectionPool):
            raise StoreUnavailable(
                f"Redis connection pool busy: no connection free within {pool.timeout:g} s "
                f"(max_connections={pool.max_connections})"
            ) from exc
        raise StoreUnavailable(f"Redis is unreachable ({type(exc).__name__}: {exc})") from exc
    except TimeoutError as exc:
        raise StoreUnavailable(f"Redis did not answer in time ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise StoreUnavailable(f"Redis is unreachable ({type(exc).__name__}: {exc})") from exc
