"""dfproxy/jwt_authn/jwks_cache.py: a remote JWKS through a real DFP cluster (test DNS server,
a JWKS server on 127.0.0.1): on-demand fetch, caching, stale keys while refreshing, failure
back-off, asyncFetch and fastListener."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from dfproxy.cluster import DfpCluster
from dfproxy.jwt_authn.jwks_cache import RemoteJwks
from dfproxy.stats import StatsStore
from tests import jwt_support as s
from tests.helpers import serving
from tests.jwt_support import JwksServer
from tests.support.dns_server import DNSTestServer
from tests.upstream_helpers import dfp_cluster


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with serving(JwksServer()) as server:
        yield server


def run(dns: DNSTestServer, body: Callable[[DfpCluster, StatsStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        stats = StatsStore()
        cluster = dfp_cluster(asyncio.get_running_loop(), dns, "jwks_test", stats)
        try:
            return await body(cluster, stats)
        finally:
            cluster.close()

    return asyncio.run(main())


def make(cluster: DfpCluster, stats: StatsStore, url: str, **kw: Any) -> RemoteJwks:
    jwks = RemoteJwks(url, asyncio.get_running_loop(), stats, "jwt_authn.")
    jwks.configure(
        object(),
        kw.get("cache_duration", 300.0),
        kw.get("async_fetch", False),
        kw.get("fast_listener", False),
        lambda: cluster,
    )
    return jwks


async def fetched(jwks: RemoteJwks) -> None:
    done = asyncio.get_running_loop().create_future()
    jwks.add_waiter(lambda: done.done() or done.set_result(None))
    await asyncio.wait_for(done, 10)


def test_fetch_on_demand_then_cache_then_refresh_when_stale(
    dns_server: DNSTestServer, jwks_server: JwksServer
) -> None:
    url = f"http://jwks.test:{jwks_server.port}/jwks.json"

    async def body(cluster: DfpCluster, stats: StatsStore) -> None:
        jwks = make(cluster, stats, url, cache_duration=0.2)
        assert jwks.current() is None
        assert jwks.join()  # a fetch starts; the caller may wait
        await fetched(jwks)
        keys = jwks.current()
        assert keys is not None and keys[0].kid == "a"
        assert jwks_server.hits == 1 and jwks.task is None
        await asyncio.sleep(0.3)
        jwks_server.document = s.jwks(s.jwk(s.rsa_key(2), kid="b"))
        assert jwks.current() is keys  # stale keys are still served...
        assert jwks.task is not None  # ...while a refresh runs
        await fetched(jwks)
        new = jwks.current()
        assert new is not None and new[0].kid == "b"
        assert stats.counter("jwt_authn.jwks_fetch_success").value == 2
        jwks.close()

    run(dns_server, body)


def test_a_failed_fetch_backs_off_and_says_why(
    dns_server: DNSTestServer, jwks_server: JwksServer
) -> None:
    async def body(cluster: DfpCluster, stats: StatsStore) -> None:
        down = make(cluster, stats, "http://jwks-down.test:1/keys")
        assert down.join()
        await fetched(down)
        assert down.current() is None and "connect to jwks-down.test:1 failed" in down.last_error
        assert not down.join()  # within FAILED_REFETCH_INTERVAL: fail at once, no new fetch
        assert down.task is None
        bad = make(cluster, stats, f"http://jwks.test:{jwks_server.port}/other")
        bad.join()
        await fetched(bad)
        assert bad.current() is None and "status 404" in bad.last_error
        jwks_server.document = "not json"
        junk = make(cluster, stats, f"http://jwks.test:{jwks_server.port}/jwks.json")
        junk.join()
        await fetched(junk)
        assert junk.current() is None and "invalid JSON" in junk.last_error
        assert stats.counter("jwt_authn.jwks_fetch_failed").value == 3

    run(dns_server, body)


def test_async_fetch_starts_without_a_request_and_fast_listener_never_waits(
    dns_server: DNSTestServer, jwks_server: JwksServer
) -> None:
    url = f"http://jwks.test:{jwks_server.port}/jwks.json"

    async def body(cluster: DfpCluster, stats: StatsStore) -> None:
        jwks = make(cluster, stats, url, async_fetch=True, fast_listener=True)
        assert not jwks.join()  # fastListener: a request never waits for the keys
        for _ in range(200):
            if jwks.keys is not None:
                break
            await asyncio.sleep(0.02)
        assert jwks.keys is not None and jwks_server.hits >= 1
        assert jwks.timer is not None  # the next refresh is scheduled
        jwks.close()
        assert jwks.timer is None

    run(dns_server, body)


def test_no_cluster_to_fetch_through(dns_server: DNSTestServer) -> None:
    async def body(cluster: DfpCluster, stats: StatsStore) -> None:
        jwks = RemoteJwks("http://x.test/", asyncio.get_running_loop(), stats, "p.")
        jwks.join()
        await fetched(jwks)
        assert "no dynamic forward proxy cluster" in jwks.last_error

    run(dns_server, body)


def test_async_fetch_of_keys_nobody_uses_stops_even_while_the_server_is_down(
    dns_server: DNSTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JWKS a reload no longer configures stays in ``runtime.shared``; with asyncFetch
    and its server gone it must not retry (and log a warning) every second for ever."""
    from dfproxy.jwt_authn import jwks_cache

    monkeypatch.setattr(jwks_cache, "FAILED_REFETCH_INTERVAL", 0.05)

    async def body(cluster: DfpCluster, stats: StatsStore) -> int:
        jwks = make(
            cluster, stats, "http://jwks-down.test:1/keys", cache_duration=0.1, async_fetch=True
        )
        failed = stats.counter("jwt_authn.jwks_fetch_failed")
        for _ in range(100):  # unused for far more than IDLE_PERIODS cache periods
            await asyncio.sleep(0.02)
            if jwks.timer is None and jwks.task is None and failed.value:
                break
        attempts = failed.value
        assert attempts >= 1
        await asyncio.sleep(0.3)
        assert (jwks.timer, jwks.task) == (None, None)
        return failed.value - attempts

    assert run(dns_server, body) == 0
