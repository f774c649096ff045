"""The proxy's own HTTP client (dfproxy/upstream/client.py) through a real DFP cluster: DNS
from the test server, connections from the pool, reused after a complete response."""

from __future__ import annotations

import asyncio
import json

import pytest

from dfproxy.cluster import DfpCluster
from dfproxy.upstream.client import ClientError, fetch
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.upstream_helpers import dfp_cluster


def _run(dns: DNSTestServer, body: object) -> object:
    async def main() -> object:
        cluster = dfp_cluster(asyncio.get_running_loop(), dns, "client_test")
        try:
            return await body(cluster)  # type: ignore[operator]
        finally:
            cluster.close()

    return asyncio.run(main())


def test_fetch_resolves_through_the_cache_and_reuses_the_connection(
    dns_server: DNSTestServer, origin: OriginServer
) -> None:
    dns_server.set("keys.test", ["127.0.0.1"])

    async def body(cluster: DfpCluster) -> object:
        url = f"http://keys.test:{origin.port}/echo"
        first = await fetch(cluster, url, headers=[(b"x-a", b"1")])
        second = await fetch(cluster, url, method=b"POST", body=b"hello")
        return first, second

    first, second = _run(dns_server, body)  # type: ignore[misc]
    one, two = json.loads(first.body), json.loads(second.body)
    assert first.status == 200 and ["x-a", "1"] in one["headers"]
    assert ["host", f"keys.test:{origin.port}"] in one["headers"]
    assert two["method"] == "POST" and two["body_length"] == 5
    assert one["connection_id"] == two["connection_id"]  # pooled, not reopened


@pytest.mark.parametrize(
    ("setup", "url", "reason"),
    [
        (lambda d: d.set_error("gone.test"), "http://gone.test:{port}/", "DNS resolution failure"),
        (lambda d: None, "ftp://x/", "expected an http://"),
        (lambda d: None, "https://127.0.0.1:{port}/", "needs a cluster with upstream TLS"),
        (lambda d: None, "http://127.0.0.1:1/", "connect to 127.0.0.1:1 failed"),
        (lambda d: None, "http://127.0.0.1:{port}/reset-before-headers", "upstream reset"),
        (lambda d: None, "http://127.0.0.1:{port}/bytes/2000000", "larger than"),
    ],
)
def test_fetch_failures_raise_client_error(
    dns_server: DNSTestServer, origin: OriginServer, setup: object, url: str, reason: str
) -> None:
    setup(dns_server)  # type: ignore[operator]

    async def body(cluster: DfpCluster) -> object:
        with pytest.raises(ClientError, match=reason):
            await fetch(cluster, url.format(port=origin.port))
        return None

    _run(dns_server, body)


def test_fetch_times_out(dns_server: DNSTestServer, origin: OriginServer) -> None:
    async def body(cluster: DfpCluster) -> object:
        with pytest.raises(ClientError, match="no response .* within 0.2 s"):
            await fetch(cluster, f"http://127.0.0.1:{origin.port}/slow-headers/2", time_limit=0.2)
        return None

    _run(dns_server, body)
