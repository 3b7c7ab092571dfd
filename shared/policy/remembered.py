# intent_ref: platform.access-control
"""A bounded, thread-safe memory of values by digest, least recently used dropped first (decisions, policy costs)."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class Remembered(Generic[V]):
    """Values by key (a digest), at most `size` of them, least recently used dropped first; thread-safe."""

    def __init__(self, size: int) -> None:
        """An empty memory of at most `size` values."""
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> V | None:
        """The value remembered for `key`, if any (counted as a hit or a miss)."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return value

    def put(self, key: bytes, value: V) -> None:
        """Remember `value` for `key`, dropping the least recently used beyond the size."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses, size and entries, as `functools.lru_cache` reports them."""
        with self._lock:
            return functools._CacheInfo(self.hits, self.misses, self._size, len(self._entries))

    def keys(self) -> list[bytes]:
        """The keys remembered now."""
        with self._lock:
            return list(self._entries)
