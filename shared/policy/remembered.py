# intent_ref: platform.access-control
"""A bounded, thread-safe memory of values by digest, least recently used dropped first (decisions, policy costs)."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Remembered(Generic[V]):
    """Values by key (a digest), at most `size` of them, least recently used dropped first; thread-safe.

    With `per_owner`, each value is put for an owner (a tenant), and an owner holding that many drops its own least
    recently used first: one owner's flood of distinct keys cannot flush every other owner's values.
    """

    def __init__(self, size: int, *, per_owner: int | None = None) -> None:
        """An empty memory of at most `size` values, and at most `per_owner` of one owner's when given."""
        self._size = size
        self._per_owner = per_owner
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[Hashable, V]] = OrderedDict()
        # Each owner's keys, least recently used first (kept only with `per_owner`); an owner without any is dropped.
        self._owned: dict[Hashable, OrderedDict[bytes, None]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> V | None:
        """The value remembered for `key`, if any (counted as a hit or a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            if self._per_owner is not None:
                self._owned[entry[0]].move_to_end(key)
            return entry[1]

    def put(self, key: bytes, value: V, owner: Hashable = None) -> None:
        """Remember `value` for `key` (as `owner`'s), dropping the least recently used of the owner beyond
        `per_owner`, then of all beyond the size."""
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._disown(previous[0], key)
            self._entries[key] = (owner, value)
            if self._per_owner is not None:
                keys = self._owned.setdefault(owner, OrderedDict())
                keys[key] = None
                while len(keys) > self._per_owner:
                    oldest, _ = keys.popitem(last=False)
                    del self._entries[oldest]
            while len(self._entries) > self._size:
                oldest, (oldest_owner, _) = self._entries.popitem(last=False)
                self._disown(oldest_owner, oldest)

    def _disown(self, owner: Hashable, key: bytes) -> None:
        if self._per_owner is None:
            return
        keys = self._owned[owner]
        del keys[key]
        if not keys:
            del self._owned[owner]

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses, size and entries, as `functools.lru_cache` reports them."""
        with self._lock:
            return functools._CacheInfo(self.hits, self.misses, self._size, len(self._entries))

    def keys(self) -> list[bytes]:
        """The keys remembered now."""
        with self._lock:
            return list(self._entries)
