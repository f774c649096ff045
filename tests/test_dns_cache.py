"""Component tests: DnsCache + Resolver (c-ares via aiodns) against the real test DNS server.

No proxy process: each test runs its own asyncio loop, builds
``Resolver(ResolverOptions(servers=(dns_server.address,)), loop)`` and
``DnsCache(DnsCacheConfig(...), resolver, StatsStore(), loop)`` and drives ``cache.load()``.

Semantics under test: reference ``envoy-gloo-dfp.md`` §3 (DnsCacheConfig, lookup families,
refresh/backoff), §4.2 (cache lookup, coalescing), §4.6 (pending circuit breaker), §5.1 (stats),
§8.3 (Gloo ``dnsCacheConfig``). Where the reference is silent, Envoy's c-ares resolver
(``source/extensions/network/dns_resolver/cares/dns_impl.cc``) is the authority and is cited.

Timing: refresh intervals are kept small (``dns_min_refresh_rate`` 0.3 s); every wait is bounded
by ``asyncio.timeout`` and the only timed assertions are bounds the semantics require.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.dns.cache import (
    IN_CACHE,
    LOADING,
    OVERFLOW,
    PENDING_OVERFLOW,
    Backoff,
    DnsCache,
    DnsCacheConfig,
    DnsHostInfo,
)
from dfproxy.dns.resolver import (
    ALL,
    AUTO,
    LOOKUP_FAMILIES,
    V4_ONLY,
    V4_PREFERRED,
    V6_ONLY,
    Resolver,
    ResolverOptions,
    _interleave,
)
from dfproxy.stats import StatsStore
from tests.support.dns_server import DNSTestServer

V4 = int(socket.AF_INET)
V6 = int(socket.AF_INET6)
CACHE_NAME = "test_cache"
TEST_TIMEOUT = 10.0
FAST = {"dns_min_refresh_rate": 0.3}  # keeps TTL-driven refreshes quick


# ---------------------------------------------------------------------------- harness
class Waiter:
    """A load() callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[DnsHostInfo] = []
        self.event = asyncio.Event()

    def __call__(self, info: DnsHostInfo) -> None:
        self.calls.append(info)
        self.event.set()

    async def wait(self, within: float = 5.0) -> DnsHostInfo:
        await asyncio.wait_for(self.event.wait(), within)
        return self.calls[0]


