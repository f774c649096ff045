"""CONNECT tunnels terminated by the proxy (RFC 9110 §9.3.6): curl --proxytunnel, the exact
2xx, early tunnel bytes, half-close, the 400/503 refusals and the access-log line."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests import shared_proxy
from tests.helpers import (
    no_ip_queries,
    parse_log_line,
    wait_for_log_line,
)
from tests.support.clients import build_request
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer, TcpEchoServer, pattern_bytes
from tests.support.proxy import ProxyProcess

CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)


# ---------------------------------------------------------------------------- fixtures
# One DNS server and one proxy per event loop for this file (tests/shared_proxy.py).
_proxy_still_alive = shared_proxy._proxy_still_alive
client = shared_proxy.client
dns_server = shared_proxy.dns_server
proxy = shared_proxy.proxy
proxy_loop = shared_proxy.proxy_loop


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- tunnels
def test_curl_proxytunnel(proxy: ProxyProcess, origin: OriginServer) -> None:
    r = proxy.curl("-p", origin.url("/echo?via=tunnel"))
    r.check()
    assert r.http_code == 200
    seen = r.json()
    assert seen["target"] == "/echo?via=tunnel"  # curl speaks origin-form inside the tunnel
    assert origin.connections_accepted == 1


def test_curl_proxytunnel_big_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    r = proxy.curl("-p", "-o", "/dev/null", origin.url(f"/bytes/{8 << 20}"))
    r.check()
    assert r.http_code == 200
    assert r.info is not None and r.info["size_download"] == 8 << 20


def test_connect_response_is_exactly_200_without_framing(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer
) -> None:
    with client(proxy) as c:
        resp = c.request("CONNECT", tcp_echo_server.authority)
        assert resp.status == 200
        assert resp.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert resp.header("content-length") is None
        assert resp.header("transfer-encoding") is None
        c.send(b"ping")
        assert c.recv_exact(4) == b"ping"
        big = pattern_bytes(1 << 20)
        c.send(big)
        assert c.recv_exact(len(big)) == big


def test_bytes_in_same_packet_as_connect_head_are_forwarded(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer
) -> None:
    target = tcp_echo_server.authority
    head = build_request("CONNECT", target, {"Host": target})
    with client(proxy) as c:
        c.send(head + b"early-payload")  # one send: head and tunnel data together
        resp = c.recv_response(method="CONNECT")
        assert resp.status == 200
        assert c.recv_exact(len(b"early-payload")) == b"early-payload"
        c.send(b"more")
        assert c.recv_exact(4) == b"more"


def test_early_bytes_that_look_like_http_are_tunnel_data(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer
) -> None:
    """What follows a CONNECT head is tunnel data even if it parses as a request."""
    target = tcp_echo_server.authority
    inner = b"GET /not-for-the-proxy HTTP/1.1\r\nHost: x\r\n\r\n"
    with client(proxy) as c:
        c.send(build_request("CONNECT", target, {"Host": target}) + inner)
        assert c.recv_response(method="CONNECT").status == 200
        assert c.recv_exact(len(inner)) == inner


def test_half_close_propagates_both_ways(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer
) -> None:
    payload = pattern_bytes(3 << 20)
    with client(proxy) as c:
        assert c.request("CONNECT", tcp_echo_server.authority).status == 200
        c.send(payload)
        c.shutdown_write()  # FIN to the proxy, which must pass it on to the echo server
        echoed = c.recv_until_closed()  # the echo server finishes, then FINs
        assert not c.reset_seen
    assert len(echoed) == len(payload)
    assert echoed == payload


def test_server_speaks_first(
    proxy_factory: Callable[..., ProxyProcess],
    proxy_loop: str,
    tcp_echo_factory: Callable[..., TcpEchoServer],
) -> None:
    """Server-first protocols (SMTP, SSH, MySQL): the origin writes as soon as the TCP
    connection is up, possibly before the proxy has attached the tunnel to it. Those bytes
    must reach the client. Repeated, because it is a race. (Own proxy with a short drain:
    a tunnel left hanging here must not slow down the module's teardown.)"""
    p = proxy_factory("--drain-timeout", "1", loop=proxy_loop)
    server = tcp_echo_factory(greeting=b"220 hello\r\n")
    for i in range(20):
        with client(p, timeout=3) as c:
            assert c.request("CONNECT", server.authority).status == 200
            try:
                greeting = c.recv_exact(11)
            except (EOFError, TimeoutError) as e:
                pytest.fail(f"attempt {i}: the greeting was lost ({e!r})")
            assert greeting == b"220 hello\r\n"
            c.send(b"ok")
            assert c.recv_exact(2) == b"ok"


def test_connect_to_dns_name(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"tunnel-{proxy_loop}.test"
    with client(proxy) as c:
        assert c.request("CONNECT", f"{name}:{tcp_echo_server.port}").status == 200
        c.send(b"x")
        assert c.recv_exact(1) == b"x"
    assert dns_server.count(name) >= 1


def test_connect_to_ipv6_literal(
    proxy: ProxyProcess,
    tcp_echo_factory: Callable[..., TcpEchoServer],
    dns_server: DNSTestServer,
) -> None:
    try:
        server = tcp_echo_factory("::1")
    except OSError:
        pytest.skip("::1 is not available")
    before = len(dns_server.queries)
    with client(proxy) as c:
        assert c.request("CONNECT", f"[::1]:{server.port}").status == 200
        c.send(b"v6")
        assert c.recv_exact(2) == b"v6"
    assert no_ip_queries(dns_server, before)


# ---------------------------------------------------------------------------- refusals
def test_connect_without_port_is_400(proxy: ProxyProcess) -> None:
    with client(proxy) as c:
        c.send(build_request("CONNECT", "example.test", {"Host": "example.test"}))
        resp = c.recv_response()
        assert resp.status == 400
        assert c.is_closed_by_peer(5)


def test_connect_with_body_is_400(proxy: ProxyProcess, tcp_echo_server: TcpEchoServer) -> None:
    target = tcp_echo_server.authority
    with client(proxy) as c:
        c.send(build_request("CONNECT", target, {"Host": target, "Content-Length": "5"}) + b"hello")
        resp = c.recv_response()
        assert resp.status == 400
        assert c.is_closed_by_peer(5)
    assert tcp_echo_server.connections_accepted == 0


def test_connect_dns_failure_is_503(
    proxy: ProxyProcess, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"nx-connect-{proxy_loop}.test"
    dns_server.set_error(name, "NXDOMAIN")
    with client(proxy) as c:
        c.send(build_request("CONNECT", f"{name}:443", {"Host": f"{name}:443"}))
        resp = c.recv_response()
        assert resp.status == 503
        assert resp.body == b"DNS resolution failure"
        assert resp.header("content-type") == "text/plain"
        assert resp.header("content-length") == str(len(resp.body or b""))
    assert dns_server.count(name) >= 1


def test_connect_to_closed_port_is_503(proxy: ProxyProcess) -> None:
    target = f"127.0.0.1:{closed_port()}"
    with client(proxy) as c:
        c.send(build_request("CONNECT", target, {"Host": target}))
        resp = c.recv_response()
        assert resp.status == 503
        assert resp.text == CONNECT_FAILURE
        assert resp.header("content-type") == "text/plain"


# ---------------------------------------------------------------------------- access log
def test_tunnel_access_log_line_with_byte_counts(
    proxy: ProxyProcess, tcp_echo_server: TcpEchoServer, proxy_loop: str
) -> None:
    up, down = pattern_bytes(12345), b""
    with client(proxy) as c:
        c.send_request(
            "CONNECT",
            tcp_echo_server.authority,
            headers=[("User-Agent", f"tunnel-log-{proxy_loop}")],
        )
        resp = c.recv_response(method="CONNECT")
        assert resp.status == 200
        c.send(up)
        c.shutdown_write()
        down = c.recv_until_closed()
    assert down == up
    line = parse_log_line(wait_for_log_line(proxy, rf'"tunnel-log-{proxy_loop}"'))
    assert line["method"] == "CONNECT"
    assert line["status"] == "200"
    assert line["authority"] == tcp_echo_server.authority
    assert line["upstream"] == tcp_echo_server.authority
    assert int(line["received"]) == len(up)
    # tunnelled bytes to the client (Envoy counts the response head too for upgrades)
    assert len(up) <= int(line["sent"]) <= len(up) + len(resp.raw_head)
