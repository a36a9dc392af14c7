"""Stores behind small async protocols, chosen in policies.yaml by URL.

``memory://`` keeps everything in this process; ``redis://host:port/db``
shares it between every replica of the app.
"""

from __future__ import annotations

from unimw.stores.base import LimitStore


def limit_store(url: str) -> LimitStore:
    """The limit store for a ``memory://`` or ``redis://`` URL."""
    if url.startswith("memory://"):
        from unimw.stores.memory import MemoryLimitStore

        return MemoryLimitStore()
    from unimw.stores.redis import RedisLimitStore

    return RedisLimitStore(url)
