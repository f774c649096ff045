"""The downstream connection: HTTP/1.x server codec (httptools/llhttp) and its streams.

Connection states:
    HTTP     the parser reads requests; each complete head becomes a Stream. Streams are
             answered strictly in order (pipelining, RFC 9112 §9.3.2): only ``streams[0]``
             runs; later ones wait QUEUED with reading paused.
    PROXY_HEADER  (useProxyProto) the load balancer's PROXY v1/v2 header comes first; its
             source address replaces the socket's peer, then HTTP begins.
    STOPPED  the parser handed over at CONNECT or Upgrade (llhttp stops there); bytes after
             the head are held until the stream decides: a tunnel takes them, otherwise a
             fresh parser reads them as the next request.
    TUNNEL   raw bytes to and from the stream's upstream, with half-close.
    CLOSED   transport gone; every stream has been told.
Every read pause has a named reason (flow_control); writes go straight to the transport and
its high-water mark pauses the upstream side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, ClassVar, Final, cast

import httptools

from dfproxy.access_log import LogEntry
from dfproxy.flow_control import (
    BODY_BUFFER,
    HIGH_WATER,
    PEER_BACKPRESSURE,
    PIPELINE_QUEUE,
    FlowControl,
    set_nodelay,
)
from dfproxy.http import proxy_protocol
from dfproxy.http import response_flags as rf
from dfproxy.http.authority import (
    Authority,
    AuthorityError,
    parse_authority,
    parse_authority_cached,
    split_host_port,
)
from dfproxy.http.headers import HeaderError, classify_request
from dfproxy.http.local_reply import local_reply
from dfproxy.stream import QUEUED, RESPONDING, Stream

if TYPE_CHECKING:
    from dfproxy.listener import Listener
    from dfproxy.upstream.connection import UpstreamConnection

log = logging.getLogger("dfproxy.downstream")

HTTP: Final = "http"
STOPPED: Final = "stopped"
TUNNEL: Final = "tunnel"
CLOSED: Final = "closed"
PROXY_HEADER: Final = "proxy-header"  # useProxyProto: waiting for the PROXY protocol header


# Envoy's defaults: max_request_headers_kb 60, max_headers_count 100. A client cannot make the
# proxy buffer an endless head; past either limit the answer is 431 and the connection closes.
MAX_HEAD_BYTES: Final = 60 * 1024
MAX_HEADERS: Final = 100
# Requests parsed ahead of their turn (pipelining); more is abuse, not a client's need.
MAX_PIPELINED: Final = 64


class BadRequestError(Exception):
    """The request cannot be served; the message is the response body."""

    status: ClassVar[int] = 400


class HeadTooLarge(BadRequestError):
    status: ClassVar[int] = 431


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "loop",
        "listener",
        "transport",
        "parser",
        "flow",
        "streams",
        "parsing",
        "state",
        "held",
        "held_size",
        "tunnel",
        "draining",
        "access_log",
        "peer",
        "local_ip",
        "_url",
        "_headers",
        "_trailers",
        "_head_done",
        "_head_size",
        "head_started",
        "write_paused",
        "idle_since",
        "_corked",
        "st_tunnels",
    )

    def __init__(self, listener: Listener) -> None:
        self.loop = listener.loop
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.streams: deque[Stream] = deque()
        self.parsing: Stream | None = None
        self.state = PROXY_HEADER if listener.use_proxy_protocol else HTTP
        self.held: list[bytes] = []
        self.held_size = 0
        self.tunnel: Stream | None = None
        self.draining = listener.draining
        self.access_log = listener.access_log
        self.peer = ""
        self.local_ip = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._head_done = False
        self._head_size = 0
        self.head_started = 0.0  # coarse time the current request head began (0: none)
        self.write_paused = False  # the client's write buffer is over its high-water mark
        self.idle_since = listener.now
        self._corked: list[bytes] | None = None
        self.st_tunnels = listener.st_tunnels

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self.transport = t = cast(asyncio.Transport, transport)
        self.flow = FlowControl(t)
        set_nodelay(t)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        sock = transport.get_extra_info("sockname")
        self.local_ip = sock[0] if sock else ""
        limiter = self.listener.conn_limit
        if limiter is not None and not limiter.admit(self, len(self.listener.connections)):
            # connectionLimit: refused before anything is read (ratelimit.connection_limit).
            self.state = CLOSED
            t.pause_reading()
            delay = limiter.delay_before_close
            if delay:
                self.loop.call_later(delay, t.abort)
            else:
                t.abort()
            return
        self.listener.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state == HTTP:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self._stop_parser(data[exc.args[0] :])
            except httptools.HttpParserError as exc:
                # A callback's own exception arrives wrapped, as the error's __context__.
                cause = exc.__context__
                if isinstance(cause, BadRequestError):
                    self._bad_request(str(cause), cause.status)
                elif isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
                    log.error("internal error serving %s", self.peer, exc_info=cause)
                    self._fail(500, b"internal error")
                else:
                    self._bad_request(_parser_message(exc))
        elif self.state == TUNNEL:
            assert self.tunnel is not None
            self.tunnel.tunnel_downstream_data(data)
        elif self.state == STOPPED:
            self.held.append(data)
            self.held_size += len(data)
            if self.held_size > HIGH_WATER:
                self.flow.pause(BODY_BUFFER)
        elif self.state == PROXY_HEADER:
            self._proxy_header(data)

    def _proxy_header(self, data: bytes) -> None:
        self.held.append(data)
        buf = b"".join(self.held)
        try:
            header = proxy_protocol.parse(buf)
        except proxy_protocol.ProxyProtocolError as exc:
            # Envoy closes such connections without an HTTP answer: the peer is not a client.
            log.info("closing %s: %s", self.peer, exc)
            self.state = CLOSED
            if self.transport is not None:
                self.transport.abort()
            return
        if header is None:
            self.held = [buf]
            return
        self.held = []
        if header.source is not None:
            host, port = header.source
            self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.state = HTTP
        rest = buf[header.length :]
        if rest:
            self.data_received(rest)

    def eof_received(self) -> bool | None:
        if self.state == TUNNEL and self.tunnel is not None:
            self.tunnel.tunnel_downstream_eof()
            return True  # keep writing to the client: half-close
        # An HTTP/1 client's FIN ends the connection, in-flight exchanges included (Envoy
        # does the same without allow-half-close); a response would otherwise wait on a
        # peer that may never read again.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        streams, self.streams = self.streams, deque()
        for stream in streams:
            stream.downstream_closed()
        if self.tunnel is not None:
            self.tunnel.downstream_closed()
            self.tunnel = None
        self.listener.connection_closed(self)

    def pause_writing(self) -> None:
        # Remembered: an upstream attached later (next stream, tunnel) is paused at attach.
        self.write_paused = True
        up = self._active_upstream()
        if up is not None and up.flow is not None:
            up.flow.pause(PEER_BACKPRESSURE)

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self._active_upstream()
        if up is not None and up.flow is not None:
            up.flow.resume(PEER_BACKPRESSURE)

    def _active_upstream(self) -> UpstreamConnection | None:
        if self.tunnel is not None:
            return self.tunnel.upstream
        if self.streams:
            return self.streams[0].upstream
        return None

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._trailers = None
        self._head_done = False
        self._head_size = 0
        self.head_started = self.listener.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD_BYTES:
            raise HeadTooLarge("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            raise HeadTooLarge("request headers too large")
        if self._head_done:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))
            if len(self._headers) > MAX_HEADERS:
                raise HeadTooLarge("too many request headers")

    def on_headers_complete(self) -> None:
        self._head_done = True
        self.head_started = 0.0
        parser = self.parser
        method = parser.get_method()
        version_11 = parser.get_http_version() == "1.1"
        try:
            req = classify_request(self._headers)
        except HeaderError as exc:
            raise BadRequestError(str(exc)) from None
        url = self._url
        authority = None
        is_connect = method == b"CONNECT"
        https_target = False
        try:
            if is_connect:
                # RFC 9110 §9.3.6: authority-form, and the port is required.
                if req.chunked or req.content_length:
                    raise BadRequestError("CONNECT request with a body")
                host, port = split_host_port(url.decode("latin-1"))
                if port is None:
                    raise BadRequestError("CONNECT target must be host:port")
                authority = parse_authority(url.decode("latin-1"), port)
                host_header = url
                path = b""
                https_target = url[:6].lower() == b"https:"
            elif url[:1] == b"/" or url == b"*":
                path = url
                host_header = req.host or b""
                if host_header:
                    authority = parse_authority_cached(host_header, self.listener.default_port)
            else:
                path, host_header, authority, https_target = self._absolute_form(url)
        except AuthorityError as err:  # not `exc`: mypyc types a name by its first binding
            raise BadRequestError(f"invalid host: {err}") from None
        except UnicodeDecodeError:
            raise BadRequestError("invalid host") from None
        stream = Stream(
            self,
            method,
            url,
            path,
            version_11,
            parser.should_keep_alive(),
            req,
            authority,
            host_header,
            is_connect,
        )
        if https_target:
            stream.https_target = True
        if len(self.streams) >= MAX_PIPELINED:
            raise BadRequestError("too many pipelined requests")
        self.parsing = stream
        self.streams.append(stream)
        if len(self.streams) == 1:
            stream.begin()
        else:
            self.flow.pause(PIPELINE_QUEUE)

    def _absolute_form(self, url: bytes) -> tuple[bytes, bytes, Authority | None, bool]:
        """RFC 9112 §3.2.2: absolute-form; the target's authority replaces any Host header.
        Returns (path, host header, authority, whether the scheme is https)."""
        # Offsets into the target instead of slices of slices: -21 % instructions here,
        # memoised authority lookup included (callgrind).
        if url[:7] == b"http://":  # the usual spelling, checked without a lower()
            start = 7
            https = False
        else:
            sep = url.find(b"://")
            if sep < 0:
                raise BadRequestError("invalid request target")
            scheme = url[:sep].lower()
            if scheme not in (b"http", b"https"):
                raise BadRequestError("unsupported scheme in request target")
            start = sep + 3
            https = scheme == b"https"
        end = url.find(b"/", start)
        if end < 0:
            end = len(url)
        query = url.find(b"?", start, end)
        if query >= 0:
            end = query
        host_header = url[start:end]
        # find(), not `in`: bytes `in` first tries b"@" as an int and formats the TypeError
        # it then swallows (CPython 3.11; -1,060 instructions, callgrind).
        if host_header.find(b"@") >= 0:
            raise BadRequestError("userinfo in request target")
        path = url[end:] or b"/"
        if query >= 0:
            path = b"/" + path
        port = 443 if https else 80
        authority = parse_authority_cached(host_header, port) if host_header else None
        return path, host_header, authority, https

    def on_body(self, body: bytes) -> None:
        stream = self.parsing
        if stream is not None:
            stream.request_body(body)

    def on_message_complete(self) -> None:
        stream = self.parsing
        if stream is not None:
            stream.request_complete(self._trailers)

    # -- parser hand-over (CONNECT / Upgrade) ---------------------------------------------------

    def _stop_parser(self, rest: bytes) -> None:
        if self.state == CLOSED:
            return
        self.state = STOPPED
        if rest:
            self.held.append(rest)
            self.held_size += len(rest)

    def take_tunnel_bytes(self) -> bytes:
        """Bytes the client sent after the CONNECT/Upgrade head (they belong to the tunnel)."""
        data = b"".join(self.held)
        self.held = []
        self.held_size = 0
        self.flow.resume(BODY_BUFFER)
        return data

    def enter_tunnel(self, stream: Stream) -> None:
        self.state = TUNNEL
        self.tunnel = stream
        if self.streams and self.streams[0] is stream:
            self.streams.popleft()
        self.flow.resume(PIPELINE_QUEUE | BODY_BUFFER)

    def _restart_parser(self) -> None:
        """The upgrade was not taken: read what follows as ordinary requests."""
        self.state = HTTP
        self.parser = httptools.HttpRequestParser(self)
        held = self.take_tunnel_bytes()
        if held:
            self.data_received(held)

    # -- used by streams -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        corked = self._corked
        if corked is not None:
            corked.append(data)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def cork(self) -> None:
        """Collect writes until uncork(): a response head and its body leave in one send
        (one syscall less per small response; measured with make bench)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked = self._corked
        if corked is not None:
            self._corked = None
            if corked:
                self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def write_eof(self) -> None:
        self.uncork()
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close_after_flush(self) -> None:
        self.uncork()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def count_response(self, status: int) -> None:
        self.listener.count_response(status)

    def stream_finished(self, stream: Stream, was_tunnel: bool) -> None:
        """``stream`` is DONE: close, or start the next pipelined request."""
        if was_tunnel:
            self.tunnel = None
            self.close_after_flush()
            return
        if self.streams and self.streams[0] is stream:
            self.streams.popleft()
        if self.parsing is stream and stream.request_done:
            self.parsing = None
        if stream.resp_close or self.state == CLOSED:
            self.close_after_flush()
            return
        if self.state == STOPPED:
            self._restart_parser()
            return
        if self.streams:
            nxt = self.streams[0]
            if len(self.streams) == 1:
                self.flow.resume(PIPELINE_QUEUE)
            if nxt.state == QUEUED:
                nxt.begin()
        elif self.draining:
            self.close_after_flush()
        else:
            self.idle_since = self.listener.now

    def check_idle(self, now: float, idle_timeout: float, headers_timeout: float) -> None:
        """From the listener's sweep, for a connection with no exchange in flight."""
        if self.state != HTTP:
            return
        if self.head_started:
            if headers_timeout and now - self.head_started > headers_timeout:
                self._bad_request("request header timeout", 408)
        elif idle_timeout and now - self.idle_since > idle_timeout:
            self.close_after_flush()  # Envoy closes idle HTTP/1 connections without a word

    def start_draining(self) -> None:
        """Server shutdown: finish what is in flight, then close."""
        self.draining = True
        if not self.streams and self.tunnel is None:
            self.close_after_flush()

    def _bad_request(self, message: str, status: int = 400) -> None:
        log.info("bad request from %s: %s", self.peer, message)
        body = message.encode("utf-8", "replace")
        self.listener.count_response(status)
        if self.access_log is not None:
            self.access_log.log(
                LogEntry(
                    start_time=time.time(),
                    method="-",
                    path="",
                    protocol="HTTP/1.1",
                    status=status,
                    flags=rf.DOWNSTREAM_PROTOCOL_ERROR,
                    bytes_received=0,
                    bytes_sent=0,
                    duration_ms=0,
                    forwarded_for=None,
                    user_agent=None,
                    request_id=None,
                    authority=None,
                    upstream_host=None,
                    details=message,
                )
            )
        self._fail(status, body)

    def _fail(self, status: int, body: bytes) -> None:
        """Answer ``status`` and close: the byte stream can no longer be trusted."""
        # Streams already answered stay answered; anything in flight is abandoned. The error
        # goes out first (abandoning a stream closes the connection), and only when no
        # response has started on this connection: it would land inside another response.
        streams, self.streams = self.streams, deque()
        self.state = CLOSED
        if not streams or streams[0].state < RESPONDING:
            self.write(local_reply(status, body, close=True))
        self.close_after_flush()
        for stream in streams:
            stream.downstream_closed()


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"malformed request: {text}"
