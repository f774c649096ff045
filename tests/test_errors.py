"""Every error the proxy answers itself: exact status, body, ``content-type: text/plain``,
the response flag in the access log, a line on stderr, and the client connection left usable
where HTTP allows it. One proxy per event loop (JSON access log, so each line can be found by
its user agent or details) serves the module; the route-timeout cases use their own proxy
with a Gloo config that sets ``options.timeout: 1s``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import shared_proxy
from tests.helpers import (
    module_proxy,
    parse_log_line,
    wait_for,
    wait_for_log_line,
    wait_for_stderr,
)
from tests.support.clients import IncompleteResponseError, RawClient, RawResponse, build_request
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import ProxyProcess

DNS_FAILURE = "DNS resolution failure"
CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
CONNECTION_TERMINATION = (
    "upstream connect error or disconnect/reset before headers. "
    "reset reason: connection termination"
)
PROTOCOL_ERROR = (
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
)
TIMEOUT = "upstream request timeout"
EMPTY_HOST = "Empty host header"

TIMEOUT_CONFIG = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata:
  name: gateway-proxy
  namespace: gloo-system
spec:
  bindAddress: "127.0.0.1"
  bindPort: 8080
  httpGateway:
    options:
      dynamicForwardProxy: {}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata:
  name: short-timeout
  namespace: gloo-system
spec:
  virtualHost:
    domains: ['*']
    routes:
      - matchers:
          - prefix: /
        routeAction:
          dynamicForwardProxy: {}
        options:
          timeout: 1s
"""


