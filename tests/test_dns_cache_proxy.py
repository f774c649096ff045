"""End to end: the DNS cache through the real proxy process (Gloo YAML via ``-c``).

Reference ``envoy-gloo-dfp.md`` §3 (DnsCacheConfig, Happy Eyeballs), §4.1-§4.3 (request path
and local replies), §5.1 (``dns_cache.<name>.*`` stats), §8.3 (Gloo ``dnsCacheConfig``).

Every test ends with ``assert_clean(proxy)``: the proxy's stderr holds no traceback.
Only loopback addresses are used, in DNS answers and sockets alike.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_no_traceback, wait_until
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

GATEWAY = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  bindAddress: 127.0.0.1
  bindPort: 0
  httpGateway:
    options:
      dynamicForwardProxy:
        dnsCacheConfig: {dns_cache}
      httpConnectionManagerSettings: {{upgrades: [{{connect: {{enabled: true}}}}]}}
"""

DNS_FAILURE = "DNS resolution failure"
CACHE_OVERFLOW = "DNS cache overflow"
PENDING_OVERFLOW = "Dynamic forward proxy pending request overflow"


# ---------------------------------------------------------------------------- helpers
assert_clean = assert_no_traceback


class Dfp:
    """A started proxy plus accessors for its DNS-cache admin views."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    def stat(self, name: str) -> int:
        """``dns_cache.<solo_io_generated_dfp:N>.<name>`` from /stats?format=json."""
        rx = rf"^dns_cache\..*\.{re.escape(name)}$"
        status, body = self.proxy.admin_get(f"/stats?format=json&filter={rx}")
        assert status == 200, body
        stats = json.loads(body)["stats"]
        assert len(stats) == 1, stats
        assert stats[0]["name"].startswith("dns_cache.solo_io_generated_dfp:")
        return int(stats[0]["value"])

    def hosts(self) -> dict[str, dict[str, Any]]:
        """The /dns_cache hosts of the (single) cache, by key."""
        status, body = self.proxy.admin_get("/dns_cache")
        assert status == 200, body
        caches = json.loads(body)["dns_caches"]
        assert len(caches) == 1, caches
        return {h["host"]: h for h in caches[0]["hosts"]}

    def get(self, url: str, timeout: float = 10.0) -> RawResponse:
        with RawClient("127.0.0.1", self.port, timeout=timeout) as c:
            return c.request("GET", url)

    def log_for(self, authority: str, n: int = 1) -> list[dict[str, Any]]:
        """The JSON access-log entries for ``authority`` (waits for ``n`` of them)."""

        def entries() -> list[dict[str, Any]]:
            return [e for e in self.proxy.access_log_json() if e.get("authority") == authority]

        return wait_until(lambda: len(entries()) >= n and entries(), what=f"log {authority}")


DfpFactory = Callable[..., Dfp]


@pytest.fixture
def dfp(proxy_factory: Callable[..., ProxyProcess], tmp_path: Path) -> DfpFactory:
    """``dfp(dns_cache_dict, loop="uvloop", **proxy_factory_kwargs)`` -> Dfp with a Gloo
    Gateway whose ``dnsCacheConfig`` is the dict, and a JSON access log."""
    count = 0

    def make(dns_cache: dict[str, Any] | None = None, **kwargs: Any) -> Dfp:
        nonlocal count
        count += 1
        path = tmp_path / f"gateway{count}.yaml"
        path.write_text(GATEWAY.format(dns_cache=json.dumps(dns_cache or {})))
        proxy = proxy_factory("-c", str(path), "--access-log-format", "json", **kwargs)
        return Dfp(proxy)

    return make


class _WhoAmI(http.server.BaseHTTPRequestHandler):
    """Answers its own listening address; HTTP/1.0, one request per connection."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        body = self.server.server_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.protocol_version == "HTTP/1.0":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _WhoAmIKeepAlive(_WhoAmI):
    """The same on persistent HTTP/1.1 connections."""

    protocol_version = "HTTP/1.1"


