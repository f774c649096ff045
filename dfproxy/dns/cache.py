"""The DNS cache behind the dynamic forward proxy, with Envoy's DnsCacheImpl semantics.

Invariants (Envoy ``dns_cache_impl.cc``; reference §3, §4.2):
- One entry per ``host:port`` key; at most one resolution in flight per entry. Every request
  that misses on a key waits on that one resolution (coalescing) and all resume together.
- A hit never waits. A waiter holds a pending slot; past ``max_pending_requests`` the request
  is refused (the slot is checked on every request, hit or miss, as Envoy does).
- A miss when ``len(hosts) >= max_hosts`` overflows; existing hosts keep serving.
- Once a host has an address it keeps it: a failed or empty refresh never drops it.
- Refresh: success → max(dns_min_refresh_rate, TTL); empty → dns_refresh_rate; failure →
  backoff (fixed dns_refresh_rate, or jittered exponential when dns_failure_refresh_rate).
- At each refresh, a host unused for ``host_ttl`` is removed instead of re-resolved.

All of it runs on the event loop thread; no locks. Resolutions are the only tasks: one per
host per refresh, never one per request.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dfproxy.dns.resolver import V4_PREFERRED, Address, DnsError, Resolution, Resolver
from dfproxy.stats import StatsStore
from dfproxy.tasks import spawn

log = logging.getLogger("dfproxy.dns_cache")

# load() results
IN_CACHE: Final = 0
LOADING: Final = 1
OVERFLOW: Final = 2
PENDING_OVERFLOW: Final = 3


@dataclass
class DnsCacheConfig:
    """Gloo ``dnsCacheConfig`` / Envoy ``DnsCacheConfig``; durations in seconds."""

    name: str = "dynamic_forward_proxy_cache_config"
    dns_lookup_family: str = V4_PREFERRED
    dns_refresh_rate: float = 60.0
    dns_min_refresh_rate: float = 5.0
    host_ttl: float = 300.0
    max_hosts: int = 1024
    dns_query_timeout: float = 5.0
    max_pending_requests: int = 1024
    failure_base_interval: float | None = None
    failure_max_interval: float | None = None
    disable_dns_refresh_on_failure: bool = False
    preresolve_hostnames: list[tuple[str, int]] = field(default_factory=list)
    # Persisted cache (Envoy key_value_config, file based); None: not persisted.
    store_filename: str | None = None
    store_flush_interval: float = 60.0
    store_max_entries: int = 1000


Waiter = Callable[["DnsHostInfo"], None]


class Backoff:
    """Envoy JitteredExponentialBackOffStrategy: uniform in [0, next), next doubles to max."""

    __slots__ = ("base", "max", "next")

    def __init__(self, base: float, maximum: float) -> None:
        self.base = base
        self.max = maximum
        self.next = base

    def next_backoff(self) -> float:
        backoff = self.next
        self.next = self.next * 2 if self.next < self.max / 2 else self.max
        return random.random() * backoff

    def reset(self) -> None:
        self.next = self.base


class HostStats:
    """Envoy's per-host stats for /clusters: plain ints the hot path adds to. One object per
    host, shared with any pinned copy of it (access control keeps only the allowed addresses
    in a copy), so requests through the copy count for the host."""

    __slots__ = (
        "rq_total",
        "rq_active",
        "rq_error",
        "rq_timeout",
        "cx_total",
        "cx_active",
        "cx_connect_fail",
    )

    def __init__(self) -> None:
        self.rq_total = self.rq_active = self.rq_error = self.rq_timeout = 0
        self.cx_total = self.cx_active = self.cx_connect_fail = 0


class DnsHostInfo:
    """One cached host. ``addresses`` is empty until a resolution succeeds."""

    __slots__ = (
        "key",
        "port",
        "addresses",
        "ttl",
        "last_used",
        "resolved",
        "last_status",
        "resolved_at",
        "next_refresh_at",
        "failures",
        "waiters",
        "resolving",
        "backoff",
        "stats",
    )

    def __init__(self, key: str, port: int) -> None:
        self.key = key  # "host:port"; the host is not stored twice (memory per host)
        self.port = port
        self.addresses: list[Address] = []
        self.ttl = 0
        self.last_used = time.monotonic()
        self.resolved = False  # first resolution complete (success or not)
        self.last_status = ""  # "", "success", "empty" or a failure reason
        self.resolved_at = 0.0
        self.next_refresh_at = 0.0
        self.failures = 0
        self.waiters: list[Waiter] | None = None
        self.resolving = False
        self.backoff: Backoff | None = None
        self.stats = HostStats()

    @property
    def host(self) -> str:
        """The name to resolve: the key without its port (IPv6 brackets removed)."""
        host = self.key[: self.key.rfind(":")]
        return host[1:-1] if host.startswith("[") else host

    @property
    def address(self) -> Address | None:
        """The address Envoy's logical host uses: the first of the list."""
        return self.addresses[0] if self.addresses else None

    def touch(self) -> None:
        self.last_used = time.monotonic()


