"""Seeded, bounded fuzz of the real proxy: malformed and unusual requests, and unusual origin
responses, against the subprocess (compiled hot path when built).

Each case is checked the same way: whatever the client gets starts with a valid HTTP status
line (or the proxy closes without a word), it is never the 500 "internal error" a failing
codec callback produces, the proxy's stderr gains no ERROR line and no Traceback, and a
plain request on a fresh connection is still served afterwards.

The cases come from ``random.Random(seed)``; the seed is in every failure message and
``DFPROXY_FUZZ_SEED=N`` replays one. Bounded by count and by time (``CASE_BUDGET`` seconds
of random cases per test and event loop; about 20 s in all).
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

from dfproxy import _native
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import EVENT_LOOPS, ProxyProcess
from tests.support.servers import ThreadedTCPServer

SEED = int(os.environ.get("DFPROXY_FUZZ_SEED", "20261201"))
CASE_BUDGET = 1.5  # seconds of random cases per test and event loop (plus the proxy's start)
MAX_CASES = 500  # random cases per run
IDLE_READ = 0.1  # an answer is over when the proxy says nothing more for this long
MAX_READ = 1.5  # ... or after this long in all

# Three digits (RFC 9110 §15: an origin's 999 is passed on, as Envoy does).
STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9][ \r]")


# ---------------------------------------------------------------------------- the origin
@dataclass
class Script:
    """What the scripted origin does with each request: ``early`` is sent on accept,
    ``pieces`` (with ``delay`` between them) answer the request, at its head already when
    ``at_head``; ``close`` ends the connection afterwards; ``echo`` relays raw bytes back
    after the answer (a tunnel)."""

    pieces: list[bytes]
    close: bool = False
    early: bytes = b""
    at_head: bool = False
    delay: float = 0.0
    echo: bool = False


OK_SCRIPT = Script([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])


class ScriptedOrigin(ThreadedTCPServer):
    """A raw TCP origin answering every request with the current ``script``."""

    thread_name = "fuzz-origin"

    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        self.script = OK_SCRIPT

    def serve_connection(self, conn: socket.socket, conn_id: int) -> None:
        conn.settimeout(5.0)
        script = self.script
        if script.early:
            conn.sendall(script.early)
        state = _OriginRequest(self, conn)
        parser = httptools.HttpRequestParser(state)
        while not state.done:
            data = conn.recv(65536)
            if not data:
                return
            if state.tunnel:
                conn.sendall(data)
                continue
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if not state.answered:
                    state.answer()
                state.tunnel = state.last.echo
                if not state.tunnel:
                    return
            except httptools.HttpParserError:
                return


class _OriginRequest:
    def __init__(self, origin: ScriptedOrigin, conn: socket.socket) -> None:
        self.origin = origin
        self.conn = conn
        self.done = False
        self.answered = False
        self.tunnel = False
        self.last = origin.script

    def answer(self) -> None:
        script = self.last = self.origin.script
        self.answered = True
        for i, piece in enumerate(script.pieces):
            if i and script.delay:
                time.sleep(script.delay)
            self.conn.sendall(piece)
        if script.close:
            self.done = True
            self.conn.shutdown(socket.SHUT_WR)

    def on_message_begin(self) -> None:
        self.answered = False

    def on_headers_complete(self) -> None:
        if self.origin.script.at_head:
            self.answer()

    def on_message_complete(self) -> None:
        if not self.answered:
            self.answer()


@pytest.fixture
def scripted_origin() -> Iterator[ScriptedOrigin]:
    server = ScriptedOrigin()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.errors, server.errors


# ---------------------------------------------------------------------------- checks
@dataclass
class Fuzz:
    """One test's proxy and its checks."""

    proxy: ProxyProcess
    origin: OriginServer
    seed: int
    cases: int = 0
    log_offset: int = 0
    labels: list[str] = field(default_factory=list)

    def where(self, label: str) -> str:
        return f"fuzz case {self.cases} ({label}), seed {self.seed} (DFPROXY_FUZZ_SEED)"

    def exchange(self, label: str, pieces: list[bytes], gap: float = 0.0) -> bytes:
        """Send ``pieces`` on a new connection, read the answer, check everything."""
        self.cases += 1
        self.labels.append(label)
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=IDLE_READ)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = bytearray()
        try:
            for i, piece in enumerate(pieces):
                if i and gap:
                    time.sleep(gap)
                try:
                    sock.sendall(piece)
                except OSError:
                    break  # the proxy closed early (a 400 on the first bytes): fine
            deadline = time.monotonic() + MAX_READ
            while time.monotonic() < deadline:
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    break
                except OSError:
                    break  # RST
                if not got:
                    break
                data += got
        finally:
            sock.close()
        self.check_answer(label, bytes(data), framed=b"HEAD " not in b"".join(pieces))
        self.check_log(label)
        self.check_alive(label)
        return bytes(data)

    def check_answer(self, label: str, data: bytes, framed: bool) -> None:
        if not data:
            return  # closed (or still waiting for the rest of a request): allowed
        assert STATUS_LINE.match(data), f"{self.where(label)}: not a status line: {data[:200]!r}"
        assert not (data.startswith(b"HTTP/1.1 500") and b"internal error" in data), (
            f"{self.where(label)}: internal error: {data[:300]!r}"
        )
        if framed:  # (a HEAD answer's framing headers describe a body that is not there)
            # Every response well formed, one after the other; a cut at the end is allowed
            # (an upstream reset mid-body), a tunnel after a 101 is not HTTP any more.
            parser = httptools.HttpResponseParser(_Ignore())
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError as exc:
                raise AssertionError(f"{self.where(label)}: {exc}: {data[:300]!r}") from None

    def check_log(self, label: str) -> None:
        text = self.proxy.stderr_text()
        new, self.log_offset = text[self.log_offset :], len(text)
        bad = [ln for ln in new.splitlines() if " ERROR " in ln or "Traceback" in ln]
        assert not bad, f"{self.where(label)}: proxy logged\n" + "\n".join(new.splitlines()[:60])

    def check_alive(self, label: str) -> None:
        target = self.origin.url("/bytes/7").encode()
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5.0) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), (
            f"{self.where(label)}: proxy no longer serves a plain request: {data[:300]!r}"
        )


