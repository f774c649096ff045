"""Counters and gauges under Envoy's stat names.

A stat is a tiny object with a ``value`` slot: the hot path does ``stat.value += 1`` on an
object it looked up once at start-up, never a dict lookup by name per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def dec(self, n: int = 1) -> None:
        self.value -= n

    def set(self, value: int) -> None:
        self.value = value


# Envoy's default histogram bucket bounds, in milliseconds.
BUCKETS_MS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)


# The same bounds as floats for record(): float-to-float comparisons take CPython's fast
# path, int-to-float ones do not (bisect: 2,500 -> 1,800 instructions, callgrind).
_FLOAT_BOUNDS = tuple(float(b) for b in BUCKETS_MS)


class Histogram:
    """Counts per bucket (Envoy's bounds), plus sum and count; quantiles are estimated from
    the buckets when read."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def record(self, ms: float) -> None:
        self.counts[bisect_left(_FLOAT_BOUNDS, ms)] += 1
        self.sum += ms
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated inside its bucket (None when empty)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        lower = 0.0
        for i, n in enumerate(self.counts):
            upper = BUCKETS_MS[i] if i < len(BUCKETS_MS) else lower * 2 or 1.0
            if n and seen + n >= rank:
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
            lower = upper
        return lower

    def reset(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum = 0.0
        self.count = 0


class ComputedGauge:
    """A gauge whose value is computed when read (admin), not maintained on the hot path."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], int]) -> None:
        self.fn = fn

    @property
    def value(self) -> int:
        return self.fn()


class StatsStore:
    """All stats of one process, by full name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge | ComputedGauge] = {}
        self.histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        stat = self.counters.get(name)
        if stat is None:
            stat = self.counters[name] = Counter()
        return stat

    def gauge(self, name: str) -> Gauge:
        stat = self.gauges.get(name)
        if not isinstance(stat, Gauge):
            stat = self.gauges[name] = Gauge()
        return stat

    def histogram(self, name: str) -> Histogram:
        stat = self.histograms.get(name)
        if stat is None:
            stat = self.histograms[name] = Histogram()
        return stat

    def computed_gauge(self, name: str, fn: Callable[[], int]) -> None:
        """Register a gauge read through ``fn`` (replaces any earlier one of that name)."""
        self.gauges[name] = ComputedGauge(fn)

    def remove_gauge(self, name: str) -> None:
        self.gauges.pop(name, None)

    def reset_counters(self) -> None:
        for c in self.counters.values():
            c.value = 0
        for h in self.histograms.values():
            h.reset()