class Env:
    """One DnsCache on the running loop, resolving through the test DNS server."""

    def __init__(self, dns: DNSTestServer, cache: DnsCache, stats: StatsStore) -> None:
        self.dns = dns
        self.cache = cache
        self.stats = stats

    def stat(self, name: str) -> int:
        full = f"dns_cache.{CACHE_NAME}.{name}"
        if full in self.stats.counters:
            return self.stats.counters[full].value
        return self.stats.gauges[full].value

    def load(self, host: str, port: int = 80) -> tuple[int, DnsHostInfo | None, Waiter]:
        waiter = Waiter()
        status, info = self.cache.load(f"{host}:{port}", host, port, waiter)
        return status, info, waiter

    async def resolved(self, host: str, port: int = 80) -> DnsHostInfo:
        """Load ``host`` and wait for its first resolution if needed."""
        status, info, waiter = self.load(host, port)
        if status == LOADING:
            await waiter.wait()
        assert status in (IN_CACHE, LOADING), status
        assert info is not None
        assert info.resolved
        return info

    @staticmethod
    async def until(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def cache_env(
    dns: DNSTestServer, *, options: ResolverOptions | None = None, **config: Any
) -> AsyncIterator[Env]:
    loop = asyncio.get_running_loop()
    resolver = Resolver(options or ResolverOptions(servers=(dns.address,)), loop)
    stats = StatsStore()
    cache = DnsCache(DnsCacheConfig(name=CACHE_NAME, **config), resolver, stats, loop)
    try:
        yield Env(dns, cache, stats)
    finally:
        await shutdown(cache, resolver)


async def shutdown(cache: DnsCache, resolver: Resolver) -> None:
    """Stop timers, cancel this loop's in-flight resolutions, release the c-ares channel."""
    cache.close()
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    resolver.close()
    await asyncio.sleep(0.05)  # c-ares cancellation callbacks land on this loop


def run(
    coro: Coroutine[Any, Any, None], timeout: float = TEST_TIMEOUT, loop: str = "asyncio"
) -> None:
    """Run ``coro`` bounded by ``timeout`` on a fresh asyncio (or uvloop) event loop."""

    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro

    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------- coalescing, hits
def test_100_concurrent_loads_of_a_new_name_make_one_query(dns_server: DNSTestServer) -> None:
    """§4.2 step 6: concurrent misses coalesce on one resolution; all waiters wake once."""
    dns_server.set("burst.test", a=["127.0.0.1"])
    dns_server.set_delay("burst.test", 0.2)

    async def body() -> None:
        async with cache_env(dns_server) as env:
            results = [env.load("burst.test") for _ in range(100)]
            assert {status for status, _, _ in results} == {LOADING}
            info = results[0][1]
            assert info is not None
            assert all(i is info for _, i, _ in results)
            assert env.cache.pending == 100
            assert env.stat("circuit_breakers.rq_pending_remaining") == 1024 - 100
            await asyncio.gather(*(w.wait() for _, _, w in results))
            await asyncio.sleep(0.05)  # a duplicate callback would land by now
            assert [len(w.calls) for _, _, w in results] == [1] * 100
            assert all(w.calls[0] is info for _, _, w in results)
            assert info.addresses == [("127.0.0.1", V4)]
            assert dns_server.count("burst.test") == 1
            assert env.stat("dns_query_attempt") == 1
            assert env.stat("dns_query_success") == 1
            assert env.stat("host_added") == 1
            assert env.stat("num_hosts") == 1
            assert env.cache.pending == 0
            assert env.stat("circuit_breakers.rq_pending_remaining") == 1024
            assert env.stat("circuit_breakers.rq_pending_open") == 0

    run(body())


def test_a_hit_never_waits_even_during_a_refresh(dns_server: DNSTestServer) -> None:
    """A resolved entry is IN_CACHE at once; a slow refresh in flight does not block hits."""
    dns_server.set_sequence(
        "hot.test",
        [{"a": ["127.0.0.1"], "ttl": 0}, {"a": ["127.0.0.1"], "ttl": 0, "delay": 1.0}],
    )

    async def body() -> None:
        async with cache_env(dns_server, **FAST) as env:
            info = await env.resolved("hot.test")
            for _ in range(20):
                status, hit, waiter = env.load("hot.test")
                assert status == IN_CACHE
                assert hit is info
                assert env.cache.pending == 0
            assert dns_server.count("hot.test") == 1
            # the TTL-0 refresh (after 0.3 s) is answered only after 1 s
            await env.until(lambda: dns_server.count("hot.test") == 2, what="the refresh query")
            assert info.resolving
            status, hit, waiter = env.load("hot.test")
            assert (status, hit) == (IN_CACHE, info)
            assert hit.addresses == [("127.0.0.1", V4)]
            await asyncio.sleep(0.05)
            assert waiter.calls == []
            assert env.cache.pending == 0

    run(body())


# ---------------------------------------------------------------------------- failures
# Envoy's c-ares resolver treats ARES_ENODATA and ARES_ENOTFOUND (NXDOMAIN) as a *successful*
# resolution with no records (``isResponseWithNoRecords`` in cares dns_impl.cc); the reference
# §5.1 counts those as dns_query_success ("status Completed, even when empty").
@pytest.mark.parametrize(
    ("answer", "counted_as"),
    [
        ("NXDOMAIN", "success"),
        ("SERVFAIL", "failure"),
        ("REFUSED", "failure"),
        ("empty", "success"),
    ],
)
def test_failed_or_empty_resolution_gives_no_address(
    dns_server: DNSTestServer, answer: str, counted_as: str
) -> None:
    name = f"{answer.lower()}.test"
    if answer == "empty":
        dns_server.set_empty(name)
    else:
        dns_server.set_error(name, answer)

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=V4_ONLY) as env:
            status, info, waiter = env.load(name)
            assert status == LOADING
            got = await waiter.wait()
            assert got is info
            assert info.addresses == []
            assert info.address is None
            assert info.resolved and not info.resolving
            assert env.cache.pending == 0
            # the next request sees the same cached answer (stable), without a new query
            queries = dns_server.count(name)
            for _ in range(2):
                status, again, w2 = env.load(name)
                assert (status, again) == (IN_CACHE, info)
                assert again.addresses == []
            assert dns_server.count(name) == queries
            assert env.stat("dns_query_attempt") == 1
            assert env.stat("dns_query_timeout") == 0
            assert env.stat("dns_query_success") + env.stat("dns_query_failure") == 1
            assert waiter.calls == [info]
            observed = "success" if env.stat("dns_query_success") else "failure"
            assert observed == counted_as, (
                f"{answer}: counted as dns_query_{observed}, Envoy counts dns_query_{counted_as}"
                f" (last_status={info.last_status!r})"
            )

    run(body())


def test_empty_answer_refreshes_at_dns_refresh_rate_not_failure_backoff(
    dns_server: DNSTestServer,
) -> None:
    """§3.4: "Success with 0 addresses … The next refresh is dns_refresh_rate" (the failure
    backoff applies to failures only)."""
    dns_server.set_empty("nodata.test")

    async def body() -> None:
        async with cache_env(
            dns_server,
            dns_lookup_family=V4_ONLY,
            dns_refresh_rate=30.0,
            failure_base_interval=0.1,
            failure_max_interval=0.2,
        ) as env:
            info = await env.resolved("nodata.test")
            assert info.addresses == []
            interval = info.next_refresh_at - info.resolved_at
            assert interval == pytest.approx(30.0), (
                f"empty answer scheduled in {interval:.3f}s (last_status={info.last_status!r})"
            )

    run(body())


