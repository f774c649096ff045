"""Real origin HTTP/1.1 servers (and a raw TCP echo server) on loopback, for proxy tests.

Thread per connection, blocking sockets, requests parsed with httptools; keep-alive and
pipelining (answered in order). Behaviour is chosen by the request path, so one origin
serves many tests (any HEAD gets GET's headers without the body):

    /echo                   200, JSON: the request exactly as seen on the wire (see below)
    /bytes/N                N bytes of ``pattern_bytes`` with Content-Length (streamed)
    /chunked/N              N bytes, chunked, trailer ``x-checksum: <sha256>``; ?chunk=SIZE
    /close/N                N bytes delimited by connection close (no CL, not chunked)
    /reset-mid-body         CL 100000, 1000 bytes of body, then RST
    /reset-before-headers   reads the request, then RST without answering
    /slow-headers/S         waits S seconds (float), then 200 "slow\\n"
    /stall-body/N           CL N, sends N//2 bytes, then stalls until the peer closes
    /status/CODE            that status; 204/304 without body, others a short text body
    /upload                 reads a body of any framing, answers JSON {length, sha256, ...}
    /websocket              101 + Sec-WebSocket-Accept if ``Upgrade: websocket``, then echoes
                            raw bytes (426 without a proper upgrade request)
    /response-headers?k=v   200 "ok\\n" with each query pair added as a response header
    /say/FRAMING?text=T     200 with body T, framed by FRAMING: cl, chunked or close; ?chunk=N
                            sends it in N-byte pieces (chunks), ?ce=E adds Content-Encoding E
    anything else           404

Any path accepts ``?close=1``: answer with ``Connection: close`` and close afterwards.

``/echo`` JSON: method, target, version ("1.1"), headers ([[name, value], ...] in order,
names as sent), trailers, body_length, body_sha256, chunked, connection_id (1-based accept
counter of this origin), request_index (0-based on that connection).
"""

from __future__ import annotations

import base64
import hashlib
import http
import json
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

import httptools

from .servers import ThreadedTCPServer

__all__ = [
    "OriginServer",
    "SeenRequest",
    "TcpEchoServer",
    "iter_pattern",
    "pattern_bytes",
    "pattern_sha256",
    "websocket_accept",
]

PATTERN_PERIOD = 251
_PATTERN = bytes(range(PATTERN_PERIOD))
DEFAULT_PIECE = PATTERN_PERIOD * 256  # 64256 bytes
MAX_KEPT_BODY = 1 << 20
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---------------------------------------------------------------------------- data pattern
def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """Deterministic data: byte i of a body is ``(offset + i) % 251``."""
    start = offset % PATTERN_PERIOD
    return (_PATTERN * ((start + n) // PATTERN_PERIOD + 1))[start : start + n]


@lru_cache(maxsize=8)
def _pattern_buffer(piece: int) -> bytes:
    return pattern_bytes(piece + PATTERN_PERIOD)


def iter_pattern(n: int, piece: int = DEFAULT_PIECE) -> Iterator[memoryview]:
    """Yield ``pattern_bytes(n)`` in pieces of ``piece`` bytes without building it whole."""
    piece = max(1, min(piece, 8 << 20))
    buf = memoryview(_pattern_buffer(piece))
    sent = 0
    while sent < n:
        size = min(piece, n - sent)
        start = sent % PATTERN_PERIOD
        yield buf[start : start + size]
        sent += size


@lru_cache(maxsize=64)
def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for part in iter_pattern(n, 1 << 20):
        h.update(part)
    return h.hexdigest()


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


# ---------------------------------------------------------------------------- requests
@dataclass
class SeenRequest:
    """A request as the origin received it (headers decoded as latin-1, order preserved)."""

    connection_id: int
    request_index: int
    method: str = ""
    target: str = ""
    version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body_length: int = 0
    body_sha256: str = ""
    body: bytes | None = b""  # kept up to 1 MiB, then None
    chunked: bool = False
    keep_alive: bool = True
    upgrade: bool = False
    time: float = 0.0  # monotonic, when the request head completed
    _hasher: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)
    _body_buf: bytearray | None = field(default_factory=bytearray, repr=False)
    _target_parts: list[bytes] = field(default_factory=list, repr=False)
    _head_done: bool = field(default=False, repr=False)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]

    @property
    def path(self) -> str:
        return _split_target(self.target)[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(_split_target(self.target)[1], keep_blank_values=True))

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": [list(h) for h in self.headers],
            "trailers": [list(h) for h in self.trailers],
            "body_length": self.body_length,
            "body_sha256": self.body_sha256,
            "chunked": self.chunked,
            "connection_id": self.connection_id,
            "request_index": self.request_index,
        }


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith("/") or target == "*":
        path, _, q = target.partition("?")
        return path, q
    parts = urlsplit(target)  # absolute-form (or authority-form: no path)
    return parts.path or "/", parts.query


