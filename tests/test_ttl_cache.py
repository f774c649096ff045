"""dfproxy.auth.ttl_cache and dfproxy.auth.failure_limiter: bounded in size and time."""

from __future__ import annotations

from dfproxy.auth.failure_limiter import FailureLimiter, client_address
from dfproxy.auth.ttl_cache import TtlCache


def test_entries_expire() -> None:
    c: TtlCache[str, int] = TtlCache(ttl=5.0, max_entries=10)
    c.put("a", 1, now=100.0)
    assert c.get("a", 104.9) == 1
    assert c.get("a", 105.0) is None
    assert len(c) == 0


def test_size_is_bounded_oldest_first() -> None:
    c: TtlCache[int, int] = TtlCache(ttl=60.0, max_entries=3)
    for i in range(5):
        c.put(i, i, now=float(i))
    assert len(c) == 3
    assert [c.get(i, 10.0) for i in range(5)] == [None, None, 2, 3, 4]
    c.put(2, 20, now=11.0)  # re-put: becomes the newest
    c.put(5, 5, now=12.0)
    assert c.get(2, 13.0) == 20 and c.get(3, 13.0) is None


def test_expired_entries_are_dropped_as_new_ones_come() -> None:
    c: TtlCache[int, int] = TtlCache(ttl=1.0, max_entries=100)
    for i in range(50):
        c.put(i, i, now=float(i))
    assert len(c) <= 3


def test_zero_ttl_stores_nothing() -> None:
    c: TtlCache[str, int] = TtlCache(ttl=0.0, max_entries=10)
    c.put("a", 1, 0.0)
    assert c.get("a", 0.0) is None


def test_failure_limit_blocks_until_the_window_ends() -> None:
    f = FailureLimiter(max_failures=3, window=60.0, max_tracked=100)
    for t in (0.0, 1.0):
        f.record_failure("10.0.0.1", t)
    assert f.blocked_for("10.0.0.1", 2.0) == 0.0
    f.record_failure("10.0.0.1", 2.0)
    assert f.blocked_for("10.0.0.1", 3.0) == 57.0
    assert f.blocked_for("10.0.0.2", 3.0) == 0.0
    assert f.blocked_for("10.0.0.1", 60.0) == 0.0  # window over: forgotten
    assert len(f) == 0


def test_failure_table_is_bounded() -> None:
    f = FailureLimiter(max_failures=1, window=60.0, max_tracked=2)
    for i in range(3):
        f.record_failure(f"10.0.0.{i}", float(i))
    assert len(f) == 2
    assert f.blocked_for("10.0.0.0", 3.0) == 0.0  # the oldest was forgotten
    assert f.blocked_for("10.0.0.2", 3.0) > 0


def test_client_address() -> None:
    assert client_address("127.0.0.1:5555") == "127.0.0.1"
    assert client_address("[::1]:5555") == "::1"
    assert client_address("") == ""
