"""Responses the proxy makes itself, worded and framed as Envoy's local replies are."""

from __future__ import annotations

import time
from email.utils import formatdate

from dfproxy.http.status import status_line

SERVER = b"dfproxy"

_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """The current IMF-fixdate, recomputed at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode()
    return _date_value


def local_reply(
    status: int,
    body: bytes = b"",
    *,
    close: bool = False,
    head: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain",
) -> bytes:
    """A complete ``text/plain`` response with Content-Length (Envoy ``prepareLocalReply``).

    ``head`` drops the body bytes but keeps the length; ``close`` adds ``connection: close``.
    """
    lines = [
        status_line(status),
        b"content-length: %d\r\n" % len(body),
    ]
    if body:
        lines.append(b"content-type: " + content_type + b"\r\n")
    lines.append(b"date: " + http_date() + b"\r\n")
    lines.append(b"server: " + SERVER + b"\r\n")
    if extra_headers:
        lines.extend(b"%s: %s\r\n" % (n, v) for n, v in extra_headers)
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if body and not head:
        lines.append(body)
    return b"".join(lines)


def connect_established() -> bytes:
    """The 200 for a terminated CONNECT: no Content-Length, no chunking (RFC 9110 §9.3.6)."""
    return b"HTTP/1.1 200 OK\r\ndate: " + http_date() + b"\r\nserver: " + SERVER + b"\r\n\r\n"
