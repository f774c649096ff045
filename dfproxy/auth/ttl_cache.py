"""A cache bounded in size and time, for verified credentials and authorization decisions.

Every entry lives ``ttl`` seconds from when it was put; with one TTL per cache, insertion
order is expiry order, so a plain dict is the queue: the first key is the oldest. When the
cache is full, expired entries go first, then the oldest live one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    __slots__ = ("ttl", "max_entries", "_items")

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        """The live value for ``key``, or None (an expired entry is dropped)."""
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        if self.ttl <= 0:
            return
        items = self._items
        items.pop(key, None)  # re-inserted at the end: its expiry is now the latest
        while len(items) >= self.max_entries:
            oldest = next(iter(items))
            del items[oldest]
        items[key] = (now + self.ttl, value)
        # Expired entries at the front are dropped as new ones come (amortised O(1)).
        for _ in range(2):
            oldest = next(iter(items))
            if items[oldest][0] > now:
                break
            del items[oldest]

    def clear(self) -> None:
        self._items.clear()
