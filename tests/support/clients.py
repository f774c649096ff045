"""Clients for tests: the real ``curl`` binary, and a raw-socket HTTP/1.1 client.

r = curl("-x", proxy.url, origin.url("/echo"))
assert r.returncode == 0 and r.http_code == 200
seen = r.json()

with RawClient("127.0.0.1", proxy.port) as c:
    resp = c.request("GET", origin.url("/echo"))           # absolute-form, Host added
    c.send(b"GET /x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
    resp = c.recv_response()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = [
    "CurlResult",
    "IncompleteResponseError",
    "RawClient",
    "RawResponse",
    "build_request",
    "curl",
    "encode_chunked",
]

PROXY_ENV_VARS = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any *_proxy variables (tests route through a proxy explicitly)."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------- curl
@dataclass
class CurlResult:
    args: list[str]
    returncode: int
    stdout: bytes  # the body curl wrote to stdout (our write-out removed)
    stderr: str
    info: dict[str, Any] | None = None  # curl's ``-w '%{json}'`` variables

    @property
    def http_code(self) -> int | None:
        """The final response's status (``%{http_code}``); 0 if none was received."""
        if self.info is None:
            return None
        return int(self.info.get("http_code") or 0)

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self) -> CurlResult:
        """Raise if curl failed (exit code != 0)."""
        if self.returncode != 0:
            raise AssertionError(f"curl {self.args} exited {self.returncode}: {self.stderr}")
        return self


def curl(
    *args: str,
    timeout: float = 30.0,
    input: bytes | None = None,
    write_out: bool = True,
    env: Mapping[str, str] | None = None,
) -> CurlResult:
    """Run the real curl binary: ``curl -q -sS --max-time TIMEOUT *args``.

    Unless ``write_out=False`` or the caller passes ``-w``/``--write-out``, ``-w '%{json}'``
    is appended behind a unique marker and parsed into ``.info`` / ``.http_code``; stdout is
    the body only. Proxy environment variables are removed (use ``-x`` explicitly).
    """
    exe = shutil.which("curl")
    if exe is None:
        raise RuntimeError("curl is not installed (make deps)")
    argv = [exe, "-q", "-sS", "--max-time", f"{timeout:g}", *args]
    marker = f"\n@@curl-write-out-{uuid.uuid4().hex}@@"
    parse = write_out and not any(a in ("-w", "--write-out") for a in args)
    if parse:
        argv += ["-w", marker + "%{json}"]
    proc = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        timeout=timeout + 10,
        env=clean_env(env),
        check=False,
    )
    stdout, info = proc.stdout, None
    if parse:
        body, sep, tail = stdout.rpartition(marker.encode())
        if sep:
            stdout = body
            with contextlib.suppress(ValueError):
                info = json.loads(tail)
    return CurlResult(
        args=list(args),
        returncode=proc.returncode,
        stdout=stdout,
        stderr=proc.stderr.decode("utf-8", "replace"),
        info=info,
    )


# ---------------------------------------------------------------------------- raw HTTP
HeaderList = Sequence[tuple[str, str]] | Mapping[str, str]


