"""The proxy's own HTTP client (dfproxy/upstream/client.py) through a real DFP cluster: DNS
from the test server, connections from the pool, reused after a complete response."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

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


@pytest.mark.interpreted
def test_a_call_cancelled_as_its_connection_arrives_gives_the_connection_back(
    dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """The time limit (or the caller) may cancel a fetch in the very loop turn in which the
    pool hands it a new connection: the connection must not stay open and counted against
    max_connections for ever."""

    async def body(cluster: DfpCluster) -> object:
        pool = cluster.pool
        original = pool.request
        task: asyncio.Task[object] | None = None

        def request(host: object, callback: object, plain: bool = False) -> bool:
            def arrived(conn: object, reason: str) -> None:
                callback(conn, reason)  # type: ignore[operator]
                # Cancel the task that waits for the connection before it resumes: what a
                # time limit expiring in this loop turn does (wait_for runs the exchange in
                # a task of its own before Python 3.12, in the caller's from 3.12).
                inner = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_exchange"]
                assert task is not None
                for t in inner or [task]:
                    t.cancel()

            return original(host, arrived, plain)  # type: ignore[arg-type]

        pool.request = request  # type: ignore[method-assign]
        task = asyncio.ensure_future(fetch(cluster, f"http://127.0.0.1:{origin.port}/echo"))
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the close is reported a turn or two later
            if pool.breakers.connections.count == 0:
                break
            await asyncio.sleep(0.01)
        return pool.breakers.connections.count, pool.active

    assert _run(dns_server, body) == (0, 0)


def test_an_unrequested_101_does_not_keep_the_connection(dns_server: DNSTestServer) -> None:
    """A server that answers 101 to a plain request (the client never asks to upgrade) must
    not leave the connection open as a tunnel nobody reads, holding a breaker slot."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    closed = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
            )
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                return
            closed.set()  # the proxy closed its end

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def body(cluster: DfpCluster) -> object:
        with pytest.raises(ClientError, match="unexpected protocol upgrade"):
            await fetch(cluster, f"http://127.0.0.1:{port}/", time_limit=2.0)
        for _ in range(100):
            if cluster.pool.breakers.connections.count == 0:
                break
            await asyncio.sleep(0.01)
        return cluster.pool.breakers.connections.count

    try:
        assert _run(dns_server, body) == 0
        assert closed.wait(5)
    finally:
        listener.close()
        server.join(5)
