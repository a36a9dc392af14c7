"""A tenant's calls in flight counted across every replica, in Redis (a plan's ``max_concurrent`` on ``redis://``).

Each call in flight holds a lease: a member of the sorted set
``unimw:inflight:<tenant>`` whose score is when the lease runs out
(milliseconds since the epoch). Taking a place is one Lua script: leases
run out are dropped, the rest counted, and one more added if under the
limit, so two replicas cannot both take the last place. Giving it back is
one ZREM. The process renews the leases of its calls still in flight every
:data:`LEASE` / 3 seconds, all in one round trip, so a long stream keeps its
place while a process that died frees its places within :data:`LEASE`.
"""

from __future__ import annotations

from collections.abc import Sequence

from unimw.stores.redis import _client, _guard

PREFIX = "unimw:inflight:"
#: Seconds a lease lasts unless renewed: how long the places of a process that died stay taken.
LEASE = 30.0

# KEYS[1]: the tenant's set. ARGV: now_ms, limit, lease id, lease_ms. Returns 1 when the place is taken.
_TAKE = """
local key, now = KEYS[1], tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', key, now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', key, ARGV[4])
return 1
"""


class RedisSlots:
    """Places under tenants' concurrency limits, shared through Redis (``redis://host:port/db``)."""

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self._redis = _client(url)
        self._prefix = prefix
        self._take = self._redis.register_script(_TAKE)

    async def take(self, tenant: str, limit: int, lease: str, now: float) -> bool:
        args: list[str | int] = [int(now * 1000), limit, lease, int(LEASE * 1000)]
        return bool(await _guard(self._redis, self._take(keys=[self._prefix + tenant], args=args)))

    async def give_back(self, tenant: str, lease: str) -> None:
        await _guard(self._redis, self._redis.zrem(self._prefix + tenant, lease))

    async def renew(self, leases: Sequence[tuple[str, str]], now: float) -> None:
        """Extend ``leases`` (tenant, lease id) by :data:`LEASE` from ``now``; one given back meanwhile stays gone."""
        until = int((now + LEASE) * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, lease in leases:
                pipe.zadd(self._prefix + tenant, {lease: until}, xx=True)
                pipe.pexpire(self._prefix + tenant, int(LEASE * 1000))
            await _guard(self._redis, pipe.execute())

    async def aclose(self) -> None:
        await self._redis.aclose()
