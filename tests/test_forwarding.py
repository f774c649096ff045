"""Forwarding through the real proxy: request targets, Host, DNS, keep-alive across hosts,
HTTP/1.0, hop-by-hop headers, bodiless responses, framing, pipelining, 100-continue and
WebSocket upgrades. One proxy per event loop serves the whole module."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable

import pytest

from tests import shared_proxy
from tests.helpers import (
    no_ip_queries,
    parse_log_line,
    wait_for_log_line,
)
from tests.support.clients import build_request, curl
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer, pattern_bytes, pattern_sha256, websocket_accept
from tests.support.proxy import ProxyProcess

OriginFactory = Callable[..., OriginServer]


# ---------------------------------------------------------------------------- fixtures
# One DNS server and one proxy per event loop for this file (tests/shared_proxy.py).
_proxy_still_alive = shared_proxy._proxy_still_alive
client = shared_proxy.client
dns_server = shared_proxy.dns_server
proxy = shared_proxy.proxy
proxy_loop = shared_proxy.proxy_loop


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------- request target
def test_absolute_form_becomes_origin_form_and_target_authority_wins_over_host(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    """RFC 9112 §3.2.2: with absolute-form the target's authority replaces any Host header."""
    with client(proxy) as c:
        resp = c.request(
            "GET",
            origin.url("/echo?q=1&r=two"),
            headers=[("Host", "conflicting.invalid:1"), ("X-Test", "abs")],
        )
    assert resp.status == 200
    seen = resp.json()
    assert seen["target"] == "/echo?q=1&r=two"
    assert seen["method"] == "GET"
    hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
    assert hosts == [origin.authority]
    assert ["X-Test", "abs"] in seen["headers"]


def test_absolute_form_without_path(proxy: ProxyProcess, origin: OriginServer) -> None:
    """``http://host:port`` (no path) is forwarded as ``/``; ``http://h:p?q`` as ``/?q``."""
    with client(proxy) as c:
        resp = c.request("GET", f"http://{origin.authority}")
        assert resp.status == 404  # the origin has no "/" route, but it was asked for "/"
        resp2 = c.request("GET", f"http://{origin.authority}?x=1")
        assert resp2.status == 404
    assert [r.target for r in origin.requests] == ["/", "/?x=1"]


def test_origin_form_with_host_header(proxy: ProxyProcess, origin: OriginServer) -> None:
    """A client talking to the proxy as if it were the origin: curl -H 'Host: ...'."""
    r = curl(f"http://127.0.0.1:{proxy.port}/echo?via=host", "-H", f"Host: {origin.authority}")
    r.check()
    assert r.http_code == 200
    seen = r.json()
    assert seen["target"] == "/echo?via=host"
    assert [v for k, v in seen["headers"] if k.lower() == "host"] == [origin.authority]


def test_curl_absolute_form(proxy: ProxyProcess, origin: OriginServer) -> None:
    r = proxy.curl(origin.url("/echo"), "-H", "X-Curl: 1")
    r.check()
    assert r.http_code == 200
    assert ["X-Curl", "1"] in r.json()["headers"]


