"""dfproxy.upstream.connection: big Content-Length bodies relayed around llhttp (raw mode).

A body read of RAW_BODY_MIN or more, framed by Content-Length alone, switches the
connection to relaying the rest of the body without the parser. These tests pin what must
not change with it: every byte arrives in order, the connection is reused afterwards, bytes
past the announced length still cost the origin its connection, a close mid-body still
aborts the client, and chunked bodies stay with llhttp.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.clients import RawClient
from tests.support.proxy import ProxyProcess
from tests.test_review_findings import ScriptedOrigin, read_request_head
from tests.upstream_helpers import cluster_stat, dfp_route, gateway, start_proxy, virtual_service

ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedOrigin]]:
    made: list[ScriptedOrigin] = []

    def make(handler: Callable[[socket.socket], None]) -> ScriptedOrigin:
        o = ScriptedOrigin(handler)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


BIG = 300 * 1024 + 7  # several reads, and not a multiple of any buffer size


def body_for(path: bytes, n: int) -> bytes:
    seed = hashlib.sha256(path).digest()
    return (seed * (n // len(seed) + 1))[:n]


def serve_big(conn: socket.socket, path: bytes, extra: bytes = b"", pieces: int = 5) -> None:
    body = body_for(path, BIG)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG + body[:1000])
    step = (len(body) - 1000) // pieces + 1
    for i in range(1000, len(body), step):
        conn.sendall(body[i : i + step])
        time.sleep(0.005)  # separate reads on the proxy's side
    if extra:
        conn.sendall(extra)


def keepalive_handler(extra_after_first: bytes = b"") -> Callable[[socket.socket], None]:
    first = [True]

    def handler(conn: socket.socket) -> None:
        conn.settimeout(5)
        while True:
            head = read_request_head(conn)
            if not head:
                return
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/chunked"):
                body = body_for(path, BIG)
                conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(0, BIG, 65536):
                    piece = body[i : i + 65536]
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.sendall(b"0\r\n\r\n")
                continue
            if path.startswith(b"/cut"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG)
                conn.sendall(body_for(path, BIG)[: BIG // 2])
                return  # closed mid-body
            extra = extra_after_first if first[0] else b""
            first[0] = False
            serve_big(conn, path, extra)

    return handler


def proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    return start_proxy(
        proxy_factory,
        tmp_path,
        gateway(),
        virtual_service([dfp_route(options={"timeout": "5s"})]),
    )


def test_big_body_arrives_whole_and_the_connection_is_reused(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    o = scripted(keepalive_handler())
    p = proxy(proxy_factory, tmp_path)
    with RawClient("127.0.0.1", p.port, timeout=5) as c:
        for path in ("/a", "/b", "/c"):
            r = c.request("GET", f"http://raw.test:{o.port}{path}")
            assert r.status == 200
            assert r.body == body_for(path.encode(), BIG)
    assert o.accepted == 1  # one upstream connection served all three
    assert cluster_stat(p, "upstream_cx_total") == 1


def test_bytes_past_the_announced_length_cost_the_connection(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """As with llhttp: the response is relayed as announced, the stray bytes are not
    forwarded, and the next request gets a fresh upstream connection."""
    o = scripted(keepalive_handler(extra_after_first=b"HTTP/1.1 200 OK\r\ncontent-length: 3"))
    p = proxy(proxy_factory, tmp_path)
    with RawClient("127.0.0.1", p.port, timeout=5) as c:
        r1 = c.request("GET", f"http://raw.test:{o.port}/one")
        assert (r1.status, r1.body) == (200, body_for(b"/one", BIG))
        time.sleep(0.2)
        r2 = c.request("GET", f"http://raw.test:{o.port}/two")
        assert (r2.status, r2.body) == (200, body_for(b"/two", BIG))
    assert o.accepted == 2


def test_origin_closing_mid_body_aborts_the_client(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    o = scripted(keepalive_handler())
    p = proxy(proxy_factory, tmp_path)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET http://raw.test:%d/cut HTTP/1.1\r\nHost: raw.test\r\n\r\n" % o.port)
        got = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += data
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < BIG  # cut short, never padded or completed
    with RawClient("127.0.0.1", p.port, timeout=5) as c:  # the proxy still serves
        r = c.request("GET", f"http://raw.test:{o.port}/after")
        assert (r.status, r.body) == (200, body_for(b"/after", BIG))


def test_chunked_big_body_stays_with_the_parser(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    o = scripted(keepalive_handler())
    p = proxy(proxy_factory, tmp_path)
    with RawClient("127.0.0.1", p.port, timeout=5) as c:
        r = c.request("GET", f"http://raw.test:{o.port}/chunked")
        assert (r.status, r.body) == (200, body_for(b"/chunked", BIG))
        r = c.request("GET", f"http://raw.test:{o.port}/d")
        assert (r.status, r.body) == (200, body_for(b"/d", BIG))
    assert o.accepted == 1
