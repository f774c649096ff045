"""Envoy's local rate limit token bucket, as pure logic over an injected clock.

Envoy (``source/common/common/token_bucket_impl.cc`` and the local_ratelimit filter): the
bucket starts full with ``max_tokens``; every ``fill_interval`` it gains ``tokens_per_fill``,
never above ``max_tokens``; each request takes one token or is limited. Filling is discrete,
as Envoy's timer-driven bucket, and done lazily here: the elapsed whole intervals are added
when the bucket is next looked at, so an idle bucket costs nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """One bucket. ``consume()`` takes a token and says whether there was one."""

    __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval", "tokens", "last_fill", "clock")

    def __init__(
        self,
        max_tokens: int,
        tokens_per_fill: int = 1,
        fill_interval: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval
        self.tokens = max_tokens
        self.clock = clock
        self.last_fill = clock()

    def _refill(self, now: float) -> None:
        elapsed = now - self.last_fill
        if elapsed >= self.fill_interval:
            fills = int(elapsed / self.fill_interval)
            self.tokens = min(self.max_tokens, self.tokens + fills * self.tokens_per_fill)
            self.last_fill += fills * self.fill_interval

    def consume(self) -> bool:
        """Take one token; False when the bucket is empty (the request is limited)."""
        self._refill(self.clock())
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False

    def remaining(self) -> int:
        """Tokens left now (``x-ratelimit-remaining``)."""
        self._refill(self.clock())
        return self.tokens

    def reset_after(self) -> float:
        """Seconds until the next fill (``x-ratelimit-reset``)."""
        now = self.clock()
        self._refill(now)
        return max(0.0, self.last_fill + self.fill_interval - now)


class BucketMap:
    """A bucket per distinct descriptor value, at most ``max_buckets`` of them: the least
    recently used is dropped first, so a client sending random header values cannot grow
    memory without bound (a dropped bucket restarts full, which only errs towards allowing)."""

    __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval", "max_buckets", "clock", "_b")

    def __init__(
        self,
        max_tokens: int,
        tokens_per_fill: int,
        fill_interval: float,
        max_buckets: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval
        self.max_buckets = max_buckets
        self.clock = clock
        self._b: OrderedDict[object, TokenBucket] = OrderedDict()

    def get(self, key: object) -> TokenBucket:
        """The bucket for ``key`` (made full on first use)."""
        buckets = self._b
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_buckets:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(
                self.max_tokens, self.tokens_per_fill, self.fill_interval, self.clock
            )
        else:
            buckets.move_to_end(key)
        return bucket

    def __len__(self) -> int:
        return len(self._b)