def test_slow_answer_past_dns_query_timeout(dns_server: DNSTestServer) -> None:
    """§3.1 field 11: on timeout dns_query_timeout++ and the result is a failure."""
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 2.0)

    async def body() -> None:
        async with cache_env(dns_server, dns_query_timeout=0.3) as env:
            start = time.monotonic()
            status, info, waiter = env.load("slow.test")
            assert status == LOADING
            await waiter.wait(within=1.5)  # well before the 2 s answer
            elapsed = time.monotonic() - start
            assert elapsed >= 0.25
            assert info is not None
            assert info.addresses == []
            assert "timeout" in info.last_status
            assert env.stat("dns_query_timeout") == 1
            assert env.stat("dns_query_failure") == 1
            assert env.stat("dns_query_success") == 0
            assert env.cache.pending == 0

    run(body())


# ---------------------------------------------------------------------------- refresh timing
@pytest.mark.parametrize(("ttl", "expected"), [(0, 0.3), (1, 1.0), (5, 5.0)])
def test_refresh_is_ttl_floored_at_dns_min_refresh_rate(
    dns_server: DNSTestServer, ttl: int, expected: float
) -> None:
    """§3.4: next refresh = max(dns_min_refresh_rate, TTL of the first record)."""
    name = f"ttl{ttl}.test"
    dns_server.set(name, a=["127.0.0.1"], ttl=ttl)

    async def body() -> None:
        async with cache_env(dns_server, **FAST) as env:
            info = await env.resolved(name)
            assert info.ttl == ttl
            assert info.next_refresh_at - info.resolved_at == pytest.approx(expected, abs=1e-6)
            if expected > 2:
                return
            first_done = info.resolved_at
            await asyncio.to_thread(dns_server.wait_for, name, 2, timeout=expected + 3)
            second = dns_server.queries[-1]
            assert second.time >= first_done + expected - 0.02, "refreshed before the TTL/floor"
            await env.until(lambda: not info.resolving, what="refresh done")
            assert env.stat("dns_query_attempt") == 2
            assert env.stat("dns_query_success") == 2
            assert env.stat("host_address_changed") == 0

    run(body())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_refresh_timers_of_many_hosts_fire_in_due_order(
    dns_server: DNSTestServer, loop: str
) -> None:
    """One scheduler serves every host: a host due sooner than the armed timer re-arms it,
    and each host is refreshed at its own interval (not at another host's)."""
    dns_server.set("late.test", a=["127.0.0.1"], ttl=3)
    dns_server.set("soon.test", a=["127.0.0.1"], ttl=0)
    dns_server.set("mid.test", a=["127.0.0.1"], ttl=1)

    async def body() -> None:
        async with cache_env(dns_server, **FAST) as env:
            late = await env.resolved("late.test")  # the timer is armed for +3 s
            soon = await env.resolved("soon.test")  # due in 0.3 s: must re-arm earlier
            mid = await env.resolved("mid.test")
            assert late.next_refresh_at - late.resolved_at == pytest.approx(3.0, abs=1e-6)
            await asyncio.to_thread(dns_server.wait_for, "soon.test", 3, timeout=2)
            await asyncio.to_thread(dns_server.wait_for, "mid.test", 2, timeout=2)
            soon_times = [q.time for q in dns_server.queries if q.name == "soon.test"]
            mid_times = [q.time for q in dns_server.queries if q.name == "mid.test"]
            assert soon_times[1] - soon.resolved_at < 1.0, "soon.test waited for another timer"
            for earlier, later in zip(soon_times, soon_times[1:], strict=False):
                assert later - earlier >= 0.3 - 0.02
            assert mid_times[1] - mid_times[0] >= 1.0 - 0.02
            assert dns_server.count("late.test") == 1  # not refreshed with the others
            assert late.next_refresh_at > time.monotonic()
            assert mid.addresses == soon.addresses == late.addresses == [("127.0.0.1", V4)]

    run(body(), loop=loop)


def test_changed_answer_replaces_the_address(dns_server: DNSTestServer) -> None:
    dns_server.set_sequence(
        "flip.test", [{"a": ["127.0.0.1"], "ttl": 0}, {"a": ["127.0.0.2"], "ttl": 0}]
    )

    async def body() -> None:
        async with cache_env(dns_server, **FAST) as env:
            info = await env.resolved("flip.test")
            assert info.addresses == [("127.0.0.1", V4)]
            assert env.stat("host_address_changed") == 0  # the first answer is no change
            await env.until(
                lambda: info.addresses == [("127.0.0.2", V4)], within=3, what="new address"
            )
            assert env.stat("host_address_changed") == 1
            status, hit, _ = env.load("flip.test")
            assert (status, hit) == (IN_CACHE, info)
            assert hit.address == ("127.0.0.2", V4)
            # the same answer again is not a change
            await asyncio.to_thread(dns_server.wait_for, "flip.test", 3, timeout=3)
            await env.until(lambda: env.stat("dns_query_success") == 3, what="3rd answer")
            assert env.stat("host_address_changed") == 1
            assert env.stat("host_added") == 1

    run(body())


