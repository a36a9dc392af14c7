"""Stores behind small async protocols, chosen in policies.yaml by URL.

``memory://`` keeps everything in this process; ``redis://host:port/db``
shares it between every replica of the app.
"""

from __future__ import annotations

from collections.abc import Callable

from unimw.stores.base import CacheStore, LimitStore


def limit_store(url: str) -> LimitStore:
    """The limit store for a ``memory://`` or ``redis://`` URL."""
    if url.startswith("memory://"):
        from unimw.stores.memory import MemoryLimitStore

        return MemoryLimitStore()
    from unimw.stores.redis import RedisLimitStore

    return RedisLimitStore(url)


def cache_store(url: str, *, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> CacheStore:
    """The response cache store for a ``memory://`` or ``redis://`` URL (Redis bounds itself)."""
    if url.startswith("memory://"):
        from unimw.stores.memory import MemoryCacheStore

        return MemoryCacheStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
    from unimw.stores.redis import RedisCacheStore

    return RedisCacheStore(url)
