"""Whole-body buffering for filters that must see a complete body (transformation templates).

Envoy buffers a body for a filter that stops iteration until the end of the stream, up to
the connection's buffer limit (``per_connection_buffer_limit_bytes``, 1 MiB by default);
past it the request gets a 413 ``Payload Too Large`` and the response a 500 (HCM
``request_payload_too_large`` / ``response_payload_too_large``).

The Stream holds at most one collector per direction (``req_collect`` / ``resp_collect``)
and hands it every piece of body while it is set; the collector calls the filter back once
the body is complete. A stream without a collector pays one ``is not None`` test per body
piece.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dfproxy.flow_control import BODY_BUFFER

if TYPE_CHECKING:
    from dfproxy.stream import Stream

# Envoy's default per_connection_buffer_limit_bytes.
BODY_LIMIT = 1024 * 1024

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestBodyBuffer:
    """Collects a request body that is still arriving; ``done(body)`` once it is complete,
    ``done(None)`` when it outgrows ``limit`` (the filter answers 413)."""

    __slots__ = ("parts", "size", "limit", "done")

    def __init__(self, parts: list[bytes], limit: int, done: Callable[[bytes | None], None]):
        self.parts = parts
        self.size = sum(len(p) for p in parts)
        self.limit = limit
        self.done = done

    def data(self, stream: Stream, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            stream.req_collect = None
            self.parts = []
            self.done(None)
            return
        self.parts.append(data)

    def complete(self, stream: Stream) -> None:
        stream.req_collect = None
        self.done(b"".join(self.parts))


class ResponseBodyBuffer:
    """Collects a response body while the stream holds the response head; ``done(body)``
    returns the body to send (it may change ``stream.resp_status`` / ``resp_headers``)."""

    __slots__ = ("parts", "size", "limit", "done")

    def __init__(self, limit: int, done: Callable[[Stream, bytes], bytes]) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done = done

    def data(self, stream: Stream, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            stream.resp_collect = None
            stream.details = "response_payload_too_large"
            stream.send_local_reply(500, b"Internal Server Error")
            return
        self.parts.append(data)

    def complete(self, stream: Stream) -> None:
        body = self.done(stream, b"".join(self.parts))
        stream.send_collected(body)


def _decode_buffered(parts: list[bytes], chunked: bool) -> list[bytes]:
    """The body pieces the stream buffered before a collector was set. The stream encodes
    each piece of a chunked request as one chunk (``encode_chunk``), and the end as the last
    chunk, so each part is decoded on its own."""
    if not chunked:
        return parts
    out = []
    for part in parts:
        eol = part.find(b"\r\n")
        size = int(part[:eol], 16) if eol > 0 else 0
        if size:
            out.append(part[eol + 2 : eol + 2 + size])
    return out


def collect_request_body(
    stream: Stream, limit: int, done: Callable[[bytes | None], None]
) -> bytes | None:
    """Start collecting the request body for a request filter (before it returns STOP).

    Returns the whole body at once when it has already arrived (the filter continues
    synchronously); otherwise None, and ``done`` is called later as RequestBodyBuffer says.
    Whatever the stream buffered so far moves into the collector; reading resumes (the
    collector's own limit replaces the stream's high-water mark)."""
    parts = _decode_buffered(stream.body_buf or [], stream.req.chunked)
    stream.body_buf = None
    stream.body_buf_size = 0
    stream.conn.flow.resume(BODY_BUFFER)
    if stream.request_done:
        return b"".join(parts)
    if stream.req.expect_continue and not stream.sent_continue:
        # Envoy answers 100-continue itself; the client would otherwise wait before sending.
        stream.sent_continue = True
        stream.conn.write(CONTINUE_100)
    stream.req_collect = RequestBodyBuffer(parts, limit, done)
    return None


def set_request_body(stream: Stream, body: bytes) -> None:
    """The complete request body to forward, framed by a new Content-Length."""
    req = stream.req
    forward = [(n, v) for n, v in req.forward if n.lower() != b"content-length"]
    forward.append((b"content-length", b"%d" % len(body)))
    stream.req = req._replace(forward=forward, content_length=len(body), chunked=False)
    stream.body_buf = [body] if body else None
    stream.body_buf_size = len(body)


def collect_response_body(
    stream: Stream, limit: int, done: Callable[[Stream, bytes], bytes]
) -> None:
    """From on_response_headers: hold the head and collect the body (see ResponseBodyBuffer)."""
    stream.resp_collect = ResponseBodyBuffer(limit, done)