def test_address_list_change_is_order_sensitive(dns_server: DNSTestServer) -> None:
    """§3.4: the list is replaced when it differs, order-sensitive (DnsUtils::listChanged)."""
    dns_server.set_sequence(
        "order.test",
        [{"a": ["127.0.0.1", "127.0.0.2"], "ttl": 0}, {"a": ["127.0.0.2", "127.0.0.1"], "ttl": 0}],
    )

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=V4_ONLY, **FAST) as env:
            info = await env.resolved("order.test")
            assert [a for a, _ in info.addresses] == ["127.0.0.1", "127.0.0.2"]
            await env.until(lambda: env.stat("dns_query_success") >= 2, within=3, what="refresh")
            assert [a for a, _ in info.addresses] == ["127.0.0.2", "127.0.0.1"]
            assert env.stat("host_address_changed") == 1

    run(body())


@pytest.mark.parametrize("later", ["SERVFAIL", "NXDOMAIN", "empty", "timeout"])
def test_keep_last_good_address(dns_server: DNSTestServer, later: str) -> None:
    """§3.4 stickiness: a failed, empty or timed-out refresh never drops the address."""
    second: dict[str, Any] = {
        "SERVFAIL": {"error": "SERVFAIL"},
        "NXDOMAIN": {"error": "NXDOMAIN"},
        "empty": {"empty": True},
        "timeout": {"drop": True},
    }[later]
    name = f"sticky-{later.lower()}.test"
    dns_server.set_sequence(name, [{"a": ["127.0.0.1"], "ttl": 0}, second])

    async def body() -> None:
        async with cache_env(
            dns_server,
            dns_lookup_family=V4_ONLY,
            dns_query_timeout=0.3,
            dns_refresh_rate=30.0,
            failure_base_interval=20.0,
            **FAST,
        ) as env:
            info = await env.resolved(name)
            assert info.addresses == [("127.0.0.1", V4)]
            await env.until(
                lambda: env.stat("dns_query_attempt") == 2 and not info.resolving,
                within=3,
                what="the refresh to finish",
            )
            assert info.last_status != "success"
            assert info.addresses == [("127.0.0.1", V4)]
            status, hit, _ = env.load(name)
            assert (status, hit) == (IN_CACHE, info)
            assert hit.address == ("127.0.0.1", V4)
            assert env.stat("host_address_changed") == 0
            assert env.stat("num_hosts") == 1

    run(body())


# ---------------------------------------------------------------------------- host TTL purge
def test_unused_host_is_purged_at_refresh_after_host_ttl(dns_server: DNSTestServer) -> None:
    """§3.4: at a refresh, a host unused for host_ttl is removed (host_removed, num_hosts);
    a host that keeps being used stays."""
    dns_server.set("idle.test", a=["127.0.0.1"], ttl=0)
    dns_server.set("busy.test", a=["127.0.0.1"], ttl=0)

    async def body() -> None:
        async with cache_env(dns_server, host_ttl=0.5, **FAST) as env:
            removed: list[DnsHostInfo] = []
            env.cache.on_host_removed.append(removed.append)
            idle = await env.resolved("idle.test")
            last_use = time.monotonic()
            busy = await env.resolved("busy.test")
            assert env.stat("num_hosts") == 2
            deadline = time.monotonic() + 3
            while "idle.test:80" in env.cache.hosts and time.monotonic() < deadline:
                assert env.load("busy.test")[0] == IN_CACHE  # touch
                await asyncio.sleep(0.05)
            assert "idle.test:80" not in env.cache.hosts, "unused host never purged"
            assert time.monotonic() - last_use >= 0.5  # not before host_ttl
            assert removed == [idle]
            assert env.stat("host_removed") == 1
            assert env.stat("num_hosts") == 1
            assert env.cache.hosts.get("busy.test:80") is busy
            queries = dns_server.count("idle.test")
            await asyncio.sleep(0.4)  # > one refresh interval: a removed host stays silent
            assert dns_server.count("idle.test") == queries
            assert env.stat("host_removed") == 1
            # a new request for the purged name is a miss again
            status, info, waiter = env.load("idle.test")
            assert status == LOADING
            assert info is not idle
            await waiter.wait()
            assert dns_server.count("idle.test") == queries + 1
            assert env.stat("host_added") == 3
            assert env.stat("num_hosts") == 2

    run(body())


# ---------------------------------------------------------------------------- overflow, breaker
def test_max_hosts_overflow(dns_server: DNSTestServer) -> None:
    """§4.2 step 4: a miss when size >= max_hosts is Overflow; existing hosts keep serving."""

    async def body() -> None:
        async with cache_env(dns_server, max_hosts=2) as env:
            a = await env.resolved("a.test")
            status_b, b, wb = env.load("b.test")
            assert status_b == LOADING
            status, info, waiter = env.load("c.test")
            assert (status, info) == (OVERFLOW, None)
            assert env.stat("host_overflow") == 1
            assert dns_server.count("c.test") == 0
            assert env.cache.pending == 1  # only b's waiter
            await wb.wait()
            assert env.load("a.test")[:2] == (IN_CACHE, a)
            assert env.load("b.test")[:2] == (IN_CACHE, b)
            assert env.load("c.test")[:2] == (OVERFLOW, None)
            assert env.stat("host_overflow") == 2
            assert env.stat("num_hosts") == 2
            await asyncio.sleep(0.05)
            assert waiter.calls == []

    run(body())


