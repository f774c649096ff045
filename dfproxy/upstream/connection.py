"""One connection to an origin: the HTTP/1.1 client side of the codec, and the tunnel end.

States (the only transitions):
    CONNECTED --request attached--> ACTIVE --response complete & reusable--> IDLE --> ACTIVE ...
    ACTIVE --101 / CONNECT established--> TUNNEL
    any --error, close, not reusable--> CLOSED
Invariant: at most one stream is attached, only in ACTIVE; an IDLE connection is in its
pool's idle list; a CLOSED connection is never handed out again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

from dfproxy.flow_control import HIGH_WATER, PEER_BACKPRESSURE, FlowControl, set_nodelay

if TYPE_CHECKING:
    from dfproxy.dns.cache import DnsHostInfo
    from dfproxy.upstream.pool import UpstreamPool


log = logging.getLogger("dfproxy.upstream")

# Bytes an origin may send before its stream attaches (server-first protocols) before we stop
# reading from it.
EARLY_LIMIT: Final = HIGH_WATER

# Envoy applies the same header-count limit to responses; llhttp bounds nothing itself.
MAX_RESPONSE_HEADERS: Final = 100

# After a read at least this large in the middle of a body framed by Content-Length alone,
# the rest of that body is relayed without llhttp: llhttp hands every body piece over as a
# fresh copy, and for bulk GET those copies (memcpy, plus brk for the big buffers) were most
# of the proxy's CPU (py-spy --native). Small responses stay with the parser.
RAW_BODY_MIN: Final = 16 * 1024

CONNECTED: Final = "connected"
ACTIVE: Final = "active"
IDLE: Final = "idle"
TUNNEL: Final = "tunnel"
CLOSED: Final = "closed"


class Corkable(Protocol):
    def cork(self) -> None: ...
    def uncork(self) -> None: ...


class ResponseSink(Protocol):
    """What an upstream connection reports to the stream it serves."""

    @property
    def conn(self) -> Corkable: ...

    def upstream_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None: ...
    def upstream_response_body(self, data: bytes) -> None: ...
    def upstream_response_complete(self, trailers: list[tuple[bytes, bytes]] | None) -> None: ...
    def upstream_upgraded(self, rest: bytes) -> None: ...
    def upstream_reset(self, reason: str) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """HTTP/1.1 to one origin address, reused across requests through the pool."""

    __slots__ = (
        "pool",
        "host",
        "key",
        "address",
        "transport",
        "state",
        "sink",
        "parser",
        "headers",
        "trailers",
        "status",
        "interim",
        "head_done",
        "head_request",
        "close_after",
        "idle_since",
        "flow",
        "request_done",
        "early",
        "early_size",
        "counted",
        "tls_name",
        "body_seen",
        "raw_left",
    )

    def __init__(self, pool: UpstreamPool, host: DnsHostInfo, tls_name: str = "") -> None:
        self.pool = pool
        self.host = host
        self.tls_name = tls_name  # SNI/SAN name of a TLS connection ("" for plain TCP)
        # The address actually connected to (set in connection_made): idle plaintext
        # connections are shared per peer address, never per name (see UpstreamPool).
        self.key: tuple[str, int, str] = ("", 0, tls_name)
        self.address = ""
        self.transport: asyncio.Transport | None = None
        self.state = CONNECTED
        self.sink: ResponseSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.status = 0
        self.interim = False
        self.head_done = False
        self.head_request = False
        self.close_after = False
        self.idle_since = 0.0
        self.flow: FlowControl | None = None
        self.request_done = False
        self.early: list[bytes] | None = None  # bytes that came before a stream attached
        self.early_size = 0
        self.counted = False  # holds a slot of the connection circuit breaker
        self.body_seen = 0  # body bytes llhttp delivered for the current response
        self.raw_left = 0  # > 0: body bytes still to relay without the parser

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self.transport = t = cast(asyncio.Transport, transport)
        self.flow = FlowControl(t)
        set_nodelay(t)
        peer = transport.get_extra_info("peername")
        if peer:
            host = peer[0]
            self.key = (host, peer[1], self.tls_name)
            self.address = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        if self.state == TUNNEL:
            assert self.sink is not None
            self.sink.tunnel_data(data)
            return
        if self.sink is None:
            if self.state == CONNECTED:
                # A server-first protocol (SMTP, SSH) may greet before the stream that asked
                # for this connection has attached: keep the bytes for it.
                if self.early is None:
                    self.early = []
                self.early.append(data)
                self.early_size += len(data)
                if self.flow is not None and self.early_size > EARLY_LIMIT:
                    self.flow.pause(PEER_BACKPRESSURE)
                return
            # Bytes while idle: the origin is misbehaving; the connection is unusable.
            self.close()
            return
        if self.raw_left:
            self._raw_body(data)
            return
        down = self.sink.conn
        down.cork()
        try:
            self.parser.feed_data(data)
            if len(data) >= RAW_BODY_MIN and self.head_done and self.sink is not None:
                self._maybe_raw_body()  # a big read, and a body still under way
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            # A callback's own exception arrives wrapped; ValueError is a limit (told below).
            internal = isinstance(exc, httptools.HttpParserCallbackError) and cause is not None
            if internal and not isinstance(cause, ValueError):
                log.error("internal error reading from %s", self.address, exc_info=cause)
            sink = self.sink
            self.close()
            if sink is not None:
                sink.upstream_reset(f"protocol error: {exc}")
        finally:
            down.uncork()

    def eof_received(self) -> bool | None:
        if self.state == TUNNEL and self.sink is not None:
            self.sink.tunnel_eof()
            return True  # keep our write side open: half-close (RFC 9293 §3.6)
        if (
            self.state == ACTIVE
            and self.head_done
            and self.sink is not None
            and not self.interim
            and not self._has_length()
        ):
            # A response delimited by close (RFC 9112 §6.3 rule 8) ends here.
            self.close_after = True
            self.on_message_complete()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        prior = self.state
        self.state = CLOSED
        self.pool.on_closed(self)
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if prior == TUNNEL:
            sink.tunnel_eof()
            sink.upstream_reset("tunnel closed")
        elif prior == ACTIVE:
            sink.upstream_reset("connection termination")

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.sink is None and self.state != CONNECTED:
            # A second message in the read that completed the first: not ours to relay, and
            # the connection is now mid-message, so it must not be pooled (Envoy resets it).
            self.close()
        self.headers = []
        self.trailers = None
        self.head_done = False
        self.body_seen = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            if len(self.headers) + (len(self.trailers) if self.trailers else 0) >= (
                MAX_RESPONSE_HEADERS
            ):
                raise ValueError("too many response header and trailer fields")
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
        else:
            # Checked after the append (the same limit): one len() per header, not three.
            headers = self.headers
            headers.append((name, value))
            if len(headers) > MAX_RESPONSE_HEADERS:
                raise ValueError("too many response header and trailer fields")

    def on_headers_complete(self) -> None:
        self.head_done = True
        status = self.parser.get_status_code()
        if status < 100:
            # llhttp takes any three digits; "HTTP/1.1 0" would go downstream (Envoy resets).
            raise ValueError(f"invalid response status {status}")
        self.status = status
        if 100 <= status < 200 and status != 101:
            # Interim responses are not forwarded (Envoy answers 100-continue itself).
            self.interim = True
            return
        self.interim = False
        if not self.parser.should_keep_alive():
            self.close_after = True
        sink = self.sink
        if sink is None:
            return
        sink.upstream_response_head(status, b"", self.headers)
        if self.head_request or status == 204 or status == 304:
            # RFC 9112 §6.3: no body, whatever the framing headers say. httptools cannot be
            # told the request was HEAD, so the message ends here and the parser is renewed.
            self.parser = httptools.HttpResponseParser(self)
            self._complete(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.interim:
            self.body_seen += len(body)
            self.sink.upstream_response_body(body)

    def _maybe_raw_body(self) -> None:
        """Relay the rest of a Content-Length body around llhttp; a fresh parser reads
        whatever follows it."""
        left = self._content_length() - self.body_seen
        if left > 0 and not self.interim:
            self.raw_left = left
            self.parser = httptools.HttpResponseParser(self)

    def _content_length(self) -> int:
        """The body's length when Content-Length alone frames it (one plain value, no
        Transfer-Encoding), else 0: llhttp keeps the body."""
        length = 0
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"transfer-encoding":
                return 0
            if lname == b"content-length":
                if length or not value.isdigit():
                    return 0
                length = int(value)
        return length

    def _raw_body(self, data: bytes) -> None:
        """Relay body bytes the parser no longer sees; bytes past the end go to the fresh
        parser (an origin that sends more than it announced loses the connection, as it
        does when llhttp finds them)."""
        sink = self.sink
        assert sink is not None
        left = self.raw_left
        rest = b""
        down = sink.conn
        down.cork()
        try:
            if len(data) <= left:
                self.raw_left = left - len(data)
                sink.upstream_response_body(data)
            else:
                self.raw_left = 0
                sink.upstream_response_body(data[:left])
                rest = data[left:]
            if not self.raw_left:
                self._complete(None)
        finally:
            down.uncork()
        if rest:
            self.data_received(rest)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.status == 101:
            return  # llhttp ends the 101 "message", then raises HttpParserUpgrade: tunnel next
        if self.sink is not None and self.head_done:
            self._complete(self.trailers)

    def _complete(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        sink, self.sink = self.sink, None
        self.head_done = False
        self.headers = []
        if sink is None:
            return
        self.pool.release(self)
        sink.upstream_response_complete(trailers)

    def _has_length(self) -> bool:
        for name, _ in self.headers:
            lname = name.lower()
            if lname == b"content-length" or lname == b"transfer-encoding":
                return True
        return False

    def _on_upgrade(self, rest: bytes) -> None:
        if self.status != 101 or self.sink is None:
            self.close()
            return
        self.state = TUNNEL
        self.sink.upstream_upgraded(rest)

    # -- used by the stream ----------------------------------------------------------------------

    def attach(self, sink: ResponseSink, head_request: bool) -> bool:
        """Serve one request: responses now go to ``sink``. False (and the connection is
        closed) when the origin sent bytes before any request: HTTP has no server-first
        messages, so whatever came is a premature response and the connection is unusable."""
        if self.early:
            self.early = None
            self.early_size = 0
            self.close()
            return False
        self.state = ACTIVE
        self.sink = sink
        self.head_request = head_request
        self.request_done = False
        return True

    def detach(self) -> None:
        """The stream gave up on this connection mid-exchange: it cannot be reused."""
        self.sink = None
        self.close()

    def start_tunnel(self, sink: ResponseSink) -> None:
        """Raw bytes from now on (CONNECT terminated by us)."""
        self.state = TUNNEL
        self.sink = sink
        self._deliver_early()

    def _deliver_early(self) -> None:
        early, self.early = self.early, None
        self.early_size = 0
        if early:
            if self.flow is not None:
                self.flow.resume(PEER_BACKPRESSURE)
            self.data_received(b"".join(early))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()

    def close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()

    def mark_idle(self) -> None:
        self.state = IDLE
        self.idle_since = self.pool.now  # coarse: the pool's sweep keeps it (idle timeout 1 h)

    def reusable(self) -> bool:
        # A method: CPython 3.11 does not specialise property reads (+60 ns each).
        t = self.transport
        return (
            not self.close_after
            and self.request_done
            and t is not None
            and not t.is_closing()
            and (self.state == ACTIVE or self.state == IDLE)
        )
