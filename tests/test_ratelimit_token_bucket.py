"""The local token bucket (Envoy's discrete fill) and the per-descriptor bucket map, driven by
an injected clock."""

from __future__ import annotations

import pytest

from dfproxy.ratelimit.token_bucket import BucketMap, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_starts_full_then_limits() -> None:
    clock = Clock()
    b = TokenBucket(3, 1, 1.0, clock)
    assert [b.consume() for _ in range(4)] == [True, True, True, False]
    assert b.remaining() == 0


def test_fills_by_whole_intervals_only() -> None:
    clock = Clock()
    b = TokenBucket(5, 2, 10.0, clock)
    for _ in range(5):
        assert b.consume()
    clock.now += 9.99
    assert not b.consume()  # no partial fill (Envoy's timer adds tokens per interval)
    assert b.reset_after() == pytest.approx(0.01)
    clock.now += 0.01
    assert b.remaining() == 2
    clock.now += 25.0  # two more intervals, the half interval is kept for the next fill
    assert b.remaining() == 5  # capped at max_tokens
    assert b.reset_after() == pytest.approx(5.0)


def test_never_above_max_after_a_long_idle() -> None:
    clock = Clock()
    b = TokenBucket(2, 1, 0.05, clock)
    clock.now += 1e6
    assert b.remaining() == 2
    assert [b.consume() for _ in range(3)] == [True, True, False]


def test_bucket_map_one_bucket_per_value_bounded() -> None:
    clock = Clock()
    m = BucketMap(1, 1, 60.0, max_buckets=2, clock=clock)
    assert m.get("a").consume()
    assert not m.get("a").consume()
    assert m.get("b").consume()
    m.get("a")  # a is now the most recently used
    assert m.get("c").consume()  # evicts b
    assert len(m) == 2
    assert not m.get("a").consume()  # a kept its state
    assert m.get("b").consume()  # b restarted full (dropping errs towards allowing)