def test_pending_request_circuit_breaker(dns_server: DNSTestServer) -> None:
    """§4.1 step 7 / §4.6: every request takes a pending slot (hit or miss); past
    max_pending_requests it is refused; gauges rq_pending_open / rq_pending_remaining."""
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 0.5)

    async def body() -> None:
        async with cache_env(dns_server, max_pending_requests=2) as env:
            hot = await env.resolved("hot.test")
            assert env.stat("circuit_breakers.rq_pending_remaining") == 2
            assert env.stat("circuit_breakers.rq_pending_open") == 0
            s1, info, w1 = env.load("slow.test")
            assert env.stat("circuit_breakers.rq_pending_remaining") == 1
            s2, _, w2 = env.load("slow.test")
            assert (s1, s2) == (LOADING, LOADING)
            assert env.stat("circuit_breakers.rq_pending_open") == 1
            assert env.stat("circuit_breakers.rq_pending_remaining") == 0
            s3, i3, w3 = env.load("slow.test")
            assert (s3, i3) == (PENDING_OVERFLOW, None)
            assert env.stat("dns_rq_pending_overflow") == 1
            # Envoy acquires the slot on every request, so even a hit is refused while full
            s4, i4, _ = env.load("hot.test")
            assert (s4, i4) == (PENDING_OVERFLOW, None)
            assert env.stat("dns_rq_pending_overflow") == 2
            await asyncio.gather(w1.wait(), w2.wait())
            assert info is not None and info.addresses == [("127.0.0.1", V4)]
            assert env.cache.pending == 0
            assert env.stat("circuit_breakers.rq_pending_open") == 0
            assert env.stat("circuit_breakers.rq_pending_remaining") == 2
            assert env.load("hot.test")[:2] == (IN_CACHE, hot)
            await asyncio.sleep(0.05)
            assert w3.calls == []
            assert dns_server.count("slow.test") == 1

    run(body())


def test_cancel_wait_releases_the_pending_slot(dns_server: DNSTestServer) -> None:
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 0.5)

    async def body() -> None:
        async with cache_env(dns_server, max_pending_requests=2) as env:
            _, info, w1 = env.load("slow.test")
            _, _, w2 = env.load("slow.test")
            assert info is not None
            assert env.load("slow.test")[0] == PENDING_OVERFLOW
            env.cache.cancel_wait(info, w1)
            assert env.cache.pending == 1
            assert env.stat("circuit_breakers.rq_pending_open") == 0
            assert env.stat("circuit_breakers.rq_pending_remaining") == 1
            env.cache.cancel_wait(info, w1)  # idempotent: no double release
            assert env.cache.pending == 1
            s3, _, w3 = env.load("slow.test")
            assert s3 == LOADING
            await asyncio.gather(w2.wait(), w3.wait())
            await asyncio.sleep(0.05)
            assert w1.calls == []
            assert w2.calls == [info] and w3.calls == [info]
            assert env.cache.pending == 0
            assert env.stat("circuit_breakers.rq_pending_remaining") == 2

    run(body())


# ---------------------------------------------------------------------------- failure backoff
def test_backoff_strategy_bounds() -> None:
    """§3.4 JitteredExponentialBackOffStrategy: uniform in [0, next); next doubles to max."""
    random.seed(12345)
    b = Backoff(0.2, 1.0)
    bounds = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for _ in range(200):
        b.reset()
        for bound in bounds:
            value = b.next_backoff()
            assert 0 <= value < bound
    # over many draws the whole range is used (not a constant)
    b = Backoff(0.2, 1.0)
    draws = [b.next_backoff() for _ in range(500)][5:]
    assert min(draws) < 0.2 and max(draws) > 0.8