class _Collector:
    """httptools callbacks -> SeenRequest objects, queued when complete (pipelining)."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.count = 0
        self.parser: httptools.HttpRequestParser | None = None
        self.cur: SeenRequest | None = None
        self.ready: deque[SeenRequest] = deque()

    def on_message_begin(self) -> None:
        self.cur = SeenRequest(self.conn_id, self.count)
        self.count += 1

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur._target_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.cur.trailers if self.cur._head_done else self.cur.headers).append(pair)

    def on_headers_complete(self) -> None:
        assert self.cur is not None and self.parser is not None
        r = self.cur
        r._head_done = True
        r.time = time.monotonic()
        r.target = b"".join(r._target_parts).decode("latin-1")
        r.method = self.parser.get_method().decode("latin-1")
        r.version = self.parser.get_http_version()
        r.keep_alive = self.parser.should_keep_alive()
        r.upgrade = self.parser.should_upgrade()
        r.chunked = any(
            k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in r.headers
        )

    def on_body(self, body: bytes) -> None:
        r = self.cur
        assert r is not None
        r._hasher.update(body)
        r.body_length += len(body)
        if r._body_buf is not None:
            if r.body_length <= MAX_KEPT_BODY:
                r._body_buf += body
            else:
                r._body_buf = None

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.cur.body_sha256 = self.cur._hasher.hexdigest()
        buf = self.cur._body_buf
        self.cur.body = None if buf is None else bytes(buf)
        self.cur._body_buf = None
        self.ready.append(self.cur)
        self.cur = None


class _Close(Exception):
    """Raised by a behaviour: the connection is finished (already closed or to close)."""


def _reason(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _head(code: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {_reason(code)}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------- origin
class OriginServer(ThreadedTCPServer):
    """Path-driven origin server (see module docstring). Use ``start()``/``stop()`` or the
    ``origin`` / ``origin_factory`` fixtures."""

    thread_name = "origin"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._requests: list[SeenRequest] = []

    def start(self) -> OriginServer:
        super().start()
        return self

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path``."""
        return f"http://{self.authority}{path}"

    @property
    def requests(self) -> list[SeenRequest]:
        """Snapshot of every complete request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[SeenRequest]:
        self.wait_until(lambda: len(self.requests) >= n, timeout, f"{n} origin requests")
        return self.requests

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ connection
    def serve_connection(self, conn: socket.socket, conn_id: int) -> None:
        collector = _Collector(conn_id)
        parser = httptools.HttpRequestParser(collector)
        collector.parser = parser
        pending = b""
        try:
            while True:
                if pending:
                    data, pending = pending, b""
                else:
                    data = conn.recv(65536)
                    if not data:
                        return
                upgrade_at: int | None = None
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as e:
                    upgrade_at = int(e.args[0])
                except httptools.HttpParserError as e:
                    body = f"bad request: {e}\n".encode()
                    conn.sendall(
                        _head(400, [("Content-Length", str(len(body))), ("Connection", "close")])
                        + body
                    )
                    self.graceful_close(conn)
                    return
                while collector.ready:
                    req = collector.ready.popleft()
                    with self._lock:
                        self._requests.append(req)
                    if upgrade_at is not None and not collector.ready:
                        rest = data[upgrade_at:]
                        if req.path == "/websocket" and req.method == "GET":
                            self._websocket(conn, req, rest)
                            return
                        if req.method == "CONNECT":
                            self._simple(conn, req, 405, b"CONNECT not supported\n", close=True)
                            return
                        self._respond(conn, req)  # ignore other upgrades: plain HTTP
                        parser = httptools.HttpRequestParser(collector)
                        collector.parser = parser
                        pending = rest
                    else:
                        self._respond(conn, req)
        except _Close:
            return

    # ------------------------------------------------------------------ behaviours
    def _respond(self, conn: socket.socket, req: SeenRequest) -> None:
        path, query = req.path, req.query
        close = not req.keep_alive or query.get("close") == "1"
        parts = path.strip("/").split("/")
        name, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        try:
            if path == "/echo":
                body = json.dumps(req.to_json()).encode()
                self._simple(conn, req, 200, body, close=close, ctype="application/json")
            elif name == "bytes" and arg.isdigit():
                self._bytes(conn, req, int(arg), close=close)
            elif name == "chunked" and arg.isdigit():
                self._chunked(conn, req, int(arg), int(query.get("chunk", DEFAULT_PIECE)), close)
            elif name == "close" and arg.isdigit():
                self._close_delimited(conn, req, int(arg))
            elif path == "/reset-mid-body":
                self._reset_mid_body(conn, req)
            elif path == "/reset-before-headers":
                self.close_connection(conn, reset=True)
                raise _Close
            elif name == "slow-headers" and arg:
                if self._stopping.wait(float(arg)):
                    raise _Close
                self._simple(conn, req, 200, b"slow\n", close=close)
            elif name == "stall-body" and arg.isdigit():
                self._stall_body(conn, req, int(arg))
            elif name == "status" and arg.isdigit() and 200 <= int(arg) <= 599:
                code = int(arg)
                body = b"" if code in (204, 304) else f"status {code}\n".encode()
                self._simple(conn, req, code, body, close=close)
            elif path == "/upload":
                info = {
                    "length": req.body_length,
                    "sha256": req.body_sha256,
                    "chunked": req.chunked,
                    "trailers": [list(t) for t in req.trailers],
                }
                body = json.dumps(info).encode()
                self._simple(conn, req, 200, body, close=close, ctype="application/json")
            elif path == "/websocket":
                self._simple(conn, req, 426, b"websocket upgrade required\n", close=close)
            elif name == "say" and arg in ("cl", "chunked", "close"):
                self._say(conn, req, arg, close)
            elif path == "/response-headers":
                pairs = parse_qsl(_split_target(req.target)[1], keep_blank_values=True)
                extra = [(k, v) for k, v in pairs if k != "close"]
                self._simple(conn, req, 200, b"ok\n", close=close, extra=extra)
            else:
                self._simple(conn, req, 404, f"no route for {path}\n".encode(), close=close)
        except ValueError:
            self._simple(conn, req, 400, b"bad argument\n", close=close)

    def _say(self, conn: socket.socket, req: SeenRequest, framing: str, close: bool) -> None:
        body = req.query.get("text", "").encode()
        step = int(req.query.get("chunk", "0")) or len(body) or 1
        pieces = [body[i : i + step] for i in range(0, len(body), step)]
        headers = [("Content-Type", "text/plain")]
        if req.query.get("ce"):
            headers.append(("Content-Encoding", req.query["ce"]))
        if framing == "cl":
            headers.append(("Content-Length", str(len(body))))
        elif framing == "chunked" and req.version != "1.0":
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            framing, close = "close", True
        conn.sendall(_head(200, headers + self._conn_headers(req, close)))
        if req.method != "HEAD":
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.005)  # separate reads at the proxy, so pieces stay apart
                conn.sendall(
                    b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece
                )
            if framing == "chunked":
                conn.sendall(b"0\r\n\r\n")
        self._finish(conn, close)

    def _conn_headers(self, req: SeenRequest, close: bool) -> list[tuple[str, str]]:
        if close:
            return [("Connection", "close")]
        if req.version == "1.0":
            return [("Connection", "keep-alive")]
        return []

    def _finish(self, conn: socket.socket, close: bool) -> None:
        if close:
            self.graceful_close(conn)
            raise _Close

    def _simple(
        self,
        conn: socket.socket,
        req: SeenRequest,
        code: int,
        body: bytes,
        *,
        close: bool,
        ctype: str = "text/plain",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers: list[tuple[str, str]] = []
        if code not in (204, 304):
            headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        headers += (extra or []) + self._conn_headers(req, close)
        conn.sendall(_head(code, headers) + (b"" if req.method == "HEAD" else body))
        self._finish(conn, close)

    def _bytes(self, conn: socket.socket, req: SeenRequest, n: int, *, close: bool) -> None:
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
        conn.sendall(_head(200, headers + self._conn_headers(req, close)))
        if req.method != "HEAD":
            for part in iter_pattern(n):
                conn.sendall(part)
        self._finish(conn, close)

    def _chunked(
        self, conn: socket.socket, req: SeenRequest, n: int, piece: int, close: bool
    ) -> None:
        if req.version == "1.0":  # no chunked for HTTP/1.0 peers: close-delimited
            self._close_delimited(conn, req, n)
            return
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "x-checksum"),
        ]
        conn.sendall(_head(200, headers + self._conn_headers(req, close)))
        if req.method != "HEAD":
            for part in iter_pattern(n, piece):
                conn.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
            conn.sendall(f"0\r\nx-checksum: {pattern_sha256(n)}\r\n\r\n".encode())
        self._finish(conn, close)

    def _close_delimited(self, conn: socket.socket, req: SeenRequest, n: int) -> None:
        headers = [("Content-Type", "application/octet-stream"), ("Connection", "close")]
        conn.sendall(_head(200, headers))
        if req.method != "HEAD":
            for part in iter_pattern(n):
                conn.sendall(part)
        self._finish(conn, True)

    def _reset_mid_body(self, conn: socket.socket, req: SeenRequest) -> None:
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", "100000")]
        if req.method == "HEAD":
            conn.sendall(_head(200, headers))
            return
        conn.sendall(_head(200, headers) + pattern_bytes(1000))
        self.close_connection(conn, reset=True)
        raise _Close

    def _stall_body(self, conn: socket.socket, req: SeenRequest, n: int) -> None:
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
        conn.sendall(_head(200, headers))
        if req.method == "HEAD":
            return
        conn.sendall(pattern_bytes(n // 2))
        while conn.recv(65536):  # until the peer closes (or stop() shuts us down)
            pass
        self.close_connection(conn)
        raise _Close

    def _websocket(self, conn: socket.socket, req: SeenRequest, rest: bytes) -> None:
        upgrade = (req.header("upgrade") or "").lower()
        key = req.header("sec-websocket-key")
        if "websocket" not in upgrade or not key:
            self._simple(conn, req, 426, b"websocket upgrade required\n", close=True)
            return
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", websocket_accept(key.strip())),
        ]
        conn.sendall(_head(101, headers))
        _echo(conn, rest)


def _echo(conn: socket.socket, first: bytes = b"") -> None:
    """Echo until EOF, then half-close our side (FIN) after everything was echoed."""
    if first:
        conn.sendall(first)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------------------- TCP echo
class TcpEchoServer(ThreadedTCPServer):
    """Echoes bytes; on EOF from the client it finishes echoing, then shuts down its write
    side (half-close) and closes. ``greeting`` is sent first on every connection
    (server-speaks-first protocols)."""

    thread_name = "tcp-echo"

    def __init__(self, host: str = "127.0.0.1", greeting: bytes = b"") -> None:
        super().__init__(host)
        self.greeting = greeting
        self._bytes_echoed = 0

    def start(self) -> TcpEchoServer:
        super().start()
        return self

    @property
    def bytes_echoed(self) -> int:
        with self._lock:
            return self._bytes_echoed

    def serve_connection(self, conn: socket.socket, conn_id: int) -> None:
        if self.greeting:
            conn.sendall(self.greeting)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            with self._lock:
                self._bytes_echoed += len(data)
        conn.shutdown(socket.SHUT_WR)
        self.graceful_close(conn)
