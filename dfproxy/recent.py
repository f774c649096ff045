"""What the dashboard shows of the recent past: the last access-log entries and a per-second
request-rate series, each a small bounded ring kept in the process.

The access-log ring costs one deque append per request when an access log is configured (the
entry is built anyway). Without one, entries are built only while the dashboard is watching:
``RecentRequests.want()`` (called by each poll of ``/access_log``) plugs the ring in as the
listeners' access log for ``WATCH_WINDOW`` seconds, and a timer unplugs it after the last poll.

The rate series is sampled once a second from the listeners' counters (a few attribute reads)
and keeps per-second deltas, so the supervisor can sum workers' series second by second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dfproxy.access_log import LogEntry, entry_dict

if TYPE_CHECKING:
    from dfproxy.listener import Listener

RECENT_ENTRIES = 100  # access-log entries kept for the dashboard
SERIES_SECONDS = 300  # five minutes of one-second samples
WATCH_WINDOW = 30.0  # seconds entries are built after the last /access_log poll
UNPLUG_CHECK = 5.0


class RecentRequests:
    """The last ``RECENT_ENTRIES`` access-log entries; a duck-typed access log (``log``)."""

    def __init__(self, entries: deque[LogEntry] | None = None) -> None:
        # With a file access log, its own ring (AccessLog.recent) is shared: always filled.
        self.entries: deque[LogEntry] = (
            entries if entries is not None else deque(maxlen=RECENT_ENTRIES)
        )
        self.always = entries is not None
        self.watched_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._plugged: list[Listener] = []

    def log(self, entry: LogEntry) -> None:
        self.entries.append(entry)

    def want(self, listeners: Iterable[Listener], loop: asyncio.AbstractEventLoop) -> None:
        """The dashboard is watching: make sure every listener feeds the ring (listeners a
        reload created since the last poll included)."""
        if self.always:
            return
        self.watched_until = time.monotonic() + WATCH_WINDOW
        for listener in listeners:
            if listener.access_log is None:
                _plug(listener, self)
                self._plugged.append(listener)
        if self._timer is None:
            self._timer = loop.call_later(UNPLUG_CHECK, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if time.monotonic() < self.watched_until:
            self._timer = loop.call_later(UNPLUG_CHECK, self._check, loop)
            return
        for listener in self._plugged:
            sink: object = listener.access_log
            if sink is self:
                _plug(listener, None)
        self._plugged.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def view(self, limit: int) -> dict[str, Any]:
        items = list(self.entries)[-limit:] if limit > 0 else []
        return {"entries": [entry_dict(e) for e in items], "always": self.always}


def _plug(listener: Listener, sink: RecentRequests | None) -> None:
    """Set the access log of ``listener`` and of its open connections (each connection
    keeps its own reference, read once per request)."""
    listener.access_log = sink
    for conn in listener.connections:
        conn.access_log = sink


# Columns of one sample: the epoch second, then requests finished in that second by class.
SERIES_COLUMNS = ("t", "rq", "1xx", "2xx", "3xx", "4xx", "5xx")


class RateSeries:
    """Requests per second by status class over the last ``SERIES_SECONDS`` seconds."""

    def __init__(self, read: Callable[[], list[int]], loop: asyncio.AbstractEventLoop) -> None:
        self.read = read  # current cumulative [rq_total, 1xx..5xx]
        self.samples: deque[list[int]] = deque(maxlen=SERIES_SECONDS)
        self.loop = loop
        self.last = read()
        self._timer: asyncio.TimerHandle | None = loop.call_later(1.0, self._sample)

    def _sample(self) -> None:
        now = self.read()
        # max(0, ...): /reset_counters (or a reload renaming a listener) moves counters back.
        delta = [max(0, a - b) for a, b in zip(now, self.last, strict=True)]
        self.last = now
        self.samples.append([int(time.time()), *delta])
        self._timer = self.loop.call_later(1.0, self._sample)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def view(self) -> dict[str, Any]:
        return {
            "interval_seconds": 1,
            "columns": list(SERIES_COLUMNS),
            "samples": list(self.samples),
        }


def merge_series(views: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' series as one: samples of the same epoch second summed."""
    by_t: dict[int, list[int]] = {}
    for view in views:
        for sample in view["samples"]:
            have = by_t.get(sample[0])
            if have is None:
                by_t[sample[0]] = list(sample)
            else:
                for i in range(1, len(have)):
                    have[i] += sample[i]
    samples = [by_t[t] for t in sorted(by_t)][-SERIES_SECONDS:]
    return {"interval_seconds": 1, "columns": list(SERIES_COLUMNS), "samples": samples}


def merge_entries(views: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """Workers' recent entries as one list, oldest first, by start time."""
    entries = [e for view in views for e in view["entries"]]
    entries.sort(key=lambda e: str(e.get("start_time", "")))
    return {
        "entries": entries[-limit:] if limit > 0 else [],
        "always": all(v.get("always") for v in views),
    }