@pytest.mark.interpreted
def test_failure_backoff_in_the_cache_and_reset_on_success(dns_server: DNSTestServer) -> None:
    """Failures retry within [0, base), [0, 2·base) … [0, max); a success resets it."""
    name = "flaky.test"
    dns_server.set_error(name, "SERVFAIL")
    random.seed(7)
    events: list[tuple[str, float]] = []

    async def body() -> None:
        async with cache_env(
            dns_server,
            dns_lookup_family=V4_ONLY,
            dns_refresh_rate=30.0,
            failure_base_interval=0.1,
            failure_max_interval=0.4,
            **FAST,
        ) as env:
            cache = env.cache
            original = cache._finish

            def spy(info: DnsHostInfo, result: Any, failure: str | None) -> None:
                original(info, result, failure)
                kind = "fail" if failure is not None else "ok"
                events.append((kind, info.next_refresh_at - info.resolved_at))
                fails = sum(1 for k, _ in events if k == "fail")
                if kind == "fail" and fails == 5:
                    dns_server.set(name, a=["127.0.0.1"], ttl=0)
                elif kind == "ok":
                    dns_server.set_error(name, "SERVFAIL")

            cache._finish = spy  # type: ignore[method-assign]
            info = await env.resolved(name)
            assert info.addresses == []
            await env.until(lambda: len(events) >= 7, within=6, what="7 resolutions")
            kinds = [k for k, _ in events[:7]]
            assert kinds == ["fail"] * 5 + ["ok", "fail"], events
            bounds = [0.1, 0.2, 0.4, 0.4, 0.4]
            for (_, interval), bound in zip(events[:5], bounds, strict=True):
                assert 0 <= interval < bound, events
            assert events[5][1] == pytest.approx(0.3, abs=1e-6)  # success: the TTL floor
            assert 0 <= events[6][1] < 0.1, f"backoff not reset by the success: {events}"
            assert info.failures >= 1
            assert info.addresses == [("127.0.0.1", V4)]  # kept through the later failure

    run(body())


def test_failure_without_backoff_config_retries_at_dns_refresh_rate(
    dns_server: DNSTestServer,
) -> None:
    """§3.4: dns_failure_refresh_rate unset → FixedBackOffStrategy(dns_refresh_rate)."""
    dns_server.set_error("down.test", "SERVFAIL")

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=V4_ONLY, dns_refresh_rate=7.0) as env:
            info = await env.resolved("down.test")
            assert info.addresses == []
            assert info.next_refresh_at - info.resolved_at == pytest.approx(7.0, abs=1e-6)

    run(body())


def test_disable_dns_refresh_on_failure_makes_failed_hosts_a_miss(
    dns_server: DNSTestServer,
) -> None:
    """§3.1 field 15: no refresh timer after a failure; the next request re-resolves."""
    dns_server.set_sequence("once.test", [{"error": "SERVFAIL"}] * 3 + [{"a": ["127.0.0.1"]}])

    async def body() -> None:
        async with cache_env(
            dns_server, dns_lookup_family=V4_ONLY, disable_dns_refresh_on_failure=True
        ) as env:
            info = await env.resolved("once.test")
            assert info.addresses == []
            assert info.next_refresh_at == 0.0  # no refresh scheduled
            status, again, waiter = env.load("once.test")
            assert status == LOADING and again is info
            await waiter.wait()
            assert info.addresses == [("127.0.0.1", V4)]
            assert env.stat("dns_query_attempt") == 2
            assert env.stat("host_added") == 1

    run(body())


# ---------------------------------------------------------------------------- lookup families
LOOPBACK4 = ("127.0.0.1", V4)
LOOPBACK6 = ("::1", V6)

FAMILY_EXPECTATIONS = {
    # family: {name: expected addresses}, qtypes asked for "both.test"
    V4_ONLY: ({"both": [LOOPBACK4], "v4": [LOOPBACK4], "v6": []}, {"A"}),
    V6_ONLY: ({"both": [LOOPBACK6], "v4": [], "v6": [LOOPBACK6]}, {"AAAA"}),
    AUTO: ({"both": [LOOPBACK6], "v4": [LOOPBACK4], "v6": [LOOPBACK6]}, {"AAAA"}),
    V4_PREFERRED: ({"both": [LOOPBACK4], "v4": [LOOPBACK4], "v6": [LOOPBACK6]}, {"A"}),
    ALL: ({"both": [LOOPBACK6, LOOPBACK4], "v4": [LOOPBACK4], "v6": [LOOPBACK6]}, {"A", "AAAA"}),
}


@pytest.mark.parametrize("family", LOOKUP_FAMILIES)
def test_lookup_family(dns_server: DNSTestServer, family: str) -> None:
    """§3.2: V4_ONLY / V6_ONLY one family; AUTO v6 then v4 fallback; V4_PREFERRED v4 then v6
    fallback (v6 only when there is no v4); ALL both."""
    expected, both_qtypes = FAMILY_EXPECTATIONS[family]
    dns_server.set("both.test", a=["127.0.0.1"], aaaa=["::1"])
    dns_server.set("v4.test", a=["127.0.0.1"])
    dns_server.set("v6.test", aaaa=["::1"])

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=family) as env:
            for short, want in expected.items():
                info = await env.resolved(f"{short}.test")
                got = info.addresses
                if family == ALL and short == "both":
                    assert sorted(got) == sorted(want)
                else:
                    assert got == want, f"{family} {short}.test"
            asked = {q.qtype for q in dns_server.queries if q.name == "both.test"}
            assert asked == both_qtypes
            if family == V4_ONLY:
                assert dns_server.count(qtype="AAAA") == 0
            if family == V6_ONLY:
                assert dns_server.count(qtype="A") == 0

    run(body())


