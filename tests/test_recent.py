"""recent: the dashboard's access-log ring (plugged in only while watched) and rate series."""

from __future__ import annotations

from collections import deque
from typing import Any

from dfproxy.access_log import LogEntry
from dfproxy.recent import (
    RECENT_ENTRIES,
    SERIES_COLUMNS,
    RateSeries,
    RecentRequests,
    merge_entries,
    merge_series,
)


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        self.timers.append((delay, fn, args))
        return self

    def cancel(self) -> None:
        pass

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _, fn, args in timers:
            fn(*args)


class Obj:
    def __init__(self) -> None:
        self.access_log: Any = None
        self.connections: set[Obj] = set()


def _entry(status: int, t: float = 1.0) -> LogEntry:
    return LogEntry(t, "GET", "/x", "HTTP/1.1", status, "", 0, 10, 1, None, None, None, "a", None)


def test_ring_is_bounded_and_renders_json_access_log_fields() -> None:
    ring = RecentRequests()
    for i in range(RECENT_ENTRIES + 20):
        ring.log(_entry(200 + i % 3))
    view = ring.view(limit=5)
    assert len(ring.entries) == RECENT_ENTRIES and len(view["entries"]) == 5
    assert view["entries"][-1]["response_code"] == 200 + (RECENT_ENTRIES + 19) % 3
    assert {"start_time", "method", "authority", "response_flags"} <= set(view["entries"][0])
    assert ring.view(limit=0)["entries"] == []


def test_without_an_access_log_entries_are_built_only_while_watched() -> None:
    loop = FakeLoop()
    listener, conn = Obj(), Obj()
    listener.connections.add(conn)
    ring = RecentRequests()
    ring.want([listener], loop)  # type: ignore[arg-type]
    assert listener.access_log is ring and conn.access_log is ring
    ring.want([listener], loop)  # type: ignore[arg-type]  # polled again: one timer
    assert len(loop.timers) == 1
    loop.fire()  # still watched: checks again later
    assert listener.access_log is ring and len(loop.timers) == 1
    ring.watched_until = 0.0  # the dashboard stopped polling
    loop.fire()
    assert listener.access_log is None and conn.access_log is None and not loop.timers


def test_a_file_access_log_ring_is_shared_and_never_unplugged() -> None:
    shared: deque[LogEntry] = deque(maxlen=RECENT_ENTRIES)
    ring = RecentRequests(shared)
    listener = Obj()
    listener.access_log = "the file log"
    ring.want([listener], FakeLoop())  # type: ignore[arg-type]
    assert listener.access_log == "the file log"
    shared.append(_entry(204))
    assert ring.view(10)["entries"][0]["response_code"] == 204 and ring.view(10)["always"]


def test_rate_series_keeps_per_second_deltas() -> None:
    loop = FakeLoop()
    counts = [0, 0, 0, 0, 0, 0]
    series = RateSeries(lambda: list(counts), loop)  # type: ignore[arg-type]
    counts[:] = [10, 0, 5, 0, 3, 2]
    loop.fire()
    counts[:] = [0, 0, 0, 0, 0, 0]  # /reset_counters: no negative rate
    loop.fire()
    view = series.view()
    assert view["columns"] == list(SERIES_COLUMNS)
    assert [s[1:] for s in view["samples"]] == [[10, 0, 5, 0, 3, 2], [0] * 6]


def test_merge_series_sums_the_same_second_and_entries_interleave_by_time() -> None:
    a = {"samples": [[100, 1, 0, 1, 0, 0, 0], [101, 2, 0, 2, 0, 0, 0]]}
    b = {"samples": [[101, 3, 0, 0, 0, 3, 0], [102, 1, 0, 0, 0, 0, 1]]}
    merged = merge_series([a, b])["samples"]
    assert merged == [[100, 1, 0, 1, 0, 0, 0], [101, 5, 0, 2, 0, 3, 0], [102, 1, 0, 0, 0, 0, 1]]
    e1 = {"entries": [{"start_time": "2026-01-01T00:00:01.000Z", "n": 1}], "always": True}
    e2 = {"entries": [{"start_time": "2026-01-01T00:00:00.500Z", "n": 2}], "always": True}
    entries = merge_entries([e1, e2], 10)
    assert [e["n"] for e in entries["entries"]] == [2, 1] and entries["always"]