@contextlib.contextmanager
def twin_origins(hosts: tuple[str, str], keep_alive: bool = False) -> Iterator[int]:
    """Two tiny origins on the same port, one per loopback address; yields the port."""
    handler = _WhoAmIKeepAlive if keep_alive else _WhoAmI
    servers: list[http.server.ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []
    try:
        for _ in range(20):
            first = http.server.ThreadingHTTPServer((hosts[0], 0), handler)
            port = first.server_address[1]
            try:
                second = http.server.ThreadingHTTPServer((hosts[1], port), handler)
            except OSError:
                first.server_close()
                continue
            servers = [first, second]
            break
        else:
            raise RuntimeError("no common free port on both addresses")
        for srv in servers:
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
            t.start()
            threads.append(t)
        yield port
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        for t in threads:
            t.join(5)


@contextlib.contextmanager
def blackhole(host: str, port: int) -> Iterator[None]:
    """A loopback address:port where a TCP connect neither succeeds nor fails: a listener
    with backlog 0 whose accept queue is filled by one unaccepted connection, so further
    SYNs are dropped. Skips the test if the kernel does not behave that way."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, port))
            fillers.append(s)
        time.sleep(0.05)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect((host, port))
            hangs = False
        except TimeoutError:
            hangs = True
        except OSError:
            hangs = False
        finally:
            probe.close()
        if not hangs:
            pytest.skip("this kernel does not drop SYNs to a full accept queue")
        yield
    finally:
        for s in fillers:
            s.close()
        listener.close()


# ---------------------------------------------------------------------------- coalescing
def test_100_concurrent_requests_for_a_new_name_make_one_dns_query(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """§4.2 step 6: every request for the key waits on one resolution; all succeed."""
    proxy = dfp({"dnsLookupFamily": "V4_ONLY"})
    dns_server.set("burst.test", a=["127.0.0.1"])
    dns_server.set_delay("burst.test", 0.5)
    url = f"http://burst.test:{origin.port}/echo"
    clients = [RawClient("127.0.0.1", proxy.port, timeout=10) for _ in range(100)]
    try:
        for c in clients:
            c.send_request("GET", url)
        responses = [c.recv_response() for c in clients]
    finally:
        for c in clients:
            c.close()
    assert [r.status for r in responses] == [200] * 100
    assert all(r.json()["target"] == "/echo" for r in responses)
    assert dns_server.count("burst.test") == 1
    assert proxy.stat("dns_query_attempt") == 1
    assert proxy.stat("host_added") == 1
    assert proxy.stat("num_hosts") == 1
    assert proxy.stat("dns_rq_pending_overflow") == 0
    assert proxy.stat("circuit_breakers.rq_pending_remaining") == 1024
    assert len(origin.requests) == 100
    assert_clean(proxy.proxy)


# ---------------------------------------------------------------------------- address change
@pytest.mark.parametrize("keep_alive", [False, True], ids=["close", "keep-alive"])
def test_changed_dns_answer_moves_traffic_to_the_new_address(
    dfp: DfpFactory, dns_server: DNSTestServer, keep_alive: bool
) -> None:
    """After the answer changes, new requests go to the new address, even with an idle
    keep-alive connection to the old one in the pool."""
    with twin_origins(("127.0.0.1", "127.0.0.2"), keep_alive) as port:
        proxy = dfp({"dnsLookupFamily": "V4_ONLY", "dnsMinRefreshRate": "1s"})
        dns_server.set_sequence(
            "flip.test", [{"a": ["127.0.0.1"], "ttl": 1}, {"a": ["127.0.0.2"], "ttl": 1}]
        )
        url = f"http://flip.test:{port}/"
        first = proxy.get(url)
        assert (first.status, first.text) == (200, "127.0.0.1")
        key = f"flip.test:{port}"
        wait_until(
            lambda: proxy.hosts()[key]["addresses"] == ["127.0.0.2"],
            timeout=5,
            what="the refreshed address in /dns_cache",
        )
        assert proxy.stat("host_address_changed") == 1
        second = proxy.get(url)
        assert (second.status, second.text) == (200, "127.0.0.2")
        assert proxy.stat("host_added") == 1
        assert_clean(proxy.proxy)


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize("rcode", ["NXDOMAIN", "SERVFAIL"])
def test_dns_failure_is_a_stable_503_with_flag_df(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer, rcode: str
) -> None:
    """§4.3: 503 ``DNS resolution failure``, flag DF, twice in a row (Envoy
    RequestWithUnknownDomain)."""
    proxy = dfp({"dnsLookupFamily": "V4_ONLY"})
    name = f"{rcode.lower()}.test"
    dns_server.set_error(name, rcode)
    url = f"http://{name}:{origin.port}/echo"
    first = proxy.get(url)
    queries = dns_server.count(name)
    second = proxy.get(url)
    for r in (first, second):
        assert r.status == 503
        assert r.text == DNS_FAILURE
        assert r.header("content-type") == "text/plain"
    assert dns_server.count(name) == queries  # the second one is answered from the cache
    logged = proxy.log_for(f"{name}:{origin.port}", 2)
    assert [(e["response_code"], e["response_flags"]) for e in logged] == [(503, "DF")] * 2
    assert origin.requests == []
    assert proxy.stat("dns_query_attempt") == 1
    assert_clean(proxy.proxy)


def test_dns_query_timeout_through_the_proxy(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp({"dnsLookupFamily": "V4_ONLY", "dnsQueryTimeout": "0.3s"})
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 3.0)
    start = time.monotonic()
    r = proxy.get(f"http://slow.test:{origin.port}/echo")
    assert time.monotonic() - start < 2.5  # answered at the query timeout, not the DNS answer
    assert (r.status, r.text) == (503, DNS_FAILURE)
    assert proxy.stat("dns_query_timeout") == 1
    assert proxy.stat("dns_query_failure") == 1
    (entry,) = proxy.log_for(f"slow.test:{origin.port}")
    assert entry["response_flags"] == "DF"
    assert "resolve_timeout" in (entry["response_code_details"] or "")
    assert_clean(proxy.proxy)


def test_max_hosts_overflow(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp({"maxHosts": 2})
    for name in ("one.test", "two.test"):
        assert proxy.get(f"http://{name}:{origin.port}/echo").status == 200
    r = proxy.get(f"http://three.test:{origin.port}/echo")
    assert (r.status, r.text) == (503, CACHE_OVERFLOW)
    assert dns_server.count("three.test") == 0
    assert proxy.stat("host_overflow") == 1
    assert proxy.stat("num_hosts") == 2
    # cached hosts keep serving
    assert proxy.get(f"http://one.test:{origin.port}/echo").status == 200
    assert_clean(proxy.proxy)


def test_pending_request_overflow(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """§4.1 step 7: past maxPendingRequests a request gets 503 ``Dynamic forward proxy pending
    request overflow``; gauges rq_pending_open / rq_pending_remaining follow."""
    proxy = dfp({"dnsCacheCircuitBreaker": {"maxPendingRequests": 2}})
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 1.0)
    url = f"http://slow.test:{origin.port}/echo"
    waiting = [RawClient("127.0.0.1", proxy.port, timeout=10) for _ in range(2)]
    try:
        for c in waiting:
            c.send_request("GET", url)
        wait_until(
            lambda: proxy.stat("circuit_breakers.rq_pending_open") == 1,
            what="the pending breaker to open",
        )
        assert proxy.stat("circuit_breakers.rq_pending_remaining") == 0
        refused = proxy.get(url)
        assert (refused.status, refused.text) == (503, PENDING_OVERFLOW)
        assert proxy.stat("dns_rq_pending_overflow") == 1
        assert [c.recv_response().status for c in waiting] == [200, 200]
    finally:
        for c in waiting:
            c.close()
    assert proxy.stat("circuit_breakers.rq_pending_open") == 0
    assert proxy.stat("circuit_breakers.rq_pending_remaining") == 2
    assert dns_server.count("slow.test") == 1
    assert proxy.get(url).status == 200
    assert_clean(proxy.proxy)


def test_local_reply_details_match_envoy(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """§4.3 response-code details: ``dns_resolution_failure{…}``, ``dns_cache_overflow``,
    ``dynamic_forward_proxy_pending_request_overflow``."""
    proxy = dfp(
        {
            "dnsLookupFamily": "V4_ONLY",
            "maxHosts": 2,
            "dnsCacheCircuitBreaker": {"maxPendingRequests": 1},
        }
    )
    port = origin.port
    dns_server.set_error("nx.test", "SERVFAIL")
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 1.0)
    assert proxy.get(f"http://nx.test:{port}/").text == DNS_FAILURE
    with RawClient("127.0.0.1", proxy.port, timeout=10) as slow:
        slow.send_request("GET", f"http://slow.test:{port}/echo")
        dns_server.wait_for("slow.test")
        wait_until(lambda: proxy.stat("circuit_breakers.rq_pending_open") == 1, what="open")
        assert proxy.get(f"http://busy.test:{port}/").text == PENDING_OVERFLOW
        assert slow.recv_response().status == 200
    assert proxy.get(f"http://more.test:{port}/").text == CACHE_OVERFLOW
    details = {
        name: proxy.log_for(f"{name}:{port}")[0]["response_code_details"]
        for name in ("nx.test", "busy.test", "more.test")
    }
    assert str(details["nx.test"]).startswith("dns_resolution_failure"), details
    assert details["busy.test"] == "dynamic_forward_proxy_pending_request_overflow", details
    assert details["more.test"] == "dns_cache_overflow", details
    assert_clean(proxy.proxy)


def test_client_gone_while_waiting_for_dns_releases_its_pending_slot(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """A request that goes away while paused on DNS gives its pending slot back at once
    (the DNS server never answers, so only the cancellation can free it)."""
    proxy = dfp({"dnsCacheCircuitBreaker": {"maxPendingRequests": 1}})
    dns_server.set_drop("blackhole.test")
    with RawClient("127.0.0.1", proxy.port, timeout=10) as gone:
        gone.send_request("GET", f"http://blackhole.test:{origin.port}/")
        wait_until(lambda: proxy.stat("circuit_breakers.rq_pending_open") == 1, what="open")
        assert proxy.get(f"http://other.test:{origin.port}/").text == PENDING_OVERFLOW
        gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(
        lambda: proxy.stat("circuit_breakers.rq_pending_open") == 0,
        timeout=3,  # below the 5 s dnsQueryTimeout
        what="the slot to be released by the reset",
    )
    assert proxy.stat("circuit_breakers.rq_pending_remaining") == 1
    assert proxy.get(f"http://other.test:{origin.port}/echo").status == 200
    assert_clean(proxy.proxy)


# ---------------------------------------------------------------------------- lifecycle
def test_host_ttl_purge_visible_in_admin(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp({"hostTtl": "0.5s", "dnsMinRefreshRate": "1s"})
    dns_server.set("purge.test", a=["127.0.0.1"], ttl=1)
    key = f"purge.test:{origin.port}"
    assert proxy.get(f"http://{key}/echo").status == 200
    assert key in proxy.hosts()
    assert proxy.stat("num_hosts") == 1
    wait_until(lambda: key not in proxy.hosts(), timeout=5, what="the purge")
    assert proxy.stat("host_removed") == 1
    assert proxy.stat("num_hosts") == 0
    # a later request resolves it again
    assert proxy.get(f"http://{key}/echo").status == 200
    assert proxy.stat("host_added") == 2
    assert_clean(proxy.proxy)


def test_keep_last_good_address_through_the_proxy(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp(
        {
            "dnsLookupFamily": "V4_ONLY",
            "dnsMinRefreshRate": "1s",
            "dnsFailureRefreshRate": {"baseInterval": "0.2s", "maxInterval": "0.4s"},
        }
    )
    dns_server.set_sequence("sticky.test", [{"a": ["127.0.0.1"], "ttl": 1}, {"error": "SERVFAIL"}])
    url = f"http://sticky.test:{origin.port}/echo"
    assert proxy.get(url).status == 200
    wait_until(lambda: proxy.stat("dns_query_failure") >= 2, timeout=5, what="failed refreshes")
    entry = proxy.hosts()[f"sticky.test:{origin.port}"]
    assert entry["addresses"] == ["127.0.0.1"]
    assert entry["failures"] >= 2
    for _ in range(3):
        assert proxy.get(url).status == 200
    assert proxy.stat("host_address_changed") == 0
    assert_clean(proxy.proxy)


def test_failure_backoff_config_drives_retries(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """dnsFailureRefreshRate: retries within [0, base)…[0, max), not every dnsRefreshRate."""
    proxy = dfp(
        {
            "dnsLookupFamily": "V4_ONLY",
            "dnsRefreshRate": "60s",
            "dnsFailureRefreshRate": {"baseInterval": "0.2s", "maxInterval": "1s"},
        }
    )
    dns_server.set_error("flaky.test", "SERVFAIL")
    key = f"flaky.test:{origin.port}"
    assert proxy.get(f"http://{key}/").status == 503
    entry = wait_until(
        lambda: (h := proxy.hosts().get(key)) and h["failures"] >= 4 and h,
        timeout=6,
        what="4 failed resolutions",
    )
    assert entry["addresses"] == []
    nxt = entry["next_refresh_in_seconds"]
    assert nxt is None or nxt <= 1.0
    assert_clean(proxy.proxy)


def test_preresolved_host_is_cached_at_start_up(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """§3.1 field 10: loaded at cache creation, before any request; a failure is harmless."""
    dns_server.set_error("gone.test", "SERVFAIL")
    proxy = dfp(
        {
            "dnsLookupFamily": "V4_ONLY",
            "preresolveHostnames": [
                {"address": "warm.test", "portValue": origin.port},
                {"address": "gone.test", "portValue": origin.port},
            ],
        },
    )
    key = f"warm.test:{origin.port}"
    entry = wait_until(
        lambda: (h := proxy.hosts().get(key)) and h["addresses"] and h,
        what="the preresolved host",
    )
    assert entry["addresses"] == ["127.0.0.1"]
    assert entry["status"] == "success"
    assert f"gone.test:{origin.port}" in proxy.hosts()
    assert proxy.stat("host_added") == 2
    assert dns_server.count("warm.test") == 1
    assert proxy.get(f"http://{key}/echo").status == 200
    assert dns_server.count("warm.test") == 1  # served from the cache
    assert proxy.stat("host_added") == 2
    assert proxy.stat("dns_query_attempt") == 2
    assert_clean(proxy.proxy)


def test_use_tcp_for_dns_lookups(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """caresDns.resolvers + dnsResolverOptions.useTcpForDnsLookups (no --dns-resolver)."""
    proxy = dfp(
        {
            "dnsLookupFamily": "V4_ONLY",
            "caresDns": {
                "resolvers": [
                    {"socketAddress": {"address": "127.0.0.1", "portValue": dns_server.port}}
                ],
                "dnsResolverOptions": {"useTcpForDnsLookups": True},
            },
        },
        dns_resolver=None,
    )
    assert proxy.get(f"http://tcp.test:{origin.port}/echo").status == 200
    assert dns_server.count("tcp.test", protocol="tcp") >= 1
    assert dns_server.count("tcp.test", protocol="udp") == 0
    assert_clean(proxy.proxy)


# ---------------------------------------------------------------------------- Happy Eyeballs
def test_happy_eyeballs_skips_a_refused_first_address(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """§3.2 ALL: a failed first address starts the next attempt at once."""
    proxy = dfp({"dnsLookupFamily": "ALL"})
    dns_server.set("he.test", a=["127.0.0.9", "127.0.0.1"])  # nothing listens on 127.0.0.9
    key = f"he.test:{origin.port}"
    r = proxy.get(f"http://{key}/echo")
    assert r.status == 200
    assert proxy.hosts()[key]["addresses"] == ["127.0.0.9", "127.0.0.1"]  # dead one first
    assert len(origin.requests) == 1
    assert_clean(proxy.proxy)


def test_pooled_connection_only_serves_the_address_it_is_connected_to(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    """After a Happy Eyeballs fallback the kept-alive connection goes to 127.0.0.1, the
    second address. A name resolving only to 127.0.0.9 (nothing listens there) must not be
    sent over it: the request must fail to connect, never reach the 127.0.0.1 origin."""
    proxy = dfp({"dnsLookupFamily": "ALL"})
    dns_server.set("he.test", a=["127.0.0.9", "127.0.0.1"])
    dns_server.set("dead.test", a=["127.0.0.9"])
    assert proxy.get(f"http://he.test:{origin.port}/echo").status == 200
    r = proxy.get(f"http://dead.test:{origin.port}/echo")
    seen = [req.header("host") for req in origin.requests]
    assert r.status == 503, (
        f"dead.test (127.0.0.9 only) answered {r.status} by the 127.0.0.1 origin; "
        f"origin saw hosts {seen}"
    )
    assert seen == [f"he.test:{origin.port}"]
    assert_clean(proxy.proxy)


def test_happy_eyeballs_all_addresses_refused(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp({"dnsLookupFamily": "ALL"})
    dns_server.set("nowhere.test", a=["127.0.0.9", "127.0.0.11"], aaaa=["::1"])
    r = proxy.get(f"http://nowhere.test:{origin.port}/echo")
    assert r.status == 503
    assert r.text.startswith("upstream connect error or disconnect/reset before headers")
    (entry,) = proxy.log_for(f"nowhere.test:{origin.port}")
    assert entry["response_flags"] == "UF"
    assert origin.requests == []
    assert_clean(proxy.proxy)


@pytest.mark.parametrize("family", ["AUTO", "V4_PREFERRED"])
def test_ipv6_only_name_reaches_an_ipv6_origin(
    dfp: DfpFactory,
    dns_server: DNSTestServer,
    origin_factory: Callable[..., OriginServer],
    family: str,
) -> None:
    """AUTO asks AAAA first; V4_PREFERRED (the Gloo default) falls back to AAAA."""
    v6 = origin_factory("::1")
    proxy = dfp({"dnsLookupFamily": family} if family != "V4_PREFERRED" else {})
    dns_server.set("six.test", aaaa=["::1"])
    key = f"six.test:{v6.port}"
    assert proxy.get(f"http://{key}/echo").status == 200
    assert proxy.hosts()[key]["addresses"] == ["::1"]
    assert len(v6.requests) == 1
    assert_clean(proxy.proxy)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_happy_eyeballs_black_holed_first_address(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer, loop: str
) -> None:
    """§3.2: an attempt still connecting after 300 ms gets a backup to the next address."""
    with blackhole("127.0.0.10", origin.port):
        proxy = dfp({"dnsLookupFamily": "ALL"}, loop=loop)
        dns_server.set("hole.test", a=["127.0.0.10", "127.0.0.1"])
        key = f"hole.test:{origin.port}"
        start = time.monotonic()
        r = proxy.get(f"http://{key}/echo")
        elapsed = time.monotonic() - start
        assert r.status == 200
        assert 0.25 <= elapsed < 3.0, f"{elapsed:.3f}s"  # after the 300 ms attempt delay
        assert proxy.hosts()[key]["addresses"] == ["127.0.0.10", "127.0.0.1"]
        assert len(origin.requests) == 1
        assert_clean(proxy.proxy)


# ---------------------------------------------------------------------------- isolation
def test_slow_dns_for_one_host_does_not_delay_a_cached_host(
    dfp: DfpFactory, dns_server: DNSTestServer, origin: OriginServer
) -> None:
    proxy = dfp({"dnsLookupFamily": "V4_ONLY"})
    assert proxy.get(f"http://cached.test:{origin.port}/echo").status == 200
    dns_server.set("slow.test", a=["127.0.0.1"])
    dns_server.set_delay("slow.test", 1.0)
    with RawClient("127.0.0.1", proxy.port, timeout=10) as slow:
        slow.send_request("GET", f"http://slow.test:{origin.port}/echo")
        dns_server.wait_for("slow.test")
        fast = proxy.get(f"http://cached.test:{origin.port}/echo", timeout=5)
        assert fast.status == 200
        readable, _, _ = select.select([slow.sock], [], [], 0)
        assert not readable, "the slow request finished first: the cached one waited"
        assert slow.recv_response().status == 200
    assert_clean(proxy.proxy)
