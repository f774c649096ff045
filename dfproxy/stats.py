"""Counters and gauges under Envoy's stat names.

A stat is a tiny object with a ``value`` slot: the hot path does ``stat.value += 1`` on an
object it looked up once at start-up, never a dict lookup by name per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


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

    def computed_gauge(self, name: str, fn: Callable[[], int]) -> None:
        """Register a gauge read through ``fn`` (replaces any earlier one of that name)."""
        self.gauges[name] = ComputedGauge(fn)

    def remove_gauge(self, name: str) -> None:
        self.gauges.pop(name, None)

    def items(self) -> Iterator[tuple[str, int]]:
        """Every stat as (name, value), sorted by name."""
        merged = {name: c.value for name, c in self.counters.items()}
        merged.update((name, g.value) for name, g in self.gauges.items())
        return iter(sorted(merged.items()))

    def reset_counters(self) -> None:
        for c in self.counters.values():
            c.value = 0