def test_dns_name_resolved_by_test_dns_server(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    name = f"something-{proxy_loop}.test"
    r = proxy.curl(f"http://{name}:{origin.port}/echo")
    r.check()
    assert r.http_code == 200
    seen = r.json()
    assert [v for k, v in seen["headers"] if k.lower() == "host"] == [f"{name}:{origin.port}"]
    assert dns_server.count(name) >= 1
    # a second request is served from the DNS cache
    before = dns_server.count(name, "A")
    r2 = proxy.curl(f"http://{name.upper()}:{origin.port}/echo")
    assert r2.http_code == 200
    assert dns_server.count(name, "A") == before


def test_ipv6_literal_origin(
    proxy: ProxyProcess, origin_factory: OriginFactory, dns_server: DNSTestServer
) -> None:
    if not ipv6_available():
        pytest.skip("::1 is not available")
    origin6 = origin_factory("::1")
    before = len(dns_server.queries)
    r = proxy.curl("-g", f"http://[::1]:{origin6.port}/echo")
    r.check()
    assert r.http_code == 200
    seen = r.json()
    assert [v for k, v in seen["headers"] if k.lower() == "host"] == [f"[::1]:{origin6.port}"]
    assert seen["target"] == "/echo"
    assert no_ip_queries(dns_server, before)  # IP literals skip DNS


def test_ip_literals_do_not_hit_dns(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer
) -> None:
    before = len(dns_server.queries)
    for _ in range(2):
        assert proxy.curl(origin.url("/echo")).http_code == 200
    with client(proxy) as c:
        c.send(build_request("GET", "/echo", {"Host": origin.authority}))
        assert c.recv_response().status == 200
    assert no_ip_queries(dns_server, before)


def test_two_hosts_on_one_client_connection(
    proxy: ProxyProcess, origin_factory: OriginFactory, dns_server: DNSTestServer, proxy_loop: str
) -> None:
    a, b = origin_factory(), origin_factory()
    with client(proxy) as c:
        r1 = c.request("GET", a.url("/echo?n=1"))
        r2 = c.request("GET", b.url("/echo?n=2"))
        r3 = c.request("GET", f"http://two-hosts-{proxy_loop}.test:{a.port}/echo?n=3")
        r4 = c.request("GET", b.url("/echo?n=4"))
    assert [r.status for r in (r1, r2, r3, r4)] == [200] * 4
    assert [r.target for r in a.requests] == ["/echo?n=1", "/echo?n=3"]
    assert [r.target for r in b.requests] == ["/echo?n=2", "/echo?n=4"]
    assert r3.json()["headers"][0][1] == f"two-hosts-{proxy_loop}.test:{a.port}"
    # the proxy keeps one upstream connection per origin alive for the client's requests
    assert b.connections_accepted == 1


# ---------------------------------------------------------------------------- HTTP/1.0
def test_http10_client_without_keep_alive(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        c.send_request("GET", origin.url("/echo"), version="HTTP/1.0")
        resp = c.recv_response()
        assert resp.status == 200
        assert resp.json()["target"] == "/echo"
        # HTTP/1.0 without keep-alive: the proxy closes after the response
        assert c.is_closed_by_peer(5)


def test_http10_client_with_keep_alive(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        for i in range(2):
            c.send_request(
                "GET",
                origin.url(f"/echo?i={i}"),
                headers=[("Connection", "keep-alive")],
                version="HTTP/1.0",
            )
            resp = c.recv_response()
            assert resp.status == 200
            assert resp.framing == "content-length"
            assert "keep-alive" in (resp.header("connection") or "").lower()
            assert resp.json()["target"] == f"/echo?i={i}"
    assert len(origin.requests) == 2


def test_http10_origin_form_with_host(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        c.send(build_request("GET", "/echo", {"Host": origin.authority}, version="HTTP/1.0"))
        resp = c.recv_response()
        assert resp.status == 200
        assert resp.json()["target"] == "/echo"


def test_client_connection_close_is_honoured(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        resp = c.request("GET", origin.url("/echo"), headers=[("Connection", "close")])
        assert resp.status == 200
        assert "close" in (resp.header("connection") or "").lower()
        assert c.is_closed_by_peer(5)
    # the upstream connection stays reusable: "close" was hop-by-hop
    assert origin.requests[-1].keep_alive


# ---------------------------------------------------------------------------- access log
def test_access_log_line_for_forwarded_request(
    proxy: ProxyProcess, origin: OriginServer, proxy_loop: str
) -> None:
    """Envoy's default format: %BYTES_RECEIVED% / %BYTES_SENT% count body bytes only for
    HTTP (the response head counts only for upgrades), %UPSTREAM_HOST% is ip:port."""
    agent = f"log-fwd-{proxy_loop}"
    body = pattern_bytes(500)
    with client(proxy) as c:
        resp = c.request(
            "POST",
            origin.url("/bytes/1000?x=1"),
            headers=[
                ("User-Agent", agent),
                ("X-Request-Id", "rid-1"),
                ("X-Forwarded-For", "1.2.3.4"),
            ],
            body=body,
        )
        assert resp.status == 200 and resp.body_length == 1000
    line = parse_log_line(wait_for_log_line(proxy, rf'"{agent}"'))
    assert line["method"] == "POST"
    assert line["path"] == "/bytes/1000?x=1"
    assert line["protocol"] == "HTTP/1.1"
    assert line["status"] == "200"
    assert line["flags"] == "-"
    assert line["request_id"] == "rid-1"
    assert line["xff"] == "1.2.3.4"
    assert line["authority"] == origin.authority
    assert line["upstream"] == origin.authority
    assert int(line["received"]) == len(body)
    assert int(line["sent"]) == 1000


# ---------------------------------------------------------------------------- hop-by-hop
def test_hop_by_hop_request_headers_removed(proxy: ProxyProcess, origin: OriginServer) -> None:
    with client(proxy) as c:
        resp = c.request(
            "GET",
            origin.url("/echo"),
            headers=[
                ("Connection", "keep-alive, X-Custom"),
                ("X-Custom", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "x-foo"),
                ("X-End-To-End", "kept"),
            ],
        )
    assert resp.status == 200
    seen = {k.lower(): v for k, v in resp.json()["headers"]}
    for name in (
        "x-custom",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
    ):
        assert name not in seen, f"{name} reached the origin"
    assert "x-custom" not in seen.get("connection", "").lower()
    assert seen["x-end-to-end"] == "kept"


def test_hop_by_hop_response_headers_removed(proxy: ProxyProcess, origin: OriginServer) -> None:
    query = (
        "Connection=X-Hop&X-Hop=secret&Keep-Alive=timeout%3D5&Proxy-Authenticate=Basic"
        "&Trailer=x-foo&Proxy-Connection=keep-alive&Upgrade=foo&X-End-To-End=kept"
    )
    with client(proxy) as c:
        resp = c.request("GET", origin.url(f"/response-headers?{query}"))
        assert resp.status == 200
        assert resp.body == b"ok\n"
        got = {k.lower() for k in resp.header_names}
        for name in ("x-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
            assert name not in got, f"{name} reached the client: {resp.headers}"
        assert "proxy-connection" not in got
        assert "x-hop" not in (resp.header("connection") or "").lower()
        assert resp.header("x-end-to-end") == "kept"
        # and the connection is still usable
        assert c.request("GET", origin.url("/echo")).status == 200


# ---------------------------------------------------------------------------- bodiless
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("HEAD", "/bytes/5000", 200),
        ("HEAD", "/chunked/5000", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
        ("HEAD", "/status/404", 404),
    ],
)
def test_no_body_responses_keep_connection_usable(
    proxy: ProxyProcess, origin: OriginServer, method: str, path: str, status: int
) -> None:
    with client(proxy) as c:
        resp = c.request(method, origin.url(path))
        assert resp.status == status
        assert resp.body == b""
        if method == "HEAD" and path.startswith("/bytes/"):
            assert resp.header("content-length") == "5000"
        if status in (204, 304):
            assert resp.header("transfer-encoding") is None
        # nothing may follow the head: the next response must parse cleanly
        c.settimeout(5)
        nxt = c.request("GET", origin.url("/bytes/100"))
        assert nxt.status == 200
        assert nxt.body == pattern_bytes(100)
        again = c.request(method, origin.url(path))
        assert again.status == status
        last = c.request("GET", origin.url("/echo"))
        assert last.status == 200


# ---------------------------------------------------------------------------- framing
def test_chunked_response_with_trailer_forwarded(proxy: ProxyProcess, origin: OriginServer) -> None:
    n = 300_000
    with client(proxy) as c:
        resp = c.request("GET", origin.url(f"/chunked/{n}?chunk=7000"))
        assert resp.status == 200
        assert resp.framing == "chunked"
        assert resp.body_length == n
        assert resp.body_sha256 == pattern_sha256(n)
        assert ("x-checksum", pattern_sha256(n)) in [(k.lower(), v) for k, v in resp.trailers]
        assert c.request("GET", origin.url("/echo")).status == 200


def test_close_delimited_origin_reframed_for_http11_client(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    n = 200_000
    with client(proxy) as c:
        resp = c.request("GET", origin.url(f"/close/{n}"))
        assert resp.status == 200
        assert resp.framing in ("chunked", "content-length")
        assert resp.body_length == n
        assert resp.body_sha256 == pattern_sha256(n)
        # the client connection survives the origin's close
        nxt = c.request("GET", origin.url("/echo"))
        assert nxt.status == 200


@pytest.mark.parametrize("path", ["/close/150000", "/chunked/150000", "/bytes/150000"])
def test_http10_client_gets_close_delimited_or_length(
    proxy: ProxyProcess, origin: OriginServer, path: str
) -> None:
    with client(proxy) as c:
        c.send_request("GET", origin.url(path), version="HTTP/1.0")
        resp = c.recv_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None  # never chunked to HTTP/1.0
        if path.startswith("/bytes/"):
            assert resp.framing == "content-length"
        else:
            assert resp.framing == "close"
        assert resp.body_length == 150_000
        assert resp.body_sha256 == pattern_sha256(150_000)
        assert c.is_closed_by_peer(5)


@pytest.mark.parametrize("path", ["/close/150000", "/chunked/150000", "/bytes/150000"])
def test_http10_keep_alive_client_with_unknown_length(
    proxy: ProxyProcess, origin: OriginServer, path: str
) -> None:
    """HTTP/1.0 + keep-alive: only a Content-Length response can keep the connection; an
    unknown length must be close-delimited and must not claim keep-alive."""
    with client(proxy) as c:
        c.send_request(
            "GET", origin.url(path), headers=[("Connection", "keep-alive")], version="HTTP/1.0"
        )
        resp = c.recv_response()
        assert resp.status == 200
        assert resp.body_sha256 == pattern_sha256(150_000)
        conn = (resp.header("connection") or "").lower()
        if path.startswith("/bytes/"):
            assert resp.framing == "content-length"
            assert "keep-alive" in conn
            assert c.request("GET", origin.url("/echo"), version="HTTP/1.0").status == 200
        else:
            assert resp.framing == "close"
            assert "keep-alive" not in conn
            assert c.is_closed_by_peer(5)


def test_request_body_content_length_and_chunked(proxy: ProxyProcess, origin: OriginServer) -> None:
    body = os.urandom(100_000)
    with client(proxy) as c:
        r1 = c.request("POST", origin.url("/echo"), body=body)
        seen = r1.json()
        assert seen["body_length"] == len(body)
        assert not seen["chunked"]
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:10], body[10:]))
        chunked += b"0\r\nX-Trail: t\r\n\r\n"
        c.send_request(
            "POST",
            origin.url("/echo"),
            headers=[("Transfer-Encoding", "chunked")],
            body=chunked,
        )
        seen2 = c.recv_response().json()
        assert seen2["body_length"] == len(body)
        assert seen2["chunked"]
        assert seen2["body_sha256"] == seen["body_sha256"]
        assert seen2["trailers"] == [["X-Trail", "t"]]


# ---------------------------------------------------------------------------- pipelining
def test_pipelined_requests_answered_in_order(
    proxy: ProxyProcess, origin_factory: OriginFactory
) -> None:
    a, b = origin_factory(), origin_factory()
    wire = b"".join(
        [
            build_request("GET", a.url("/echo?n=1"), {"Host": a.authority}),
            build_request("GET", b.url("/bytes/70000"), {"Host": b.authority}),
            build_request("GET", a.url("/echo?n=3"), {"Host": a.authority}),
        ]
    )
    with client(proxy) as c:
        c.send(wire)  # one write
        r1, r2, r3 = (c.recv_response() for _ in range(3))
        assert r1.status == r2.status == r3.status == 200
        assert r1.json()["target"] == "/echo?n=1"
        assert r2.body == pattern_bytes(70000)
        assert r3.json()["target"] == "/echo?n=3"
        assert c.request("GET", b.url("/echo?n=4")).json()["target"] == "/echo?n=4"


def test_pipelined_slow_first_request_keeps_order(
    proxy: ProxyProcess, origin_factory: OriginFactory
) -> None:
    a, b = origin_factory(), origin_factory()
    wire = build_request("GET", a.url("/slow-headers/0.3"), {"Host": a.authority})
    wire += build_request("GET", b.url("/echo"), {"Host": b.authority})
    with client(proxy) as c:
        c.send(wire)
        first, second = c.recv_response(), c.recv_response()
    assert first.body == b"slow\n"
    assert second.json()["target"] == "/echo"


def test_pipelined_request_after_a_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    body = pattern_bytes(300_000)
    wire = build_request(
        "POST", origin.url("/echo"), {"Host": origin.authority, "Content-Length": str(len(body))}
    )
    wire += body + build_request("GET", origin.url("/echo?after"), {"Host": origin.authority})
    with client(proxy) as c:
        c.send(wire)
        first, second = c.recv_response(), c.recv_response()
    assert first.json()["body_length"] == len(body)
    assert first.json()["body_sha256"] == pattern_sha256(len(body))
    assert second.json()["target"] == "/echo?after"


def test_upgrade_not_accepted_then_pipelined_request(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    """An Upgrade request the origin answers with a plain 200: the bytes after it are the
    next request, not tunnel data (llhttp stops at the upgrade; the proxy must resume)."""
    wire = build_request(
        "GET",
        origin.url("/echo?first"),
        {"Host": origin.authority, "Connection": "Upgrade", "Upgrade": "websocket"},
    )
    wire += build_request("GET", origin.url("/echo?second"), {"Host": origin.authority})
    with client(proxy, timeout=5) as c:
        c.send(wire)
        first, second = c.recv_response(), c.recv_response()
        assert first.status == 200 and first.json()["target"] == "/echo?first"
        assert second.status == 200 and second.json()["target"] == "/echo?second"
        assert c.request("GET", origin.url("/echo?third")).json()["target"] == "/echo?third"


# ---------------------------------------------------------------------------- 100-continue
def test_expect_100_continue_with_curl(
    proxy: ProxyProcess, origin: OriginServer, tmp_path: os.PathLike[str]
) -> None:
    body = pattern_bytes(4096)
    r = proxy.curl(
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        "@-",
        origin.url("/upload"),
        input=body,
    )
    r.check()
    assert r.http_code == 200
    assert "< HTTP/1.1 100 Continue" in r.stderr
    info = r.json()
    assert info["length"] == len(body)
    assert info["sha256"] == pattern_sha256(len(body))
    # the origin did not see the Expect header (the proxy answered it itself)
    assert origin.requests[-1].header("expect") is None


def test_expect_100_continue_raw(proxy: ProxyProcess, origin: OriginServer) -> None:
    """The proxy sends 100 Continue before any body byte is sent; then the final response."""
    body = pattern_bytes(2048)
    with client(proxy, timeout=5) as c:
        c.send_request(
            "POST",
            origin.url("/upload"),
            headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))],
        )
        interim = c.recv_response()
        assert interim.status == 100
        c.send(body)
        final = c.recv_response()
        assert final.status == 200
        assert final.json()["length"] == len(body)
        assert c.request("GET", origin.url("/echo")).status == 200


# ---------------------------------------------------------------------------- WebSocket
def test_websocket_upgrade_then_echo(proxy: ProxyProcess, origin: OriginServer) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    with client(proxy, timeout=5) as c:
        resp = c.request(
            "GET",
            origin.url("/websocket"),
            headers=[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
        assert resp.status == 101
        assert (resp.header("upgrade") or "").lower() == "websocket"
        assert "upgrade" in (resp.header("connection") or "").lower()
        assert resp.header("sec-websocket-accept") == websocket_accept(key)
        seen = origin.requests[-1]
        assert (seen.header("upgrade") or "").lower() == "websocket"
        for payload in (b"hello", b"\x81\x05world", pattern_bytes(100_000)):
            c.send(payload)
            assert c.recv_exact(len(payload)) == payload
        c.shutdown_write()
        assert c.recv_until_closed() == b""


def test_websocket_bytes_in_same_packet_as_upgrade(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    head = build_request(
        "GET",
        origin.url("/websocket"),
        [
            ("Host", origin.authority),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    with client(proxy, timeout=5) as c:
        c.send(head + b"early-bytes")
        resp = c.recv_response()
        assert resp.status == 101
        assert c.recv_exact(len(b"early-bytes")) == b"early-bytes"
