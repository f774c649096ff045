"""PROXY protocol v1/v2 (Gateway useProxyProto): the parser, and the listener using it."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from dfproxy.http.proxy_protocol import V2_SIGNATURE, ProxyHeader, ProxyProtocolError, parse
from tests.support.clients import RawClient
from tests.support.origin import OriginServer


def v2(command: int, family: int, addresses: bytes) -> bytes:
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", 0x20 | command, family << 4 | 1, len(addresses))
        + (addresses)
    )


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.10 127.0.0.1 51000 8080\r\nGET / HTTP/1.1\r\n"
    assert parse(line) == ProxyHeader(44, ("192.0.2.10", 51000))
    line6 = b"PROXY TCP6 2001:db8::1 ::1 443 8080\r\n"
    assert parse(line6) == ProxyHeader(len(line6), ("2001:db8::1", 443))


def test_v1_unknown_keeps_the_socket_peer() -> None:
    assert parse(b"PROXY UNKNOWN\r\nrest") == ProxyHeader(15, None)


@pytest.mark.parametrize("partial", [b"", b"PRO", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:7]])
def test_incomplete_headers_ask_for_more(partial: bytes) -> None:
    assert parse(partial) is None


def test_v2_inet_inet6_and_local() -> None:
    inet = socket.inet_aton("198.51.100.7") + socket.inet_aton("127.0.0.1") + b"\xc3\x50\x1f\x90"
    assert parse(v2(1, 1, inet) + b"GET") == ProxyHeader(28, ("198.51.100.7", 50000))
    inet6 = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        + socket.inet_pton(socket.AF_INET6, "::1")
        + b"\x00\x50\x1f\x90"
    )
    assert parse(v2(1, 2, inet6)) == ProxyHeader(52, ("2001:db8::7", 80))
    assert parse(v2(0, 0, b"")) == ProxyHeader(16, None)
    assert parse(v2(1, 1, inet)[:20]) is None  # address block not complete yet


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 " + b"9" * 120,
        V2_SIGNATURE + b"\x11\x11\x00\x00",
        V2_SIGNATURE + b"\x21\x11\xff\xff",
    ],
)
def test_invalid_headers_are_errors(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "pp.yaml"
    cfg.write_text(
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\nmetadata: {name: lb-facing}\n"
        "spec:\n  bindAddress: 127.0.0.1\n  bindPort: 0\n  useProxyProto: true\n"
        "  httpGateway:\n    options:\n      dynamicForwardProxy: {}\n"
    )
    return cfg


def test_listener_takes_the_client_address_from_the_header(
    proxy_factory, origin: OriginServer, tmp_path: Path
) -> None:
    p = proxy_factory("-c", str(_config(tmp_path)), "--access-log-format", "json")
    with RawClient("127.0.0.1", p.port) as c:
        c.send(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 8080\r\n")
        resp = c.request("GET", origin.url("/echo"))
        assert resp.status == 200
        # keep-alive works after the header, which is read once per connection
        assert c.request("GET", origin.url("/echo")).status == 200
    lines = p.wait_for_access_log(2)
    assert json.loads(lines[0])["downstream_remote_address"] == "203.0.113.9:40000"


def test_connection_without_the_header_is_closed(
    proxy_factory, origin: OriginServer, tmp_path: Path
) -> None:
    p = proxy_factory("-c", str(_config(tmp_path)))
    with RawClient("127.0.0.1", p.port) as c:
        c.send(b"GET " + origin.url("/echo").encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv_until_closed() == b""
    assert "missing PROXY protocol header" in p.stderr_text()
    assert p.curl("-H", "x: y", origin.url("/echo")).http_code == 0  # curl sends no header