# ---------------------------------------------------------------------------- fixtures
# One DNS server and one proxy per event loop for this file (tests/shared_proxy.py).
_proxy_still_alive = shared_proxy._proxy_still_alive
client = shared_proxy.client
dns_server = shared_proxy.dns_server
proxy_loop = shared_proxy.proxy_loop


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, proxy_loop: str
) -> Iterator[ProxyProcess]:
    with module_proxy(
        tmp_path_factory,
        dns_server,
        proxy_loop,
        "--access-log-format",
        "json",
        log_level="info",
    ) as p:
        yield p


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_entry(
    proxy: ProxyProcess, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The first JSON access-log entry for which ``match`` is true (waits for the flush)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [e for e in map(json.loads, proxy.access_log_lines()) if match(e)]
        return bool(found)

    wait_for(look, timeout, "a matching access log entry")
    return found[0]


def by_agent(agent: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("user_agent") == agent


def assert_local_reply(resp: RawResponse, status: int, body: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.text == body
    assert resp.header("content-type") == "text/plain"
    assert resp.header("content-length") == str(len(body.encode()))
    assert resp.framing == "content-length"


def assert_usable(c: RawClient, origin: OriginServer) -> None:
    """The same client connection still carries a normal request."""
    resp = c.request("GET", origin.url("/echo"))
    assert resp.status == 200
    assert resp.json()["target"] == "/echo"


# ---------------------------------------------------------------------------- upstream errors
def test_dns_failure(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"nx-{proxy_loop}.test"
    dns_server.set_error(name, "NXDOMAIN")
    agent = f"dns-failure-{proxy_loop}"
    with client(proxy) as c:
        resp = c.request("GET", f"http://{name}:{origin.port}/x", {"User-Agent": agent})
        assert_local_reply(resp, 503, DNS_FAILURE)
        assert_usable(c, origin)
    with client(proxy) as c:  # stable across requests (Envoy RequestWithUnknownDomain)
        resp = c.request("GET", f"http://{name}:{origin.port}/x", {"User-Agent": agent})
        assert_local_reply(resp, 503, DNS_FAILURE)
    assert dns_server.count(name) >= 1
    entry = json_entry(proxy, by_agent(agent))
    assert entry["response_code"] == 503
    assert entry["response_flags"] == "DF"
    assert entry["authority"] == f"{name}:{origin.port}"
    wait_for_stderr(proxy, rf"{name}.*503 {DNS_FAILURE}")


def test_dns_servfail(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"servfail-{proxy_loop}.test"
    dns_server.set_error(name, "SERVFAIL")
    with client(proxy) as c:
        resp = c.request("GET", f"http://{name}:{origin.port}/x")
        assert_local_reply(resp, 503, DNS_FAILURE)
        assert_usable(c, origin)


def test_connection_refused(proxy: ProxyProcess, origin: OriginServer, proxy_loop: str) -> None:
    port = closed_port()
    agent = f"refused-{proxy_loop}"
    with client(proxy) as c:
        resp = c.request("GET", f"http://127.0.0.1:{port}/x", {"User-Agent": agent})
        assert_local_reply(resp, 503, CONNECT_FAILURE)
        assert_usable(c, origin)
    entry = json_entry(proxy, by_agent(agent))
    assert entry["response_flags"] == "UF"
    assert entry["response_code"] == 503
    wait_for_stderr(proxy, rf"127\.0\.0\.1:{port}/x -> 503 upstream connect error")


def test_reset_before_headers(proxy: ProxyProcess, origin: OriginServer, proxy_loop: str) -> None:
    agent = f"reset-{proxy_loop}"
    with client(proxy) as c:
        resp = c.request("GET", origin.url("/reset-before-headers"), {"User-Agent": agent})
        assert_local_reply(resp, 503, CONNECTION_TERMINATION)
        assert_usable(c, origin)
    entry = json_entry(proxy, by_agent(agent))
    assert entry["response_flags"] == "UC"
    assert entry["response_code"] == 503
    wait_for_stderr(proxy, r"/reset-before-headers -> 503 .*connection termination")


def test_reset_before_headers_with_request_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        resp = c.request("POST", origin.url("/reset-before-headers"), body=b"x" * 5000)
        assert_local_reply(resp, 503, CONNECTION_TERMINATION)
        assert_usable(c, origin)


def test_invalid_upstream_response_is_502(
    proxy: ProxyProcess, origin: OriginServer, tcp_echo_server: TcpEchoServer, proxy_loop: str
) -> None:
    """An origin that answers with something that is not HTTP (here: a TCP echo server, which
    sends the request back) is an upstream protocol error. Envoy: 502, body ``... reset
    reason: protocol error``, flag UPE (errors.UpstreamProtocolError has exactly that)."""
    agent = f"bad-origin-{proxy_loop}"
    with client(proxy) as c:
        resp = c.request("GET", f"http://{tcp_echo_server.authority}/x", {"User-Agent": agent})
        assert_local_reply(resp, 502, PROTOCOL_ERROR)
        assert_usable(c, origin)
    entry = json_entry(proxy, by_agent(agent))
    assert entry["response_flags"] == "UPE"


def test_forwarding_loop_is_508(proxy: ProxyProcess, proxy_loop: str) -> None:
    agent = f"loop-{proxy_loop}"
    with client(proxy) as c:
        resp = c.request("GET", f"http://127.0.0.1:{proxy.port}/x", {"User-Agent": agent})
        assert resp.status == 508
        assert resp.header("content-type") == "text/plain"
        assert "forwarding loop" in resp.text
    entry = json_entry(proxy, by_agent(agent))
    assert entry["response_code"] == 508
    wait_for_stderr(proxy, rf"127\.0\.0\.1:{proxy.port}/x -> 508 forwarding loop")
    # through a DNS name that resolves to the proxy itself
    with client(proxy) as c:
        assert c.request("GET", f"http://loop-{proxy_loop}.test:{proxy.port}/y").status == 508
    # origin-form with the proxy's own address as Host
    with client(proxy) as c:
        c.send(build_request("GET", "/z", {"Host": f"127.0.0.1:{proxy.port}"}))
        assert c.recv_response().status == 508
    # CONNECT to itself
    with client(proxy) as c:
        target = f"127.0.0.1:{proxy.port}"
        c.send(build_request("CONNECT", target, {"Host": target}))
        assert c.recv_response(method="CONNECT").status == 508


def test_forwarding_loop_in_other_spellings_is_508(
    proxy_factory: Callable[..., ProxyProcess], dns_server: DNSTestServer
) -> None:
    """The guard compares addresses, not texts: the IPv4-mapped spelling of the listener's
    address, the unspecified address (Linux connects 0.0.0.0 to the local host) and a name
    whose second address is the proxy (Happy Eyeballs falls back to it) are loops too.
    Missed, each of these requests came back to the proxy about a thousand times, until
    max_requests overflowed."""
    p = proxy_factory("--allow-destination", "0.0.0.0")  # the embedded default denies it
    dns_server.set("loop-second.test", a=["127.0.0.3", "127.0.0.1"])  # nothing on .3
    for host in ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0", "loop-second.test"):
        with client(p) as c:
            resp = c.request("GET", f"http://{host}:{p.port}/x")
            assert resp.status == 508, (host, resp.status, resp.text)
            assert "forwarding loop" in resp.text
    _, stats = p.admin_get("/stats")
    assert b"http.gateway-proxy.downstream_rq_total: 4\n" in stats  # no request came back


@pytest.mark.parametrize("case", ["dns-failure-cached", "forwarding-loop", "empty-host"])
def test_connection_usable_after_immediate_local_reply(
    proxy: ProxyProcess,
    origin: OriginServer,
    dns_server: DNSTestServer,
    proxy_loop: str,
    case: str,
) -> None:
    """A local reply decided while the request head is parsed (DNS failure already cached,
    forwarding loop, empty Host) to a complete bodiless GET must not close the keep-alive
    connection: the request is complete, so the next one can be read safely."""
    name = f"nx-cached-{proxy_loop}.test"
    dns_server.set_error(name, "NXDOMAIN")
    wire = {
        "dns-failure-cached": build_request("GET", f"http://{name}/x", {"Host": name}),
        "forwarding-loop": build_request(
            "GET", f"http://127.0.0.1:{proxy.port}/x", {"Host": f"127.0.0.1:{proxy.port}"}
        ),
        "empty-host": b"GET /echo HTTP/1.1\r\nHost: \r\n\r\n",
    }[case]
    if case == "dns-failure-cached":
        with client(proxy) as c:  # first lookup: the failure is now in the DNS cache
            c.send(wire)
            assert c.recv_response().status == 503
    with client(proxy) as c:
        c.send(wire)
        resp = c.recv_response()
        assert resp.status in (400, 503, 508)
        assert "close" not in (resp.header("connection") or "").lower(), resp.raw_head
        assert_usable(c, origin)


# ---------------------------------------------------------------------------- malformed requests
@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage-request-line"),
        pytest.param(b"GET /echo HTTP/1.1 extra\r\nHost: a\r\n\r\n", id="bad-request-line"),
        pytest.param(b"GET /echo HTTP/9.9\r\nHost: a\r\n\r\n", id="bad-version"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", id="no-colon"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", id="nul-in-value"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a:99999\r\n\r\n", id="host-port-range"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: ::1\r\n\r\n", id="host-bare-ipv6"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a:\xb2\r\n\r\n", id="host-superscript-port"),
        pytest.param(b"GET http://a:\xd9\xa1/ HTTP/1.1\r\n\r\n", id="target-non-ascii-port"),
        pytest.param(b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="unsupported-scheme"),
        pytest.param(b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="userinfo"),
    ],
)
def test_malformed_request_is_400_and_close(proxy: ProxyProcess, wire: bytes) -> None:
    with client(proxy) as c:
        c.send(wire)
        resp = c.recv_response()
        assert resp.status == 400, (resp.status, resp.body)
        assert resp.header("content-type") in ("text/plain", None)
        assert "close" in (resp.header("connection") or "").lower()
        assert c.is_closed_by_peer(5)


@pytest.mark.parametrize("where", ["headers", "target"])
def test_oversized_request_head_is_rejected(
    proxy: ProxyProcess, origin: OriginServer, where: str
) -> None:
    """The request head is bounded (Envoy: max_request_headers_kb, 60 KiB by default, then
    431). Without a bound a client makes the proxy buffer any amount of header bytes."""
    head = b"GET " + origin.url("/echo").encode()
    if where == "target":
        head += b"?" + b"q" * (1 << 20)
    head += b" HTTP/1.1\r\nHost: " + origin.authority.encode() + b"\r\n"
    with client(proxy) as c:
        try:
            c.send(head)
            if where == "headers":
                for i in range(1024):  # 1 MiB of header fields
                    c.send(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
            c.send(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: fine
        try:
            resp = c.recv_response()
        except IncompleteResponseError:
            resp = None  # closed without an answer: acceptable
        if resp is not None:
            assert resp.status in (400, 431), (resp.status, (resp.body or b"")[:200])
    assert origin.requests == []


def test_malformed_request_logged(proxy: ProxyProcess) -> None:
    with client(proxy) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert c.recv_response().status == 400
    entry = json_entry(proxy, lambda e: "multiple Host" in (e.get("response_code_details") or ""))
    assert entry["response_code"] == 400
    assert entry["response_flags"] == "DPE"
    wait_for_stderr(proxy, r"bad request from 127\.0\.0\.1:\d+: multiple Host headers")


# ---------------------------------------------------------------------------- Host
def test_http10_without_host_is_400_empty_host(proxy: ProxyProcess) -> None:
    with client(proxy) as c:
        c.send(b"GET /echo HTTP/1.0\r\nUser-Agent: no-host\r\n\r\n")
        resp = c.recv_response()
        assert_local_reply(resp, 400, EMPTY_HOST)
        assert c.is_closed_by_peer(5)  # HTTP/1.0 without keep-alive
    wait_for_stderr(proxy, r"GET /echo -> 400 Empty host header")


def test_http11_without_host_is_400(proxy: ProxyProcess) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host."""
    with client(proxy) as c:
        c.send(b"GET /echo HTTP/1.1\r\n\r\n")
        resp = c.recv_response()
        assert resp.status == 400


def test_empty_host_is_400(proxy: ProxyProcess) -> None:
    for wire in (
        b"GET /echo HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET /echo HTTP/1.0\r\nHost:\r\nConnection: keep-alive\r\n\r\n",
    ):
        with client(proxy) as c:
            c.send(wire)
            assert_local_reply(c.recv_response(), 400, EMPTY_HOST)


def test_head_local_reply_has_no_body(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"nx-head-{proxy_loop}.test"
    dns_server.set_error(name, "NXDOMAIN")
    with client(proxy) as c:
        resp = c.request("HEAD", f"http://{name}/x")
        assert resp.status == 503
        assert resp.header("content-length") == str(len(DNS_FAILURE))
        assert resp.body == b""
        assert_usable(c, origin)


def test_proxy_still_serves_after_errors(proxy: ProxyProcess, origin: OriginServer) -> None:
    """Runs last in the module (per event loop): everything above left the proxy healthy."""
    r = proxy.curl(origin.url("/echo"))
    assert r.http_code == 200
    with client(proxy) as c:
        assert c.request("GET", origin.url("/bytes/100000")).body_length == 100000
    status, body = proxy.admin_get("/ready")
    assert (status, body) == (200, b"LIVE\n")


# ---------------------------------------------------------------------------- route timeout
@pytest.fixture(scope="module")
def timeout_proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, proxy_loop: str
) -> Iterator[ProxyProcess]:
    """One proxy per loop with a 1 s route timeout, for the two tests below."""
    with module_proxy(
        tmp_path_factory, dns_server, proxy_loop, log_level="info", config=TIMEOUT_CONFIG
    ) as p:
        yield p


def test_upstream_timeout_is_504(
    timeout_proxy: ProxyProcess, origin: OriginServer, proxy_loop: str
) -> None:
    agent = f"timeout-{proxy_loop}"
    with RawClient("127.0.0.1", timeout_proxy.port, timeout=10) as c:
        start = time.monotonic()
        resp = c.request("GET", origin.url("/slow-headers/4"), {"User-Agent": agent})
        elapsed = time.monotonic() - start
        assert_local_reply(resp, 504, TIMEOUT)
        assert 0.9 <= elapsed < 3.0, elapsed
        assert_usable(c, origin)
    line = parse_log_line(wait_for_log_line(timeout_proxy, rf'"{agent}"'))
    assert line["status"] == "504"
    assert line["flags"] == "UT"
    wait_for_stderr(timeout_proxy, r"/slow-headers/4 -> 504 upstream request timeout")


def test_timeout_after_response_started_resets_client(
    timeout_proxy: ProxyProcess, origin: OriginServer, proxy_loop: str
) -> None:
    """The route timeout covers the whole response (Envoy): a body that stalls past it ends
    the client connection before Content-Length is satisfied."""
    agent = f"stall-{proxy_loop}"
    with RawClient("127.0.0.1", timeout_proxy.port, timeout=10) as c:
        start = time.monotonic()
        c.send_request("GET", origin.url("/stall-body/20000"), {"User-Agent": agent})
        with pytest.raises(IncompleteResponseError) as info:
            c.recv_response()
        assert time.monotonic() - start < 5
        assert info.value.partial is not None
        assert info.value.partial.status == 200
        assert info.value.partial.body_length == 10000
    line = parse_log_line(wait_for_log_line(timeout_proxy, rf'"{agent}"'))
    assert line["flags"] == "UT"
    with RawClient("127.0.0.1", timeout_proxy.port, timeout=10) as c:
        assert_usable(c, origin)
