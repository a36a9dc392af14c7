"""Adapters for tenants' own provider keys (bring your own key).

A tenant that brings its own key for a provider has its calls to that
provider made with that key: through an adapter of the provider's kind,
built from the policy's provider with the tenant's key in place of the
policy's, and with a :class:`~unimw.redaction.Redactor` that knows that key.
Each adapter keeps a pool of connections, so they are kept in an LRU of at
most ``max_adapters``: the connection pools held across tenants are bounded
whatever the number of tenants. The LRU is keyed by the SHA-256 of each
key, never the key itself (the adapter holds the key, as a policy adapter
holds the policy's).

A call holds its adapter through a :class:`Lease`, from the start of an
upstream attempt until its answer is complete or its stream has ended or
been closed. An adapter pushed out of the LRU while calls hold it is closed
when the last of them releases it, never under them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unimw.adapters import adapter_class
from unimw.adapters.base import Adapter
from unimw.redaction import Redactor, provider_secrets

if TYPE_CHECKING:
    from unimw.policy import Provider

#: Tenant keys whose adapters are kept by default: each holds a pool of connections.
MAX_ADAPTERS = 256


class Lease:
    """An adapter and the redactor for its errors, held for one upstream attempt and then released.

    A lease made without ``release`` (a policy provider's adapter, which
    lives as long as the gateway) is permanent: releasing it does nothing.
    Releasing twice counts once.
    """

    __slots__ = ("_release", "adapter", "redactor")

    def __init__(
        self, adapter: Adapter, redactor: Redactor, release: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.adapter = adapter
        self.redactor = redactor
        self._release = release

    async def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


@dataclass(slots=True, eq=False)
class _Entry:
    adapter: Adapter
    redactor: Redactor
    leases: int = 0
    evicted: bool = False
    closed: bool = False


class OwnKeys:
    """Adapters for tenants' own keys to the policy's ``providers``, one per (provider name, key).

    Close it (:meth:`aclose`) with the gateway: that closes every adapter it
    made, kept or leased.
    """

    def __init__(self, providers: Mapping[str, Provider], *, max_adapters: int = MAX_ADAPTERS) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be at least 1, got {max_adapters}")
        self._providers = providers
        self._max = max_adapters
        self._kept: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        #: Pushed out of the LRU while leased: closed by their last release, or by aclose.
        self._lent: set[_Entry] = set()

    def __len__(self) -> int:
        """How many adapters the LRU keeps (those evicted but still leased aside)."""
        return len(self._kept)

    @property
    def open(self) -> int:
        """How many adapters are open: those the LRU keeps, and those evicted but still leased."""
        return len(self._kept) + len(self._lent)

    async def acquire(self, provider: str, key: str) -> Lease:
        """A lease on the adapter calling ``provider`` (a name in the policy) with ``key``; release it when done."""
        slot = (provider, hashlib.sha256(key.encode()).digest())
        entry = self._kept.get(slot)
        stale: list[_Entry] = []
        if entry is None:
            entry = self._build(self._providers[provider], key)
            self._kept[slot] = entry
            stale = self._evict()
        else:
            self._kept.move_to_end(slot)
        # Leased before any await, so a concurrent acquire cannot evict and close it under this call.
        entry.leases += 1
        lease = Lease(entry.adapter, entry.redactor, lambda: self._unlease(entry))
        try:
            await _close(stale)
        except BaseException:
            await lease.release()
            raise
        return lease

    async def aclose(self) -> None:
        """Close every adapter, leased or not; a release after this closes nothing."""
        entries = [*self._kept.values(), *self._lent]
        self._kept.clear()
        self._lent.clear()
        await _close(entries)

    @staticmethod
    def _build(provider: Provider, key: str) -> _Entry:
        from pydantic import SecretStr  # loaded with the policy this provider is part of

        own = provider.model_copy(update={"api_key": SecretStr(key)})
        return _Entry(adapter_class(own.kind)(own), Redactor(provider_secrets(own)))

    def _evict(self) -> list[_Entry]:
        """Push the least recently used out past the bound; those no call holds, to close now."""
        idle: list[_Entry] = []
        while len(self._kept) > self._max:
            _, entry = self._kept.popitem(last=False)
            entry.evicted = True
            if entry.leases:
                self._lent.add(entry)
            else:
                idle.append(entry)
        return idle

    async def _unlease(self, entry: _Entry) -> None:
        entry.leases -= 1
        if entry.evicted and not entry.leases:
            self._lent.discard(entry)
            await _close((entry,))


async def _close(entries: Iterable[_Entry]) -> None:
    """Close each entry's adapter once; every one is tried even if one fails."""
    failure: BaseException | None = None
    for entry in entries:
        if entry.closed:
            continue
        entry.closed = True
        try:
            await entry.adapter.aclose()
        except BaseException as error:  # the others are closed all the same; the first failure is raised
            failure = failure or error
    if failure is not None:
        raise failure
