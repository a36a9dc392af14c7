"""Stores behind small async protocols, chosen in policies.yaml by URL.

``memory://`` keeps everything in this process (``memory://?max_counters=N``
bounds its live limit counters); ``redis://host:port/db`` shares it between
every replica of the app (its pool is set in the URL, see
:mod:`unimw.stores.redis`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unimw.stores.base import CacheStore, LimitStore


def limit_store(url: str) -> LimitStore:
    """The limit store for a ``memory://`` or ``redis://`` URL."""
    if url.startswith("memory://"):
        from unimw.stores.memory import MemoryLimitStore

        return MemoryLimitStore(**_memory_options(url))
    from unimw.stores.redis import RedisLimitStore

    return RedisLimitStore(url)


def cache_store(url: str, *, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> CacheStore:
    """The response cache store for a ``memory://`` or ``redis://`` URL (Redis bounds itself)."""
    if url.startswith("memory://"):
        from unimw.stores.memory import MemoryCacheStore

        return MemoryCacheStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
    from unimw.stores.redis import RedisCacheStore

    return RedisCacheStore(url)


#: The query options a ``redis://`` store URL may carry: those the Redis client reads from a URL, plus its name.
REDIS_OPTIONS = frozenset(
    {
        "db", "health_check_interval", "max_connections", "protocol", "retry_on_timeout", "socket_connect_timeout",
        "socket_keepalive", "socket_read_size", "socket_timeout", "ssl_check_hostname", "timeout", "client_name",
    }
)  # fmt: skip


def check_url(url: str) -> None:
    """Raise ``ValueError`` for a store URL whose options the store would refuse (or, for Redis, fail on
    only at its first call): checked when the policy is read, so ``unimw check`` names the line."""
    if url.startswith("memory://"):
        _memory_options(url)
        return
    from urllib.parse import parse_qsl, urlsplit  # with the policy: the steps import this package, not its URLs

    if unknown := sorted({name for name, _ in parse_qsl(urlsplit(url).query)} - REDIS_OPTIONS):
        raise ValueError(
            f"unknown Redis store option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(REDIS_OPTIONS))}"
        )


def _memory_options(url: str) -> dict[str, int]:
    """The options of a ``memory://`` limit store URL; an unknown or malformed one is a configuration error."""
    from urllib.parse import parse_qsl, urlsplit

    options: dict[str, int] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=False):
        if name != "max_counters":
            raise ValueError(f"unknown memory:// store option {name!r}: the only one is max_counters")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"max_counters must be a positive integer, got {value!r}")
        options[name] = int(value)
    return options
