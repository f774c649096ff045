"""Tests of the test infrastructure itself (tests/support/). They do not need dfproxy,
except the smoke tests at the end (marked ``proxy``; skipped until dfproxy/__main__.py
exists)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.support.clients import (
    IncompleteResponseError,
    RawClient,
    build_request,
    curl,
    encode_chunked,
)
from tests.support.dns_server import DNSTestServer, query
from tests.support.origin import (
    OriginServer,
    TcpEchoServer,
    pattern_bytes,
    pattern_sha256,
    websocket_accept,
)
from tests.support.proxy import FAKE_PROXY_ENTRY, ProxyProcess, ProxyStartError

MiB = 1 << 20


def _addrs(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


# ============================================================================ DNS server
def test_dns_a_and_aaaa(dns_server: DNSTestServer) -> None:
    dns_server.set("API.example.test.", a=["127.0.0.1", "127.0.0.2"], aaaa=["::1"], ttl=7)
    r = query(dns_server.address, "api.example.test", "A")
    assert r.header.rcode == RCODE.NOERROR
    assert _addrs(r) == ["127.0.0.1", "127.0.0.2"]
    assert {rr.ttl for rr in r.rr} == {7}
    assert _addrs(query(dns_server.address, "Api.Example.Test", "AAAA")) == ["::1"]
    assert dns_server.address == f"127.0.0.1:{dns_server.port}"


def test_dns_over_tcp_same_port_with_pipelined_queries(dns_server: DNSTestServer) -> None:
    dns_server.set("t.example", a=["127.0.0.3"], aaaa=["::1"])
    dns_server.set_delay("t.example", 0.2, qtype="A")  # the A answer comes second
    assert _addrs(query(dns_server.address, "t.example", "AAAA", tcp=True)) == ["::1"]
    with socket.create_connection(("127.0.0.1", dns_server.port), timeout=5) as s:
        for qtype in ("A", "AAAA"):  # two queries on one connection, as c-ares does
            packed = DNSRecord.question("t.example", qtype).pack()
            s.sendall(struct.pack("!H", len(packed)) + packed)
        answers = []
        for _ in range(2):
            (n,) = struct.unpack("!H", _recv_exact(s, 2))
            answers.append(DNSRecord.parse(_recv_exact(s, n)))
    assert [QTYPE[a.q.qtype] for a in answers] == ["AAAA", "A"]
    assert _addrs(answers[1]) == ["127.0.0.3"]
    assert dns_server.count("t.example", protocol="tcp") == 3
    assert dns_server.count("t.example", protocol="udp") == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "EOF"
        buf += chunk
    return buf


def test_dns_wildcard_and_default_nxdomain(dns_server: DNSTestServer) -> None:
    r = query(dns_server.address, "anything.sub.test")
    assert _addrs(r) == ["127.0.0.1"]
    r6 = query(dns_server.address, "anything.sub.test", "AAAA")
    assert r6.header.rcode == RCODE.NOERROR and r6.rr == []
    assert query(dns_server.address, "example.org").header.rcode == RCODE.NXDOMAIN
    assert query(dns_server.address, "test").header.rcode == RCODE.NXDOMAIN
    dns_server.set_wildcard("lan", a=["127.0.0.9"], aaaa=["::1"])
    assert _addrs(query(dns_server.address, "x.lan", "AAAA")) == ["::1"]
    assert query(dns_server.address, "x.test").header.rcode == RCODE.NXDOMAIN
    dns_server.set_wildcard(None)
    assert query(dns_server.address, "x.lan").header.rcode == RCODE.NXDOMAIN
    dns_server.reset()
    assert _addrs(query(dns_server.address, "x.test")) == ["127.0.0.1"]


@pytest.mark.parametrize("rcode", ["NXDOMAIN", "SERVFAIL", "REFUSED"])
def test_dns_errors(dns_server: DNSTestServer, rcode: str) -> None:
    dns_server.set_error("bad.test", rcode)
    for qtype in ("A", "AAAA"):
        r = query(dns_server.address, "bad.test", qtype)
        assert r.header.rcode == getattr(RCODE, rcode) and r.rr == []


def test_dns_error_for_one_qtype_only(dns_server: DNSTestServer) -> None:
    dns_server.set("half.example", a=["127.0.0.1"], aaaa=["::1"])
    dns_server.set_error("half.example", "SERVFAIL", qtype="AAAA")
    assert _addrs(query(dns_server.address, "half.example", "A")) == ["127.0.0.1"]
    assert query(dns_server.address, "half.example", "AAAA").header.rcode == RCODE.SERVFAIL
    dns_server.set("half.example", a=["127.0.0.2"])  # a whole-name rule replaces both
    assert query(dns_server.address, "half.example", "AAAA").header.rcode == RCODE.NOERROR


def test_dns_empty_answer(dns_server: DNSTestServer) -> None:
    dns_server.set_empty("empty.test")
    for qtype in ("A", "AAAA"):
        r = query(dns_server.address, "empty.test", qtype)
        assert r.header.rcode == RCODE.NOERROR and r.rr == []


def test_dns_delay_does_not_block_other_queries(dns_server: DNSTestServer) -> None:
    dns_server.set_delay("slow.test", 0.5)
    slow: dict[str, float] = {}

    def slow_query() -> None:
        t0 = time.monotonic()
        r = query(dns_server.address, "slow.test", timeout=5)
        slow["elapsed"] = time.monotonic() - t0
        slow["ok"] = _addrs(r) == ["127.0.0.1"]

    t = threading.Thread(target=slow_query)
    t.start()
    dns_server.wait_for("slow.test", 1)
    t0 = time.monotonic()
    assert _addrs(query(dns_server.address, "fast.test")) == ["127.0.0.1"]
    assert time.monotonic() - t0 < 0.3
    t.join(5)
    assert slow["ok"] and slow["elapsed"] >= 0.45


def test_dns_drop_never_answers(dns_server: DNSTestServer) -> None:
    dns_server.set_drop("void.test")
    with pytest.raises(TimeoutError):
        query(dns_server.address, "void.test", timeout=0.3)
    assert dns_server.count("void.test") == 1


def test_dns_changes_between_queries(dns_server: DNSTestServer) -> None:
    dns_server.set("flip.test", a=["127.0.0.1"])
    assert _addrs(query(dns_server.address, "flip.test")) == ["127.0.0.1"]
    dns_server.set("flip.test", a=["127.0.0.2"], ttl=1)
    assert _addrs(query(dns_server.address, "flip.test")) == ["127.0.0.2"]
    dns_server.clear("flip.test")
    assert _addrs(query(dns_server.address, "flip.test")) == ["127.0.0.1"]  # wildcard again


def test_dns_sequence_per_qtype_last_repeats(dns_server: DNSTestServer) -> None:
    dns_server.set_sequence(
        "seq.example",
        [
            {"a": ["127.0.0.1"], "aaaa": ["::1"]},
            {"error": "SERVFAIL"},
            {"a": ["127.0.0.2"], "ttl": 3},
        ],
    )
    addr = dns_server.address
    assert _addrs(query(addr, "seq.example", "A")) == ["127.0.0.1"]
    assert _addrs(query(addr, "seq.example", "AAAA")) == ["::1"]  # own cursor
    assert query(addr, "seq.example", "A").header.rcode == RCODE.SERVFAIL
    for _ in range(2):
        r = query(addr, "seq.example", "A")
        assert _addrs(r) == ["127.0.0.2"] and r.rr[0].ttl == 3
    with pytest.raises(ValueError):
        dns_server.set_sequence("x.test", [{"bogus": 1}])


def test_dns_cname_chain(dns_server: DNSTestServer) -> None:
    dns_server.set("target.example", a=["127.0.0.5"])
    dns_server.set("alias.example", cname="target.example")
    r = query(dns_server.address, "alias.example")
    assert [QTYPE[rr.rtype] for rr in r.rr] == ["CNAME", "A"]
    assert _addrs(r) == ["127.0.0.5"]


def test_dns_large_answer_truncated_over_udp_full_over_tcp(dns_server: DNSTestServer) -> None:
    ips = [f"127.0.1.{i}" for i in range(1, 80)]
    dns_server.set("many.test", a=ips)
    udp = query(dns_server.address, "many.test")
    assert udp.header.tc == 1
    assert _addrs(query(dns_server.address, "many.test", tcp=True)) == ips


def test_dns_query_log(dns_server: DNSTestServer) -> None:
    query(dns_server.address, "a.test", "A")
    query(dns_server.address, "a.test", "AAAA")
    query(dns_server.address, "b.test", "A")
    names = [(q.name, q.qtype) for q in dns_server.queries]
    assert names == [("a.test", "A"), ("a.test", "AAAA"), ("b.test", "A")]
    name, qtype, when = dns_server.queries[0]
    assert (name, qtype) == ("a.test", "A") and when <= time.monotonic()
    assert dns_server.count("a.test") == 2
    assert dns_server.count("A.TEST.", "aaaa") == 1
    assert dns_server.count() == 3
    dns_server.reset_log()
    assert dns_server.queries == [] and dns_server.count() == 0


def test_dns_stop_is_prompt_with_queries_in_flight() -> None:
    server = DNSTestServer().start()
    try:
        server.set_delay("slow.test", 30)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(DNSRecord.question("slow.test").pack(), ("127.0.0.1", server.port))
        tcp = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        server.wait_for("slow.test", 1)
    finally:
        t0 = time.monotonic()
        server.stop()
    tcp.close()
    assert time.monotonic() - t0 < 1.0


# ============================================================================ origin
def test_origin_echo_reports_the_wire_request(origin: OriginServer) -> None:
    body = b"hello world"
    with RawClient("127.0.0.1", origin.port) as c:
        c.send(
            build_request(
                "POST",
                "/echo?x=1",
                [("Host", "h.test"), ("X-Foo", "1"), ("x-foo", "2"), ("Content-Length", "11")],
                body,
            )
        )
        r = c.recv_response()
    assert r.status == 200 and r.framing == "content-length"
    seen = r.json()
    assert seen["method"] == "POST"
    assert seen["target"] == "/echo?x=1"
    assert seen["version"] == "1.1"
    assert seen["headers"] == [
        ["Host", "h.test"],
        ["X-Foo", "1"],
        ["x-foo", "2"],
        ["Content-Length", "11"],
    ]
    assert seen["body_length"] == 11
    assert seen["body_sha256"] == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    assert seen["connection_id"] == 1 and seen["request_index"] == 0
    (logged,) = origin.requests
    assert logged.body == body and logged.header("x-FOO") == "1"
    assert logged.header_values("x-foo") == ["1", "2"] and logged.path == "/echo"


def test_origin_echo_absolute_form_and_http10(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", origin.url("/echo"))
        assert r.json()["target"] == origin.url("/echo")
        r = c.request("GET", "/echo", {"Connection": "keep-alive"}, version="HTTP/1.0")
        assert r.json()["version"] == "1.0" and r.header("connection") == "keep-alive"
        r = c.request("GET", "/echo", version="HTTP/1.0")
        assert r.header("connection") == "close"
        assert c.is_closed_by_peer(2)


def test_origin_bytes_and_head(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", "/bytes/70000")
        assert r.header("content-length") == "70000"
        assert r.body == pattern_bytes(70000)
        assert r.body_sha256 == pattern_sha256(70000)
        h = c.request("HEAD", "/bytes/70000")
        assert h.header("content-length") == "70000" and h.body == b""
        assert c.request("GET", "/bytes/0").body == b""
    assert pattern_bytes(5, offset=250) == bytes([250, 0, 1, 2, 3])


def test_origin_chunked_with_trailer(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", "/chunked/100000?chunk=1000")
        assert r.framing == "chunked" and r.header("trailer") == "x-checksum"
        assert r.body == pattern_bytes(100000)
        assert r.trailers == [("x-checksum", pattern_sha256(100000))]
        assert r.raw_head.count(b"\r\n") > 2
        h = c.request("HEAD", "/chunked/100000")
        assert h.header("transfer-encoding") == "chunked" and h.body == b""
        z = c.request("GET", "/chunked/0")
        assert z.body == b"" and z.trailers == [("x-checksum", pattern_sha256(0))]


def test_origin_close_delimited(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", "/close/123456")
        assert r.framing == "close"
        assert r.header("content-length") is None and r.header("transfer-encoding") is None
        assert r.body == pattern_bytes(123456)
        assert c.eof and not c.reset_seen


def test_origin_reset_mid_body(origin: OriginServer) -> None:
    with (
        RawClient("127.0.0.1", origin.port) as c,
        pytest.raises(IncompleteResponseError) as info,
    ):
        c.request("GET", "/reset-mid-body")
    err = info.value
    assert err.reset
    assert err.partial is not None and err.partial.status == 200
    assert err.partial.header("content-length") == "100000"
    assert err.partial.body == pattern_bytes(1000) and not err.partial.complete


def test_origin_reset_before_headers(origin: OriginServer) -> None:
    with (
        RawClient("127.0.0.1", origin.port) as c,
        pytest.raises(IncompleteResponseError) as info,
    ):
        c.request("GET", "/reset-before-headers")
    assert info.value.reset and info.value.partial is None
    assert [r.path for r in origin.requests] == ["/reset-before-headers"]


def test_origin_slow_headers(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/slow-headers/0.3")
        assert r.body == b"slow\n" and time.monotonic() - t0 >= 0.29
        c.settimeout(0.2)
        c.send_request("GET", "/slow-headers/5")
        with pytest.raises(TimeoutError):
            c.recv_response()


def test_origin_stall_body(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port, timeout=0.3) as c:
        c.send_request("GET", "/stall-body/1000")
        with pytest.raises(TimeoutError):
            c.recv_response()
    origin.wait_until(lambda: origin.open_connections == 0, 2, "the stalled connection to end")


@pytest.mark.parametrize("code", [200, 204, 304, 404, 418, 500, 503])
def test_origin_status(origin: OriginServer, code: int) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", f"/status/{code}")
        assert r.status == code
        if code in (204, 304):
            assert r.body == b"" and r.header("content-length") is None
        else:
            assert r.body == f"status {code}\n".encode()
        h = c.request("HEAD", f"/status/{code}")
        assert h.status == code and h.body == b""
        assert h.header("content-length") == r.header("content-length")
        assert c.request("GET", "/no/such/path").status == 404


def test_origin_upload_content_length_and_chunked(origin: OriginServer) -> None:
    data = pattern_bytes(300000)
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("POST", "/upload", body=data)
        assert r.json() == {
            "length": 300000,
            "sha256": pattern_sha256(300000),
            "chunked": False,
            "trailers": [],
        }
        chunked = encode_chunked(data, 7777, trailers=[("x-sum", "abc")])
        r = c.request("PUT", "/upload", {"Transfer-Encoding": "chunked"}, chunked)
        got = r.json()
        assert (got["length"], got["sha256"]) == (300000, pattern_sha256(300000))
        assert got["chunked"] is True
        assert got["trailers"] == [["x-sum", "abc"]]
    assert origin.connections_accepted == 1


def test_origin_websocket_upgrade_then_echo(origin: OriginServer) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", "/websocket", headers)
        assert r.status == 101 and r.framing == "none"
        assert r.header("sec-websocket-accept") == websocket_accept(key)
        c.send(b"\x81\x05hello")
        assert c.recv_exact(7) == b"\x81\x05hello"
        c.shutdown_write()
        assert c.recv_until_closed() == b"" and not c.reset_seen
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    with RawClient("127.0.0.1", origin.port) as c:
        assert c.request("GET", "/websocket").status == 426


def test_origin_keepalive_and_pipelining(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        c.send(b"".join(build_request("GET", f"/echo?i={i}", {"Host": "x"}) for i in range(5)))
        c.send(build_request("HEAD", "/bytes/10", {"Host": "x"}))
        c.send(build_request("GET", "/bytes/3", {"Host": "x"}))
        seen = [c.recv_response().json() for _ in range(5)]
        assert [s["target"] for s in seen] == [f"/echo?i={i}" for i in range(5)]
        assert [s["request_index"] for s in seen] == list(range(5))
        assert {s["connection_id"] for s in seen} == {1}
        assert c.recv_response(head=True).header("content-length") == "10"
        assert c.recv_response().body == b"\x00\x01\x02"
        r = c.request("GET", "/bytes/4?close=1")
        assert r.header("connection") == "close" and r.body == pattern_bytes(4)
        assert c.is_closed_by_peer(2)
    with RawClient("127.0.0.1", origin.port) as c:
        assert c.request("GET", "/echo").json()["connection_id"] == 2
    assert origin.connections_accepted == 2
    assert len(origin.wait_for_requests(9)) == 9
    origin.reset_log()
    assert origin.requests == []


def test_origin_response_headers_and_bad_request(origin: OriginServer) -> None:
    with RawClient("127.0.0.1", origin.port) as c:
        r = c.request("GET", "/response-headers?X-A=1&Keep-Alive=timeout%3D5")
        assert r.headers[-2:] == [("X-A", "1"), ("Keep-Alive", "timeout=5")]
        c.send(b"NOT HTTP\r\n\r\n")
        assert c.recv_response().status == 400
        assert c.is_closed_by_peer(2)


def test_origin_ipv6(origin_factory: Callable[..., OriginServer]) -> None:
    o6 = origin_factory("::1")
    assert o6.url("/echo") == f"http://[::1]:{o6.port}/echo"
    with RawClient("::1", o6.port) as c:
        assert c.request("GET", "/echo").json()["headers"] == [["Host", f"[::1]:{o6.port}"]]


def test_origin_stop_is_prompt_with_busy_connections() -> None:
    origin = OriginServer().start()
    clients = [RawClient("127.0.0.1", origin.port) for _ in range(3)]
    try:
        clients[0].send_request("GET", "/slow-headers/30")
        clients[1].send_request("GET", "/bytes/1000000000")  # blocks in send: nobody reads
        clients[2].send(b"GET /echo HTTP/1.1\r\n")  # half a request
        origin.wait_until(lambda: origin.connections_accepted == 3, 2)
        t0 = time.monotonic()
        origin.stop()
        assert time.monotonic() - t0 < 1.0
    finally:
        origin.stop()
        for c in clients:
            c.close()


@pytest.mark.slow
def test_origin_100mib_download_and_upload(origin: OriginServer) -> None:
    n = 100 * MiB
    with RawClient("127.0.0.1", origin.port, timeout=30) as c:
        c.send_request("GET", f"/bytes/{n}")
        r = c.recv_response(keep_body=False)
        assert r.body is None and r.body_length == n and r.body_sha256 == pattern_sha256(n)
        c.send_request("POST", "/upload", {"Transfer-Encoding": "chunked"})
        for piece in range(0, n, 4 * MiB):
            size = min(4 * MiB, n - piece)
            c.send(b"%x\r\n" % size + pattern_bytes(size, offset=piece) + b"\r\n")
        c.send(b"0\r\n\r\n")
        got = c.recv_response().json()
        assert (got["length"], got["sha256"]) == (n, pattern_sha256(n))
    assert origin.requests[-1].body is None  # not kept beyond 1 MiB


# ============================================================================ TCP echo
def test_tcp_echo_half_close(tcp_echo_server: TcpEchoServer) -> None:
    data = pattern_bytes(500000)
    with RawClient("127.0.0.1", tcp_echo_server.port) as c:
        c.send(data)
        c.shutdown_write()
        assert c.recv_until_closed() == data and not c.reset_seen
    assert tcp_echo_server.bytes_echoed == len(data)
    assert tcp_echo_server.connections_accepted == 1


def test_tcp_echo_greeting_and_connect_framing(
    tcp_echo_factory: Callable[..., TcpEchoServer],
) -> None:
    # A fake "proxy" that answers 200 to CONNECT then echoes: checks RawClient's CONNECT mode.
    server = tcp_echo_factory(greeting=b"HTTP/1.1 200 Connection established\r\n\r\n")
    with RawClient("127.0.0.1", server.port) as c:
        r = c.request("CONNECT", "127.0.0.1:9")
        assert r.status == 200 and r.framing == "none"
        echoed = c.recv_exact(len(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n"))
        assert echoed == b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n"
        assert c.recv_exact(len(b"Host: 127.0.0.1:9\r\n\r\n")) == b"Host: 127.0.0.1:9\r\n\r\n"
        c.send(b"tunnel")
        assert c.recv_exact(6) == b"tunnel"


# ============================================================================ curl
def test_curl_direct_to_origin(origin: OriginServer) -> None:
    r = curl(origin.url("/echo"), "-H", "X-Test: 1")
    assert r.returncode == 0 and r.http_code == 200
    assert ["X-Test", "1"] in r.json()["headers"]
    assert r.info is not None and r.info["num_connects"] == 1
    r = curl("-o", "/dev/null", origin.url("/status/503"))
    assert r.http_code == 503 and r.stdout == b""
    r = curl("--data-binary", "@-", origin.url("/upload"), input=b"abc")
    assert r.check().json()["length"] == 3
    r = curl("-w", "%{http_code}", origin.url("/bytes/3"))
    assert r.info is None and r.stdout == b"\x00\x01\x02200"


def test_curl_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = curl(f"http://127.0.0.1:{port}/", timeout=5)
    assert r.returncode == 7 and r.http_code == 0 and "Failed to connect" in r.stderr


# ============================================================================ ProxyProcess
def _fake(tmp_path: Path, mode: str = "ok", **kw: object) -> ProxyProcess:
    return ProxyProcess.launch(
        tmp_path,
        "--some-extra-flag",
        dns_resolver="127.0.0.1:1",
        entry=FAKE_PROXY_ENTRY,
        env={"FAKE_PROXY_MODE": mode},
        **kw,  # type: ignore[arg-type]
    )


def test_proxy_process_lifecycle_with_fake(tmp_path: Path, origin: OriginServer) -> None:
    p = _fake(tmp_path)
    try:
        assert p.running and p.pid > 0 and p.port > 0 and p.admin_port > 0
        assert p.url == f"http://127.0.0.1:{p.port}"
        assert p.admin_get("/ready") == (200, b"ready\n")
        r = p.curl(origin.url("/echo"))
        assert r.http_code == 502
        lines = p.wait_for_access_log(1)
        assert json.loads(lines[0])["request"] == f"GET {origin.url('/echo')} HTTP/1.1"
        assert p.access_log_json()[0]["request"].startswith("GET ")
        assert "--some-extra-flag" in p.argv and "--event-loop" in p.argv
    finally:
        code = p.stop()
    assert code == 0 and p.stop() == 0
    assert "fake proxy stopped" in p.stderr_text()


def test_proxy_process_without_admin(tmp_path: Path) -> None:
    q = ProxyProcess.launch(  # the later --admin wins in argparse
        tmp_path, "--admin", "none", dns_resolver=None, entry=FAKE_PROXY_ENTRY, name="noadmin"
    )
    try:
        assert q.admin_port == 0 and q.port > 0
        assert q.listener_ports == {"gateway-proxy": q.port}
        assert q.listener_url("gateway-proxy") == q.url
        assert "--dns-resolver" not in q.argv
    finally:
        assert q.stop() == 0


def test_proxy_process_reports_early_exit(tmp_path: Path) -> None:
    with pytest.raises(ProxyStartError, match="(?s)exited with 3.*configured to fail"):
        _fake(tmp_path, "exit")


def test_proxy_process_ready_timeout_kills(tmp_path: Path) -> None:
    with pytest.raises(ProxyStartError, match="/ready not 200.*503"):
        _fake(tmp_path, "never-ready", timeout=0.5)


def test_proxy_process_sigkill_after_timeout(tmp_path: Path) -> None:
    p = _fake(tmp_path, "ignore-term")
    t0 = time.monotonic()
    assert p.stop(timeout=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


def test_proxy_process_no_wait(tmp_path: Path) -> None:
    p = _fake(tmp_path, "exit", wait_ready=False)
    assert p.wait(10) == 3
    assert "configured to fail" in p.stderr_text()


# ============================================================================ real proxy
def test_proxy_smoke(proxy: ProxyProcess, origin: OriginServer) -> None:
    """curl -x http://127.0.0.1:PORT http://127.0.0.1:ORIGINPORT/echo (marked ``proxy``)."""
    r = proxy.curl(origin.url("/echo"))
    assert r.returncode == 0, r.stderr
    assert r.http_code == 200
    assert r.json()["method"] == "GET"


def test_proxy_smoke_resolves_through_dns_server(
    proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer
) -> None:
    """The proxy's --dns-resolver is the test DNS server: *.test -> 127.0.0.1."""
    url = f"http://smoke.test:{origin.port}/echo"
    r = proxy.curl(url)
    assert r.returncode == 0, r.stderr
    assert r.http_code == 200
    assert dns_server.count("smoke.test") >= 1