class RefreshScheduler:
    """One timer for every host's refresh: a heap of (due, seq, host).

    A uvloop TimerHandle per host costs ~630 bytes (RSS, measured with bench/dns_memory.py);
    a heap entry ~120. Rescheduling or cancelling leaves the old entry in the heap; it is
    skipped when popped because the host's ``next_refresh_at`` no longer matches.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[DnsHostInfo], None]
    ) -> None:
        self.loop = loop
        self.fire = fire
        self.heap: list[tuple[float, int, DnsHostInfo]] = []
        self.seq = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0

    def schedule(self, info: DnsHostInfo, due: float) -> None:
        info.next_refresh_at = due
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, info))
        if self.timer is None or due < self.timer_due:
            self._arm(due)

    def cancel(self, info: DnsHostInfo) -> None:
        info.next_refresh_at = 0.0

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = due
        self.timer = self.loop.call_later(max(0.0, due - time.monotonic()), self._run)

    def _run(self) -> None:
        self.timer = None
        now = time.monotonic()
        heap = self.heap
        while heap and heap[0][0] <= now:
            due, _, info = heapq.heappop(heap)
            if info.next_refresh_at == due:
                info.next_refresh_at = 0.0
                self.fire(info)
        # Drop stale entries at the top so the timer is armed for a live one.
        while heap and heap[0][2].next_refresh_at != heap[0][0]:
            heapq.heappop(heap)
        if heap and self.timer is None:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.heap.clear()


class DnsCache:
    """Resolves and remembers ``host:port`` keys; see the module docstring for the rules."""

    def __init__(
        self,
        config: DnsCacheConfig,
        resolver: Resolver,
        stats: StatsStore,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.loop = loop
        self.hosts: dict[str, DnsHostInfo] = {}
        self.pending = 0
        self.on_host_removed: list[Callable[[DnsHostInfo], None]] = []
        prefix = f"dns_cache.{config.name}."
        s = stats
        self.st_attempt = s.counter(prefix + "dns_query_attempt")
        self.st_success = s.counter(prefix + "dns_query_success")
        self.st_failure = s.counter(prefix + "dns_query_failure")
        self.st_timeout = s.counter(prefix + "dns_query_timeout")
        self.st_added = s.counter(prefix + "host_added")
        self.st_removed = s.counter(prefix + "host_removed")
        self.st_changed = s.counter(prefix + "host_address_changed")
        self.st_overflow = s.counter(prefix + "host_overflow")
        self.st_cache_load = s.counter(prefix + "cache_load")
        self.st_pending_overflow = s.counter(prefix + "dns_rq_pending_overflow")
        self.st_num_hosts = s.gauge(prefix + "num_hosts")
        self.st_cb_open = s.gauge(prefix + "circuit_breakers.rq_pending_open")
        self.st_cb_remaining = s.gauge(prefix + "circuit_breakers.rq_pending_remaining")
        self.st_cb_remaining.set(config.max_pending_requests)
        self._closed = False
        self.refresh = RefreshScheduler(loop, self._on_refresh)

    # -- request path -------------------------------------------------------------------------

    def load(
        self, key: str, host: str, port: int, waiter: Waiter
    ) -> tuple[int, DnsHostInfo | None]:
        """Look ``key`` up for one request.

        Returns (IN_CACHE, info) on a hit (info may have no address after a failed first
        resolution: the caller answers DNS failure), (LOADING, info) when ``waiter`` will be
        called once the resolution finishes (the request holds a pending slot until then),
        (OVERFLOW, None) past max_hosts, (PENDING_OVERFLOW, None) when no pending slot is free.
        """
        if self.pending >= self.config.max_pending_requests:
            self.st_pending_overflow.value += 1
            return PENDING_OVERFLOW, None
        info = self.hosts.get(key)
        if info is not None:
            info.last_used = time.monotonic()
            if info.resolved and not (
                self.config.disable_dns_refresh_on_failure
                and info.last_status not in ("success", "empty")
                and not info.resolving
            ):
                return IN_CACHE, info
            if not info.resolving:
                # disable_dns_refresh_on_failure: a failed host is a miss, resolved on demand.
                self._start_resolve(info)
        else:
            if len(self.hosts) >= self.config.max_hosts:
                self.st_overflow.value += 1
                return OVERFLOW, None
            info = self._add_host(key, host, port)
        if info.waiters is None:
            info.waiters = [waiter]
        else:
            info.waiters.append(waiter)
        self._acquire_pending()
        return LOADING, info

    def lookup(self, key: str) -> DnsHostInfo | None:
        """load() for the common case, a hit: the entry, touched as load() touches it, when
        load() would answer (IN_CACHE, entry); otherwise None, and the caller calls load().
        No result tuple and no waiter (a bound method) built per request (bench/hotpath.py
        under callgrind)."""
        info = self.hosts.get(key)
        if info is None or not info.resolved:
            return None
        cfg = self.config
        if self.pending >= cfg.max_pending_requests or (
            cfg.disable_dns_refresh_on_failure
            and info.last_status not in ("success", "empty")
            and not info.resolving
        ):
            return None
        info.last_used = time.monotonic()
        return info

    def cancel_wait(self, info: DnsHostInfo, waiter: Waiter) -> None:
        """Forget ``waiter`` (its request went away) and release its pending slot."""
        if info.waiters and waiter in info.waiters:
            info.waiters.remove(waiter)
            self._release_pending()

    def _acquire_pending(self) -> None:
        self.pending += 1
        self._update_cb_gauges()

    def _release_pending(self, n: int = 1) -> None:
        self.pending -= n
        self._update_cb_gauges()

    def _update_cb_gauges(self) -> None:
        remaining = self.config.max_pending_requests - self.pending
        self.st_cb_open.value = 1 if remaining <= 0 else 0
        self.st_cb_remaining.value = max(0, remaining)

    # -- entries ------------------------------------------------------------------------------

    def _add_host(self, key: str, host: str, port: int) -> DnsHostInfo:
        info = DnsHostInfo(key, port)
        self.hosts[key] = info
        self.st_added.value += 1
        self.st_num_hosts.value = len(self.hosts)
        log.debug("cache miss for host '%s', starting resolve", key)
        self._start_resolve(info)
        return info

    def preresolve(self, host: str, port: int) -> None:
        """Add ``host:port`` at start-up and resolve it (failure is harmless)."""
        host = host.lower()
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if key not in self.hosts:
            self._add_host(key, host, port)

    def load_from_store(
        self, key: str, host: str, port: int, addresses: list[Address], ttl: int
    ) -> None:
        """Seed an entry from the persisted cache (Envoy ``cache_load``)."""
        if key in self.hosts or len(self.hosts) >= self.config.max_hosts:
            return
        info = DnsHostInfo(key, port)
        self.hosts[key] = info
        self.st_added.value += 1
        self.st_cache_load.value += 1
        self.st_num_hosts.value = len(self.hosts)
        self._finish(info, Resolution(addresses, ttl), None)

    def remove(self, info: DnsHostInfo) -> None:
        """Drop ``info`` (TTL expiry); connections still using it keep their own reference."""
        if self.hosts.get(info.key) is not info:
            return
        del self.hosts[info.key]
        self.refresh.cancel(info)
        self.st_removed.value += 1
        self.st_num_hosts.value = len(self.hosts)
        if info.waiters:
            waiters, info.waiters = info.waiters, None
            self._release_pending(len(waiters))
            for waiter in waiters:
                waiter(info)
        for callback in self.on_host_removed:
            callback(info)
        log.debug("host '%s' removed from the DNS cache", info.key)

    # -- resolution ---------------------------------------------------------------------------

    def _start_resolve(self, info: DnsHostInfo) -> None:
        self.refresh.cancel(info)
        info.resolving = True
        self.st_attempt.value += 1
        spawn(self._resolve(info), name=f"dns:{info.key}")

    async def _resolve(self, info: DnsHostInfo) -> None:
        timeout = self.config.dns_query_timeout or None
        try:
            result = await asyncio.wait_for(
                self.resolver.resolve(info.host, self.config.dns_lookup_family), timeout
            )
        except TimeoutError:
            self.st_timeout.value += 1
            self._finish(info, None, "resolve_timeout")
        except DnsError as exc:
            self._finish(info, None, exc.reason)
        except asyncio.CancelledError:
            info.resolving = False
            raise
        except Exception as bug:  # a resolver bug must not leave waiters hanging
            # (one name per except type: mypyc types a name by its first binding)
            log.exception("resolver error for %s", info.key)
            self._finish(info, None, f"resolver_error:{type(bug).__name__}")
        else:
            self._finish(info, result, None)

    def _finish(self, info: DnsHostInfo, result: Resolution | None, failure: str | None) -> None:
        info.resolving = False
        now = time.monotonic()
        cfg = self.config
        interval: float | None
        if result is not None:
            self.st_success.value += 1
            if result.addresses:
                if result.addresses != info.addresses:
                    if info.addresses:
                        self.st_changed.value += 1
                        log.info(
                            "host '%s' address changed: %s -> %s",
                            info.key,
                            [a[0] for a in info.addresses],
                            [a[0] for a in result.addresses],
                        )
                    info.addresses = result.addresses
                info.ttl = result.ttl
                info.last_status = "success"
                info.failures = 0
                if info.backoff is not None:
                    info.backoff.reset()
                interval = max(cfg.dns_min_refresh_rate, float(result.ttl))
            else:
                # Completed with no address: the old address (if any) stays.
                info.last_status = "empty"
                interval = cfg.dns_refresh_rate
        else:
            self.st_failure.value += 1
            info.failures += 1
            info.last_status = failure or "failure"
            log.debug("DNS resolution for '%s' failed: %s", info.key, info.last_status)
            interval = self._failure_interval(info)
        info.resolved = True
        info.resolved_at = now
        if self.hosts.get(info.key) is info and not self._closed and interval is not None:
            self.refresh.schedule(info, now + interval)
        else:
            info.next_refresh_at = 0.0
        if info.waiters:
            waiters, info.waiters = info.waiters, None
            self._release_pending(len(waiters))
            for waiter in waiters:
                waiter(info)

    def _failure_interval(self, info: DnsHostInfo) -> float | None:
        cfg = self.config
        if cfg.disable_dns_refresh_on_failure:
            return None
        if cfg.failure_base_interval is None:
            return cfg.dns_refresh_rate
        if info.backoff is None:
            base = cfg.failure_base_interval
            info.backoff = Backoff(base, cfg.failure_max_interval or 10 * base)
        assert info.backoff is not None
        return info.backoff.next_backoff()

    def _on_refresh(self, info: DnsHostInfo) -> None:
        if time.monotonic() - info.last_used > self.config.host_ttl:
            self.remove(info)
        elif not info.resolving:
            self._start_resolve(info)

    def close(self) -> None:
        """Stop every refresh timer (shutdown)."""
        self._closed = True
        self.refresh.close()