class _Ignore:
    """httptools callbacks: none needed, the parser only checks the framing."""


def _run(fuzz: Fuzz, make_case: Callable[[], tuple[str, list[bytes], float]]) -> None:
    start = time.monotonic()
    first = fuzz.cases
    while fuzz.cases - first < MAX_CASES and time.monotonic() - start < CASE_BUDGET:
        label, pieces, gap = make_case()
        fuzz.exchange(label, pieces, gap)
    took = time.monotonic() - start
    print(f"seed {fuzz.seed}: {fuzz.cases - first} random cases in {took:.1f}s")


@pytest.fixture(params=EVENT_LOOPS)
def fuzz(
    request: pytest.FixtureRequest, proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> Fuzz:
    proxy = proxy_factory(loop=request.param, log_level="info")
    if _native.active:  # the point: the compiled codec, when it is built
        assert "hot path compiled" in proxy.stderr_text(), proxy.stderr_tail(20)
    return Fuzz(proxy, origin, SEED, log_offset=len(proxy.stderr_text()))


# ---------------------------------------------------------------------------- requests
METHODS = [
    b"GET",
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"TRACE",
    b"get",
    b"M-SEARCH",
    b"PURGE",
    b"FOO",
    b"G\x00T",
    b"",
    b"PRI",
    b"X" * 300,
]
VERSIONS = [
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/0.9",
    b"HTTP/2.0",
    b"HTTP/1.2",
    b"HTTP/1.1 x",
    b"http/1.1",
    b"",
    b"HTTP/11",
]


def _targets(rng: random.Random, host: bytes) -> list[bytes]:
    return [
        b"http://" + host + b"/",
        b"http://" + host + b"/path?q=1&r",
        b"http://" + host + b"/reqbody",  # (routes with filters in the filtered proxy)
        b"http://" + host + b"/body?x",
        b"http://" + host + b"/retry",
        b"http://" + host + b"?only-query",
        b"http://" + host,
        b"HTTP://" + host + b"/upper",
        b"https://" + host + b"/",
        b"ftp://" + host + b"/",
        b"http://user:pw@" + host + b"/",
        b"http:///nohost",
        b"http://",
        b"http://[::1/",
        b"http://[::1]:1/",
        b"http://host.test:99999/",
        b"http://host.test:0/",
        b"http://ho\\st.test/",
        b"http://h%41st.test/",
        b"http://2130706433:1/",
        b"http://127.1:1/",
        b"http://0x7f.1:1/",
        b"http://bad_host!.test/",
        b"http://" + host + b"/" + b"a" * rng.choice([10, 5000, 70000]),
        b"/relative",
        b"*",
        b"",
        b"no-slash",
        b"http://" + host + b"/\xff\xfe",
    ]


def _header_sets(rng: random.Random, host: bytes) -> list[list[bytes]]:
    return [
        [],
        [b"Host: " + host],
        [b"Host: " + host, b"Host: other.test"],
        [b"Host: "],
        [b"Host: [::1"],
        [b"Content-Length: 5"],
        [b"Content-Length: 5", b"Content-Length: 5"],
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 5"],
        [b"Content-Length: 5, 6"],
        [b"Content-Length: +5"],
        [b"Content-Length: -1"],
        [b"Content-Length: 99999999999999999999999"],
        [b"Content-Length: abc"],
        [b"Content-Length: " + b"9" * 5000],
        [b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Transfer-Encoding: gzip, chunked"],
        [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: \x0bchunked"],
        [b"X-Fold: a", b" folded"],
        [b"X-Fold: a", b"\tfolded"],
        [b" Leading: space"],
        [b"Bad Name: x"],
        [b"Bad\x01Name: x"],
        [b": empty-name"],
        [b"NoColon"],
        [b"X-Nul: a\x00b"],
        [b"X-Del: a\x7fb"],
        [b"X-Latin: caf\xe9"],
        [b"X-Long: " + b"v" * rng.choice([100, 20000, 70000])],
        [b"X-Many-%d: x" % i for i in range(rng.choice([50, 101, 150]))],
        [b"Connection: close"],
        [b"Connection: keep-alive"],
        [b"Connection: x-foo, close", b"X-Foo: gone"],
        [b"Connection: upgrade", b"Upgrade: websocket"],
        [b"Connection: Upgrade", b"Upgrade: h2c"],
        [b"Connection: upgrade", b"Upgrade: \xff\xfe"],
        [b"Upgrade: websocket"],
        [b"Proxy-Connection: keep-alive"],
        [b"Expect: 100-continue", b"Content-Length: 3"],
        [b"Expect: something-else"],
        [b"Trailer: X-T"],
        [b"TE: trailers"],
        [b"Proxy-Authorization: Basic Zm9vOmJhcg=="],
        [b"X-Forwarded-For: 1.2.3.4", b"User-Agent: fuzz", b"X-Request-Id: \xff"],
    ]


BODIES = [
    b"",
    b"hello",
    b"hel",
    b"hello world, longer than announced",
    b"5\r\nhello\r\n0\r\n\r\n",
    b'5;ext=1;q="x"\r\nhello\r\n0\r\n\r\n',
    b"5\r\nhello\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",  # never ends
    b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n",
]

GARBAGE = [
    b"",
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello's start
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x00\xff" * 20,
]


def _request_case(
    rng: random.Random, origin_host: bytes, echo_host: bytes
) -> tuple[str, list[bytes], float]:
    kind = rng.random()
    if kind < 0.15:
        # CONNECT variants.
        target = rng.choice(
            [
                echo_host,
                echo_host,
                b"127.0.0.1",
                b"https://" + echo_host,
                b"[::1]:1",
                b"127.0.0.1:0",
                b"127.0.0.1:99999",
                b"origin.test:" + echo_host.split(b":")[1],
                b"",
                b"/path",
            ]
        )
        headers = rng.choice(
            [
                [],
                [b"Host: " + target],
                [b"Content-Length: 3"],
                [b"Transfer-Encoding: chunked"],
                [b"Connection: upgrade", b"Upgrade: websocket"],
                [b"Connection: close"],
            ]
        )
        version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
        head = b"CONNECT " + target + b" " + version + b"\r\n"
        head += b"".join(h + b"\r\n" for h in headers) + b"\r\n"
        after = rng.choice([b"", b"tunnel bytes", b"GET / HTTP/1.1\r\n\r\n", b"abc"])
        label = f"CONNECT {target!r} {headers!r} +{after!r}"
        return label, _split(rng, head + after), rng.choice([0.0, 0.005])
    # Each part is unusual only now and then: a case with one odd part gets past the parser
    # and into the stream, where a type error would hide.
    method = rng.choice(METHODS) if rng.random() < 0.3 else rng.choice([b"GET", b"POST"])
    host = rng.choice([origin_host, origin_host, b"origin.test:" + origin_host.split(b":")[1]])
    targets = _targets(rng, host)
    target = rng.choice(targets) if rng.random() < 0.4 else rng.choice(targets[:6])
    version = rng.choice(VERSIONS) if rng.random() < 0.2 else b"HTTP/1.1"
    headers = rng.choice(_header_sets(rng, host))
    if rng.random() < 0.3:
        headers = headers + rng.choice(_header_sets(rng, host))
    if rng.random() < 0.4 and not any(h.lower().startswith(b"connection:") for h in headers):
        headers = [*headers, b"Connection: close"]  # (answered sooner: no idle wait)
    body = rng.choice(BODIES) if rng.random() < 0.5 else b""
    after = rng.choice(GARBAGE) if rng.random() < 0.3 else b""
    if rng.random() < 0.2:
        # A pipelined second request, plain.
        after = b"GET http://" + origin_host + b"/second HTTP/1.1\r\n\r\n" + after
    line = method + b" " + target + (b" " + version if version else b"") + b"\r\n"
    if rng.random() < 0.05:
        line = line.replace(b"\r\n", b"\n")  # bare LF line ends
    head = line + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    data = head + body + after
    shown = [h[:40] for h in headers][:6]
    label = f"{method[:20]!r} {target[:60]!r} {version!r} {shown!r} {body[:30]!r} +{after[:30]!r}"
    return label, _split(rng, data), rng.choice([0.0, 0.0, 0.003])


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` in 1 to 4 pieces cut at random places."""
    if len(data) < 2 or rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 3))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_malformed_and_unusual_requests(
    fuzz: Fuzz,
    scripted_origin: ScriptedOrigin,
    tcp_echo_factory: Callable[..., TcpEchoServer],
) -> None:
    rng = random.Random(fuzz.seed)
    origin_host = f"127.0.0.1:{scripted_origin.port}".encode()
    echo = tcp_echo_factory()
    greeter = tcp_echo_factory(greeting=b"220 server speaks first\r\n")
    echo_hosts = [f"127.0.0.1:{s.port}".encode() for s in (echo, greeter)]
    _run(fuzz, lambda: _request_case(rng, origin_host, rng.choice(echo_hosts)))


def test_requests_split_at_every_byte(fuzz: Fuzz, scripted_origin: ScriptedOrigin) -> None:
    """Chunked with extensions and trailers, then a pipelined request: every cut point."""
    host = f"127.0.0.1:{scripted_origin.port}".encode()
    data = (
        b"POST http://" + host + b"/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
        b"X-Fold: a\r\n\r\n"
        b"3;e=1\r\nabc\r\n0\r\nX-T: t\r\n\r\n"
        b"GET http://" + host + b"/2 HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    start = time.monotonic()
    for cut in range(1, len(data)):
        answer = fuzz.exchange(f"cut at {cut}", [data[:cut], data[cut:]], gap=0.002)
        assert answer.count(b"HTTP/1.1 200 OK") == 2, fuzz.where(f"cut at {cut}: {answer!r}")
        assert time.monotonic() - start < 3 * CASE_BUDGET, "split cases took too long"


# ---------------------------------------------------------------------------- responses
def _response_scripts(rng: random.Random) -> list[tuple[str, Script]]:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40000
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(rng.choice([99, 101, 150])))
    return [
        ("plain", Script([ok])),
        ("100 then 200", Script([b"HTTP/1.1 100 Continue\r\n\r\n" + ok])),
        ("103 hints then 200", Script([b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", ok])),
        ("102 twice then 200", Script([b"HTTP/1.1 102 Processing\r\n\r\n" * 2 + ok])),
        (
            "101 unasked",
            Script(
                [
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\nraw"
                ],
                echo=True,
            ),
        ),
        ("101 without headers", Script([b"HTTP/1.1 101 Switching\r\n\r\n"], echo=True)),
        (
            "101 at head, close",
            Script([b"HTTP/1.1 101 Go\r\nUpgrade: websocket\r\n\r\nbye"], close=True, at_head=True),
        ),
        (
            "100 then 101",
            Script([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Go\r\n\r\n"], echo=True),
        ),
        (
            "chunked 1xx body",
            Script([b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nabc" + ok]),
        ),
        ("no reason", Script([b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"])),
        ("empty reason", Script([b"HTTP/1.1 204 \r\n\r\n"])),
        (
            "HTTP/1.0 keep-alive",
            Script([b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]),
        ),
        ("HTTP/1.0 close-delimited", Script([b"HTTP/1.0 200 OK\r\n\r\nbody"], close=True)),
        (
            "close-delimited",
            Script([b"HTTP/1.1 200 OK\r\n\r\n", b"part1", b"part2"], close=True, delay=0.01),
        ),
        (
            "dup CL same",
            Script([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"]),
        ),
        (
            "dup CL differ",
            Script([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"]),
        ),
        ("CL list", Script([b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"])),
        ("CL bad", Script([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok"])),
        ("CL negative", Script([b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok"])),
        ("CL huge", Script([b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"])),
        (
            "TE+CL",
            Script(
                [
                    chunked.replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n")
                    + b"2\r\nok\r\n0\r\n\r\n"
                ]
            ),
        ),
        (
            "chunked trailers",
            Script([chunked + b"2;ext=v\r\nok\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n"]),
        ),
        ("chunked bad size", Script([chunked + b"zz\r\nok\r\n0\r\n\r\n"])),
        ("chunked truncated", Script([chunked + b"10\r\nshort"], close=True)),
        (
            "TE gzip only",
            Script([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz"], close=True),
        ),
        (
            "TE chunked, gzip",
            Script([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz"], close=True),
        ),
        ("204 with body", Script([b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"])),
        ("304 with body", Script([b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello"])),
        (
            "204 chunked",
            Script(
                [
                    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\n\r\n"
                ]
            ),
        ),
        ("status 999", Script([b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"])),
        ("status 600", Script([b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"])),
        ("status 000", Script([b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n"])),
        ("status 99", Script([b"HTTP/1.1 99 Low\r\nContent-Length: 0\r\n\r\n"])),
        ("HTTP/2.0", Script([b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"])),
        ("garbage", Script([b"garbage\r\n\r\n"], close=True)),
        ("nothing", Script([], close=True)),
        ("half head", Script([b"HTTP/1.1 200 OK\r\nContent-"], close=True)),
        ("half body", Script([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"], close=True)),
        ("many headers", Script([b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n"])),
        (
            "long header",
            Script(
                [b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 70000 + b"\r\nContent-Length: 0\r\n\r\n"]
            ),
        ),
        ("obs-fold", Script([b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n"])),
        (
            "bad header name",
            Script([b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n"]),
        ),
        ("header nul", Script([b"HTTP/1.1 200 OK\r\nX-N: a\x00b\r\nContent-Length: 0\r\n\r\n"])),
        (
            "latin-1 header",
            Script([b"HTTP/1.1 200 OK\r\nX-L: caf\xe9\r\nContent-Length: 0\r\n\r\n"]),
        ),
        (
            "connection tokens",
            Script(
                [
                    b"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nX-A: 1\r\n"
                    b"Content-Length: 2\r\n\r\nok"
                ]
            ),
        ),
        (
            "upgrade header on 200",
            Script(
                [
                    b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\n"
                    b"Connection: upgrade\r\nContent-Length: 2\r\n\r\nok"
                ]
            ),
        ),
        ("extra response", Script([ok + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])),
        ("extra bytes", Script([ok + b"trailing junk"])),
        ("early bytes", Script([ok], early=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")),
        ("early greeting", Script([ok], early=b"220 smtp ready\r\n")),
        ("answer at head", Script([ok], at_head=True)),
        ("answer at head, close", Script([ok], at_head=True, close=True)),
        ("400 at head", Script([b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n"], at_head=True)),
        ("split", Script(_pieces(rng, chunked + b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"), delay=0.002)),
        ("split 100", Script(_pieces(rng, b"HTTP/1.1 100 Continue\r\n\r\n" + ok), delay=0.002)),
        ("big CL", Script([big])),
        ("big CL, extra response", Script([big + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])),
        ("big CL, junk after", Script([big + b"junk"])),
        ("big CL, junk later", Script([big, b"junk"], delay=0.01)),
        ("big CL cut, close", Script([big[:25000]], close=True)),
        ("big CL in pieces", Script([big[:100], big[100:20000], big[20000:]], delay=0.005)),
        ("100 then big CL", Script([b"HTTP/1.1 100 Continue\r\n\r\n" + big])),
        ("204 with a big body", Script([big.replace(b"200 OK", b"204 No Content", 1)])),
        ("big CL at head", Script([big], at_head=True)),
        ("lf only", Script([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"])),
        ("space before colon", Script([b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"])),
    ]


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _response_case(
    rng: random.Random, origin: ScriptedOrigin, host: bytes, paths: list[bytes]
) -> tuple[str, list[bytes], float]:
    name, script = rng.choice(_response_scripts(rng))
    path = rng.choice(paths)
    origin.script = script
    method = rng.choice([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"])
    headers = [b"Host: " + host]
    body = b""
    if method in (b"POST", b"PUT"):
        body = rng.choice([b"data", b"x" * 3000, b"y" * 300_000])
        headers.append(b"Content-Length: %d" % len(body))
        if rng.random() < 0.3:
            headers.append(b"Expect: 100-continue")
    after = b""
    if rng.random() < 0.25:
        headers += [b"Connection: Upgrade", b"Upgrade: websocket"]
        after = rng.choice([b"", b"tunnel bytes"])  # before the answer: held, then relayed
    elif rng.random() < 0.6:
        headers.append(b"Connection: close")
    elif rng.random() < 0.4:
        # A pipelined plain request behind this one.
        after = b"GET http://" + host + b"/next HTTP/1.1\r\nConnection: close\r\n\r\n"
    version = b"HTTP/1.0" if rng.random() < 0.2 else b"HTTP/1.1"
    head = method + b" http://" + host + path + b" " + version + b"\r\n"
    head += b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    pieces = [head + body + after]
    gap = 0.0
    if body and rng.random() < 0.4:
        pieces = [head, body[:1], body[1:] + after]  # the origin may answer in between
        gap = 0.02
    label = (
        f"origin {name!r} to {method!r} {path!r} {version!r} {headers[1:]!r} {len(body)} +{after!r}"
    )
    return label, pieces, gap


# What some scripts must get (llhttp reads any three digits as a status).
EXPECTED = {"status 000": b"HTTP/1.1 502 ", "status 999": b"HTTP/1.1 999 "}


def _response_fuzz(fuzz: Fuzz, origin: ScriptedOrigin, paths: list[bytes]) -> None:
    rng = random.Random(fuzz.seed)
    host = f"127.0.0.1:{origin.port}".encode()
    # Every script once, then random ones.
    for path in paths:
        for name, script in _response_scripts(rng):
            origin.script = script
            head = b"GET http://" + host + path + b" HTTP/1.1\r\nConnection: close\r\n\r\n"
            answer = fuzz.exchange(f"origin {name!r} to GET {path!r}", [head])
            if name in EXPECTED:
                assert answer.startswith(EXPECTED[name]), fuzz.where(f"{name}: {answer[:200]!r}")
    _run(fuzz, lambda: _response_case(rng, origin, host, paths))


def test_unusual_origin_responses(fuzz: Fuzz, scripted_origin: ScriptedOrigin) -> None:
    _response_fuzz(fuzz, scripted_origin, [b"/r"])


# Routes whose filters see the response: retries, a response body transformation (the
# whole body collected), one of the request body, header manipulation, DLP (streaming).
FILTERED_CONFIG = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {name: gw, namespace: gloo-system}
spec:
  bindAddress: 127.0.0.1
  bindPort: 0
  httpGateway:
    options:
      dynamicForwardProxy: {}
      dlp:
        dlpRules:
        - matcher: {prefix: /dlp}
          actions: [{actionType: SSN}]
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: fuzz, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /retry}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        retries:
          retryOn: 5xx,reset,connect-failure,gateway-error
          numRetries: 1
          perTryTimeout: 1s
          retryBackOff: {baseInterval: 0.005s, maxInterval: 0.01s}
    - matchers: [{prefix: /body}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        stagedTransformations:
          regular:
            responseTransforms:
            - responseTransformation:
                transformationTemplate:
                  parseBodyBehavior: DontParse
                  body: {text: '{{ length(body()) }} bytes'}
    - matchers: [{prefix: /reqbody}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        stagedTransformations:
          regular:
            requestTransforms:
            - requestTransformation:
                transformationTemplate:
                  parseBodyBehavior: DontParse
                  body: {text: '{{ length(body()) }} bytes'}
    - matchers: [{prefix: /hdr}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        headerManipulation:
          requestHeadersToAdd: [{header: {key: x-req-added, value: v}}]
          responseHeadersToAdd: [{header: {key: x-added, value: v}}]
          responseHeadersToRemove: [content-type]
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
"""


def test_unusual_origin_responses_through_filters(
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
    scripted_origin: ScriptedOrigin,
    tmp_path: Path,
) -> None:
    config = tmp_path / "fuzz.yaml"
    config.write_text(FILTERED_CONFIG)
    proxy = proxy_factory("-c", str(config), log_level="info")
    fuzz = Fuzz(proxy, origin, SEED, log_offset=len(proxy.stderr_text()))
    _response_fuzz(fuzz, scripted_origin, [b"/retry", b"/body", b"/reqbody", b"/hdr", b"/dlp"])
    scripted_origin.script = OK_SCRIPT
    host = f"127.0.0.1:{scripted_origin.port}".encode()
    rng = random.Random(fuzz.seed)
    _run(fuzz, lambda: _request_case(rng, host, host))