def _header_pairs(headers: HeaderList | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def build_request(
    method: str,
    target: str,
    headers: HeaderList | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    """Exactly this request on the wire: nothing is added (no Host, no Content-Length)."""
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in _header_pairs(headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_chunked(
    data: bytes | Iterable[bytes],
    chunk_size: int = 8192,
    trailers: HeaderList | None = None,
) -> bytes:
    """Chunked transfer-coding of ``data`` (split in ``chunk_size`` pieces, or the given
    pieces if an iterable of bytes), with optional trailer fields."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        pieces: Iterable[bytes] = (raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size))
    else:
        pieces = data
    out = bytearray()
    for p in pieces:
        if p:
            out += b"%x\r\n" % len(p) + p + b"\r\n"
    out += b"0\r\n"
    for k, v in _header_pairs(trailers):
        out += f"{k}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str  # "1.1"
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = b""  # None when recv_response(keep_body=False)
    body_length: int = 0
    body_sha256: str = ""
    framing: str = "none"  # "content-length" | "chunked" | "close" | "none"
    keep_alive: bool = True
    raw_head: bytes = b""
    complete: bool = True

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive) or None."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]

    @property
    def text(self) -> str:
        return (self.body or b"").decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body or b"")


class IncompleteResponseError(Exception):
    """The connection ended (EOF or RST) before the response was complete. ``partial`` is
    what was received so far (None if not even the head), ``reset`` tells RST from EOF."""

    def __init__(self, message: str, partial: RawResponse | None, reset: bool) -> None:
        super().__init__(message)
        self.partial = partial
        self.reset = reset


class _ResponseCollector:
    def __init__(self, keep_body: bool) -> None:
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.head_done = False
        self.complete = False
        self.keep_body = keep_body
        self.parts: list[bytes] = []
        self.length = 0
        self.hasher = hashlib.sha256()

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.trailers if self.head_done else self.headers).append(pair)

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.length += len(body)
        self.hasher.update(body)
        if self.keep_body:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class RawClient:
    """Blocking raw-socket HTTP/1.1 client; a socket timeout is always set.

    Responses are framed byte-exactly (Content-Length, chunked, close-delimited, or no body
    for HEAD / 1xx / 204 / 304 / 2xx-to-CONNECT / 101) and parsed with httptools, so
    pipelined responses and bytes after a CONNECT/101 stay in the buffer for the next
    ``recv_response()`` / ``recv()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.eof = False
        self.reset_seen = False

    # ------------------------------------------------------------------ basics
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        """Half-close: send FIN, keep reading."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, size: int = 262144) -> bool:
        """Read more into the buffer. False on EOF. Raises ConnectionResetError on RST."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            self.reset_seen = self.eof = True
            raise
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    def recv(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes (buffered bytes first); b"" on EOF."""
        if not self._buf:
            self._fill(max(n, 1))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise EOFError(f"EOF after {len(self._buf)} of {n} bytes")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_until_closed(self) -> bytes:
        """Everything until the peer closes. An RST ends it too (``reset_seen`` is set)."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def is_closed_by_peer(self, timeout: float | None = None) -> bool:
        """True if the peer closes (FIN or RST) within ``timeout`` (default: the client's
        timeout), discarding anything it sends first; False if still open."""
        old = self.sock.gettimeout()
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            self.recv_until_closed()
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)

    # ------------------------------------------------------------------ HTTP
    def send_request(
        self,
        method: str,
        target: str,
        headers: HeaderList | None = None,
        body: bytes = b"",
        *,
        version: str = "HTTP/1.1",
        add_host: bool = True,
        add_length: bool = True,
    ) -> None:
        """Send a request; adds ``Host`` (the target's authority for absolute- and
        authority-form, else this connection's) and ``Content-Length`` (when there is a body
        and no framing header) unless told not to."""
        pairs = _header_pairs(headers)
        names = {k.lower() for k, _ in pairs}
        if add_host and "host" not in names:
            if method == "CONNECT":
                host = target
            elif "://" in target:
                host = urlsplit(target).netloc
            else:
                host = self.authority
            pairs.insert(0, ("Host", host))
        if add_length and body and not names & {"content-length", "transfer-encoding"}:
            pairs.append(("Content-Length", str(len(body))))
        self.send(build_request(method, target, pairs, body, version=version))

    def request(
        self,
        method: str,
        target: str,
        headers: HeaderList | None = None,
        body: bytes = b"",
        **kwargs: Any,
    ) -> RawResponse:
        """``send_request`` then ``recv_response`` (HEAD/CONNECT framing handled)."""
        self.send_request(method, target, headers, body, **kwargs)
        return self.recv_response(method=method)

    def recv_response(
        self,
        *,
        head: bool = False,
        method: str | None = None,
        keep_body: bool = True,
        skip_informational: bool = False,
        max_head: int = 1 << 20,
    ) -> RawResponse:
        """Read exactly one response. ``head=True`` (or ``method="HEAD"``): no body.
        ``method="CONNECT"``: a 2xx has no body and what follows is tunnel data.
        1xx responses are returned unless ``skip_informational``."""
        while True:
            resp = self._recv_one(
                no_body=head or method == "HEAD",
                connect=method == "CONNECT",
                keep_body=keep_body,
                max_head=max_head,
            )
            if not (skip_informational and 100 <= resp.status < 200 and resp.status != 101):
                return resp

    def _recv_one(
        self, *, no_body: bool, connect: bool, keep_body: bool, max_head: int
    ) -> RawResponse:
        try:
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > max_head:
                    raise ValueError(f"response head larger than {max_head} bytes")
                if not self._fill():
                    raise IncompleteResponseError(
                        f"EOF before the response head ({len(self._buf)} bytes)", None, False
                    )
        except ConnectionResetError as e:
            raise IncompleteResponseError("RST before the response head", None, True) from e
        raw_head = bytes(self._buf[: end + 4])
        del self._buf[: end + 4]
        col = _ResponseCollector(keep_body)
        parser = httptools.HttpResponseParser(col)
        with contextlib.suppress(httptools.HttpParserUpgrade):
            parser.feed_data(raw_head)
        status = parser.get_status_code()
        resp = RawResponse(
            status=status,
            reason=col.reason.decode("latin-1"),
            version=parser.get_http_version(),
            headers=col.headers,
            raw_head=raw_head,
            keep_alive=parser.should_keep_alive(),
        )
        te = ",".join(v for k, v in col.headers if k.lower() == "transfer-encoding")
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        has_length = any(k.lower() == "content-length" for k, _ in col.headers)
        if (
            100 <= status < 200
            or status in (204, 304)
            or no_body
            or (connect and 200 <= status < 300)
        ):
            resp.framing = "none"
            resp.body = b"" if keep_body else None
            resp.body_sha256 = hashlib.sha256().hexdigest()
            return resp
        try:
            if codings and codings[-1] == "chunked":
                resp.framing = "chunked"
                self._read_chunked(parser)
            elif has_length and not codings:
                resp.framing = "content-length"
                remaining = int(resp.header("content-length") or 0)
                while remaining:
                    piece = self._take(min(remaining, 1 << 20))
                    parser.feed_data(piece)
                    remaining -= len(piece)
            else:
                resp.framing = "close"
                while True:
                    if self._buf:
                        piece = bytes(self._buf)
                        self._buf.clear()
                        parser.feed_data(piece)
                    if not self._fill():
                        break
                col.complete = True
        except (EOFError, ConnectionResetError) as e:
            self._finish(resp, col, complete=False)
            reset = isinstance(e, ConnectionResetError)
            raise IncompleteResponseError(
                f"{'RST' if reset else 'EOF'} after {col.length} body bytes ({resp.framing})",
                resp,
                reset,
            ) from e
        self._finish(resp, col, complete=col.complete)
        if not col.complete:
            raise AssertionError("httptools did not see the end of the message")
        return resp

    @staticmethod
    def _finish(resp: RawResponse, col: _ResponseCollector, *, complete: bool) -> None:
        resp.trailers = col.trailers
        resp.body = b"".join(col.parts) if col.keep_body else None
        resp.body_length = col.length
        resp.body_sha256 = col.hasher.hexdigest()
        resp.complete = complete

    def _take(self, n: int) -> bytes:
        """Up to n (>0) buffered bytes, reading if the buffer is empty; EOFError on EOF."""
        if not self._buf and not self._fill():
            raise EOFError
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_line(self, limit: int = 65536) -> bytes:
        while (i := self._buf.find(b"\n")) < 0:
            if len(self._buf) > limit:
                raise ValueError("line too long in chunked body")
            if not self._fill():
                raise EOFError
        line = bytes(self._buf[: i + 1])
        del self._buf[: i + 1]
        return line

    def _read_chunked(self, parser: httptools.HttpResponseParser) -> None:
        while True:
            line = self._read_line()
            parser.feed_data(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailer section, up to the empty line
                    line = self._read_line()
                    parser.feed_data(line)
                    if line in (b"\r\n", b"\n"):
                        return
            remaining = size + 2  # data + CRLF
            while remaining:
                piece = self._take(min(remaining, 1 << 20))
                parser.feed_data(piece)
                remaining -= len(piece)
