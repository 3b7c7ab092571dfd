# intent_ref: platform.hardening
"""Per-tenant parse limiters kept per running event loop.

An anyio limiter belongs to the event loop that waits on it: its waiters are that loop's futures, woken by its
releases. One limiter shared by every loop (a module-global one, with the HTTP API or process_batch run on a few
threads, each with its own loop) had a waiter woken from another loop's thread that was never resumed, and the loops
after the first hung. `LoopTenantParses` therefore keeps a `TenantParses` per (running loop, tenant), and holds the
loops weakly, so that its memory stays bounded by the loops alive and their tenants. A process that runs one loop
(the worker's) has one set of limiters, which bound a tenant's parses per process as before.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from uuid import UUID

import anyio

from shared.accepted_json import TenantParses

__all__ = ["LoopTenantParses"]


class LoopTenantParses:
    """Per running event loop, a `TenantParses` of `size` parses at once per tenant (made on the loop's first
    parse, forgotten with the loop)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TenantParses] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def of(self, tenant_id: UUID) -> anyio.CapacityLimiter:
        """The tenant's limiter on the running event loop (RuntimeError when none runs)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            parses = self._by_loop.get(loop)
            if parses is None:
                parses = self._by_loop[loop] = TenantParses(self._size)
        return parses.of(tenant_id)

    def made(self, tenant_id: UUID) -> list[anyio.CapacityLimiter]:
        """The tenant's limiters made so far, one per loop still alive that has parsed one of its bodies."""
        with self._lock:
            loops = list(self._by_loop.values())
        found: list[anyio.CapacityLimiter] = []
        for parses in loops:
            try:
                found.append(parses[tenant_id])
            except KeyError:
                continue
        return found