def test_all_family_interleaves_address_families(dns_server: DNSTestServer) -> None:
    """ALL returns both families, interleaved (RFC 8305 §4) for Happy Eyeballs."""
    dns_server.set("dual.test", a=["127.0.0.1", "127.0.0.2", "127.0.0.3"], aaaa=["::1"])

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=ALL) as env:
            info = await env.resolved("dual.test")
            ips = [a for a, _ in info.addresses]
            assert sorted(ips) == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]
            assert info.addresses[0][1] != info.addresses[1][1], info.addresses

    run(body())


def test_interleave_alternates_starting_with_the_first_family() -> None:
    a1, a2, a3 = ("127.0.0.1", V4), ("127.0.0.2", V4), ("127.0.0.3", V4)
    b1, b2 = ("::1", V6), ("::2", V6)
    assert _interleave([b1, b2, a1, a2, a3]) == [b1, a1, b2, a2, a3]
    assert _interleave([a1, a2, b1]) == [a1, b1, a2]
    assert _interleave([a1, a2]) == [a1, a2]
    assert _interleave([a1]) == [a1]
    assert _interleave([]) == []


@pytest.mark.parametrize(
    ("family", "failing_qtype", "expected"),
    [(V4_PREFERRED, "A", LOOPBACK6), (AUTO, "AAAA", LOOPBACK4)],
)
def test_preferred_family_falls_back_when_the_first_lookup_fails(
    dns_server: DNSTestServer, family: str, failing_qtype: str, expected: tuple[str, int]
) -> None:
    """Envoy (cares dns_impl.cc ``onAresGetAddrInfoCallback``): for AUTO / V4_PREFERRED the
    second family is queried whenever the first lookup did not complete with addresses,
    whatever the reason (SERVFAIL included), not only on NODATA/NXDOMAIN."""
    dns_server.set("half.test", a=["127.0.0.1"], aaaa=["::1"])
    dns_server.set_error("half.test", "SERVFAIL", qtype=failing_qtype)

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=family) as env:
            info = await env.resolved("half.test")
            assert info.addresses == [expected], (
                f"{family}: {failing_qtype} SERVFAIL gave {info.addresses} "
                f"(last_status={info.last_status!r}), expected the other family"
            )

    run(body())


def test_cname_chain_refresh_uses_the_smallest_ttl(dns_server: DNSTestServer) -> None:
    """The TTL of the first record of the answer (reference §3.4) is the CNAME's here; Envoy
    takes min(CNAME TTLs, address TTL) (cares dns_impl.cc, ``min_ttl`` over ``cnames``)."""
    dns_server.set("alias.test", cname="target.test", ttl=1)
    dns_server.set("target.test", a=["127.0.0.3"], ttl=100)

    async def body() -> None:
        async with cache_env(dns_server, **FAST) as env:
            info = await env.resolved("alias.test")
            assert info.addresses == [("127.0.0.3", V4)]
            assert info.ttl == 1, f"ttl {info.ttl}: the CNAME's 1 s TTL was ignored"
            assert info.next_refresh_at - info.resolved_at == pytest.approx(1.0, abs=1e-6)

    run(body())


# ---------------------------------------------------------------------------- preresolve, hosts
def test_preresolve_at_start(dns_server: DNSTestServer) -> None:
    dns_server.set("warm.test", a=["127.0.0.1"])

    async def body() -> None:
        async with cache_env(dns_server) as env:
            env.cache.preresolve("warm.test", 8080)
            assert "warm.test:8080" in env.cache.hosts
            info = env.cache.hosts["warm.test:8080"]
            assert env.stat("host_added") == 1 and env.stat("dns_query_attempt") == 1
            await env.until(lambda: info.resolved, what="preresolve")
            assert info.addresses == [LOOPBACK4]
            assert env.cache.pending == 0
            status, hit, _ = env.load("warm.test", 8080)
            assert (status, hit) == (IN_CACHE, info)
            assert dns_server.count("warm.test") == 1
            env.cache.preresolve("warm.test", 8080)  # already there: nothing new
            assert env.stat("host_added") == 1
            env.cache.preresolve("::1", 8080)
            assert "[::1]:8080" in env.cache.hosts

    run(body())


def test_preresolve_key_matches_request_keys_case_insensitively(
    dns_server: DNSTestServer,
) -> None:
    """Requests are keyed by the lower-cased host (http.authority.parse_authority); a
    preresolved ``Warm.TEST`` must be the same entry, not a second host resolved again."""
    dns_server.set("warm.test", a=["127.0.0.1"])

    async def body() -> None:
        async with cache_env(dns_server) as env:
            env.cache.preresolve("Warm.TEST", 8080)
            assert list(env.cache.hosts) == ["warm.test:8080"]

    run(body())


