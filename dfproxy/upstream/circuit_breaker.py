"""Cluster circuit breakers: Envoy's resource manager for one cluster (default priority).

Envoy semantics (reference §5.3, §8.5): the limits apply to the dynamic forward proxy cluster
as a whole. A request over ``max_requests``, a request that would wait for a connection past
``max_pending_requests`` and a retry past ``max_retries`` fail fast with 503 and flag UO; a new
connection past ``max_connections`` is not opened (``upstream_cx_overflow``) and the request
waits as pending instead. Nothing queues without bound.

Stats, under ``cluster.<name>.``: ``circuit_breakers.default.{cx_open, cx_pool_open,
rq_pending_open, rq_open, rq_retry_open}`` (0/1 gauges), with ``track_remaining`` also
``remaining_cx``, ``remaining_pending``, ``remaining_rq``, ``remaining_retries`` (absent
otherwise, as Envoy's null gauges), and the counters ``upstream_cx_overflow``,
``upstream_rq_pending_overflow``, ``upstream_rq_retry_overflow``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfproxy.stats import Counter, StatsStore


@dataclass(frozen=True)
class Thresholds:
    """Gloo CircuitBreakerConfig / Envoy Thresholds; defaults are Envoy's."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False


class Resource:
    """One counted resource and its limit. The hot path only adds and subtracts; the open
    and remaining gauges are computed when stats are read."""

    __slots__ = ("limit", "count")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def can_create(self) -> bool:
        return self.count < self.limit

    def acquire(self) -> None:
        self.count += 1

    def release(self) -> None:
        self.count -= 1

    def is_open(self) -> int:
        return 1 if self.count >= self.limit else 0

    def remaining(self) -> int:
        return max(0, self.limit - self.count)


class CircuitBreakers:
    """The four resources of one cluster."""

    def __init__(self, thresholds: Thresholds, stats: StatsStore, cluster: str) -> None:
        self.thresholds = thresholds
        prefix = f"cluster.{cluster}."
        cb = prefix + "circuit_breakers.default."
        track = thresholds.track_remaining

        def res(limit: int, open_name: str, remaining_name: str) -> Resource:
            r = Resource(limit)
            stats.computed_gauge(cb + open_name, r.is_open)
            if track:  # without track_remaining Envoy's remaining_* are null gauges: absent
                stats.computed_gauge(cb + remaining_name, r.remaining)
            return r

        self.connections = res(thresholds.max_connections, "cx_open", "remaining_cx")
        self.pending = res(thresholds.max_pending_requests, "rq_pending_open", "remaining_pending")
        self.requests = res(thresholds.max_requests, "rq_open", "remaining_rq")
        self.retries = res(thresholds.max_retries, "rq_retry_open", "remaining_retries")
        # One pool per cluster here (Envoy has one per host; its limit is unbounded by default).
        stats.gauge(cb + "cx_pool_open").set(0)
        self.st_cx_overflow: Counter = stats.counter(prefix + "upstream_cx_overflow")
        self.st_pending_overflow: Counter = stats.counter(prefix + "upstream_rq_pending_overflow")
        self.st_retry_overflow: Counter = stats.counter(prefix + "upstream_rq_retry_overflow")