def test_etc_hosts_without_servers() -> None:
    """No servers given: c-ares uses the system configuration, /etc/hosts first."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        resolver = Resolver(ResolverOptions(), loop)
        stats = StatsStore()
        cache = DnsCache(
            DnsCacheConfig(name=CACHE_NAME, dns_lookup_family=V4_ONLY), resolver, stats, loop
        )
        try:
            waiter = Waiter()
            status, info = cache.load("localhost:80", "localhost", 80, waiter)
            if status == LOADING:
                await waiter.wait()
            assert info is not None
            assert ("127.0.0.1", V4) in info.addresses
            res = await resolver.resolve("localhost", V4_PREFERRED)
            assert ("127.0.0.1", V4) in res.addresses
        finally:
            await shutdown(cache, resolver)

    run(body())


def test_etc_hosts_wins_over_the_dns_server(dns_server: DNSTestServer) -> None:
    """With explicit servers, /etc/hosts is still consulted first (c-ares lookups "fb")."""
    dns_server.set("localhost", a=["127.0.0.5"])

    async def body() -> None:
        async with cache_env(dns_server, dns_lookup_family=V4_ONLY) as env:
            info = await env.resolved("localhost")
            assert info.addresses == [LOOPBACK4]
            assert dns_server.count("localhost") == 0

    run(body())


# ---------------------------------------------------------------------------- Gloo config
def _gateway(tmp_path: Path, dfp_yaml: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "apiVersion: gateway.solo.io/v1\n"
        "kind: Gateway\n"
        "metadata: {name: gw}\n"
        "spec:\n"
        "  bindAddress: 127.0.0.1\n"
        "  bindPort: 8080\n"
        "  httpGateway:\n"
        "    options:\n"
        f"      dynamicForwardProxy: {dfp_yaml}\n"
    )
    return path


def test_gloo_dns_cache_config_defaults(tmp_path: Path) -> None:
    """§3 / §8.3 defaults; the Gloo default family is V4_PREFERRED."""
    config = load_paths([str(_gateway(tmp_path, "{}"))])
    dfp = config.listeners[0].dfp
    assert dfp is not None
    c = dfp.dns_cache
    assert c.dns_lookup_family == "V4_PREFERRED"
    assert (c.dns_refresh_rate, c.dns_min_refresh_rate, c.dns_query_timeout) == (60, 5, 5)
    assert (c.host_ttl, c.max_hosts, c.max_pending_requests) == (300, 1024, 1024)
    assert c.failure_base_interval is None and c.failure_max_interval is None
    assert c.preresolve_hostnames == []
    assert dfp.resolver.servers == ()


def test_gloo_dns_cache_config_fields(tmp_path: Path) -> None:
    dfp_yaml = (
        "{dnsCacheConfig: {dnsLookupFamily: ALL, hostTtl: 2s, maxHosts: 3, dnsRefreshRate: 1s,"
        " dnsMinRefreshRate: 1s, dnsQueryTimeout: 250ms,"
        " dnsFailureRefreshRate: {baseInterval: 0.2s, maxInterval: 1s},"
        " dnsCacheCircuitBreaker: {maxPendingRequests: 2},"
        " preresolveHostnames: [{address: warm.test, portValue: 8080}],"
        " caresDns: {resolvers: [{socketAddress: {address: 127.0.0.1, portValue: 5353}}],"
        " dnsResolverOptions: {useTcpForDnsLookups: true}}}}"
    )
    dfp = load_paths([str(_gateway(tmp_path, dfp_yaml))]).listeners[0].dfp
    assert dfp is not None
    c = dfp.dns_cache
    assert c.dns_lookup_family == "ALL"
    assert (c.host_ttl, c.max_hosts, c.dns_refresh_rate, c.dns_min_refresh_rate) == (2, 3, 1, 1)
    assert c.dns_query_timeout == pytest.approx(0.25)
    assert (c.failure_base_interval, c.failure_max_interval) == (0.2, 1.0)
    assert c.max_pending_requests == 2
    assert c.preresolve_hostnames == [("warm.test", 8080)]
    assert dfp.resolver.servers == ("127.0.0.1:5353",)
    assert dfp.resolver.use_tcp is True


def test_gloo_preresolve_without_port_value_uses_the_http_default_port(tmp_path: Path) -> None:
    """A preresolved name without ``portValue`` must be keyed like a request without a port
    (``host:80`` on the plain-HTTP DFP cluster), not with the DNS port 53."""
    dfp_yaml = "{dnsCacheConfig: {preresolveHostnames: [{address: warm.test}]}}"
    dfp = load_paths([str(_gateway(tmp_path, dfp_yaml))]).listeners[0].dfp
    assert dfp is not None
    assert dfp.dns_cache.preresolve_hostnames == [("warm.test", 80)]


@pytest.mark.parametrize(
    ("dfp_yaml", "message"),
    [
        (
            "{dnsCacheConfig: {maxHosts: 1, preresolveHostnames: "
            "[{address: a.test, portValue: 80}, {address: b.test, portValue: 80}]}}",
            "preresolve_hostnames=2 larger than max_hosts=1",
        ),
        (
            "{dnsCacheConfig: {dnsFailureRefreshRate: {baseInterval: 2s, maxInterval: 1s}}}",
            "max_interval greater than or equal to the base_interval",
        ),
    ],
)
def test_gloo_dns_cache_config_errors(tmp_path: Path, dfp_yaml: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_paths([str(_gateway(tmp_path, dfp_yaml))])
    assert message in str(err.value)
