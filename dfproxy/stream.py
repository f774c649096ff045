"""One request/response exchange on a downstream connection, from route to upstream and back.

States (set in one place each; ``state`` names where the exchange is):
    QUEUED      parsed, waiting behind a pipelined request on the same connection
    FILTERING   request filters running (the DFP filter may pause it on a DNS miss)
    CONNECTING  waiting for an upstream connection
    FORWARDING  request head sent upstream; waiting for the response head
    RESPONDING  response head sent downstream; body streaming
    TUNNEL      CONNECT or upgrade: raw bytes both ways
    DONE        finished (logged, counted); nothing touches it afterwards
Rules: only the connection's head-of-line stream leaves QUEUED; every path to DONE goes
through ``_finish`` exactly once; a local reply is only possible before RESPONDING.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from time import monotonic  # a global, not a module attribute read per call (mypyc)
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import parse_qsl

from dfproxy import filters as F
from dfproxy.access_log import LogEntry
from dfproxy.flow_control import BODY_BUFFER, HIGH_WATER, PEER_BACKPRESSURE
from dfproxy.http import errors
from dfproxy.http import response_flags as rf
from dfproxy.http.authority import Authority
from dfproxy.http.headers import (
    Headers,
    RequestHeaders,
    classify_response,
    encode_chunk,
    last_chunk,
    manipulate,
    request_head,
    serialize,
)
from dfproxy.http.local_reply import connect_established, http_date, local_reply
from dfproxy.http.status import STATUS_LINES, status_line
from dfproxy.router import rewrite_prefix

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.dns.cache import DnsHostInfo
    from dfproxy.downstream import HttpConnection
    from dfproxy.filters.body_buffer import RequestBodyBuffer, ResponseBodyBuffer
    from dfproxy.router import Matcher, Route
    from dfproxy.upstream.connection import UpstreamConnection
    from dfproxy.upstream.pool import UpstreamPool

log = logging.getLogger("dfproxy.stream")

# Final: mypyc compiles them to constants (a tuple unpack would be a globals lookup per use).
QUEUED: Final = 0
FILTERING: Final = 1
CONNECTING: Final = 2
FORWARDING: Final = 3
RESPONDING: Final = 4
TUNNEL: Final = 5
DONE: Final = 6

# A request body longer than this is streamed without a copy and is not retried (issue #5:
# "a request whose body was already streamed past the replay buffer is not retried").
REPLAY_LIMIT: Final = 64 * 1024
# After a local reply, up to this much of the request body is still read and dropped so the
# connection survives; more than that, or an unknown length, and the connection closes.
DISCARD_LIMIT: Final = 1024 * 1024

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED: Final = b"transfer-encoding: chunked\r\n"
CLOSE: Final = b"connection: close\r\n"
KEEP_ALIVE: Final = b"connection: keep-alive\r\n"


class Stream:
    """A request and its response; see the module docstring for the state machine."""

    __slots__ = (
        "conn",
        "method",
        "target",
        "path",
        "version_11",
        "keep_alive",
        "req",
        "authority",
        "host_header",
        "is_connect",
        "upgrade",
        "route",
        "matcher",
        "filter_index",
        "state",
        "host",
        "dns_wait",
        "upstream",
        "body_buf",
        "body_buf_size",
        "request_done",
        "request_trailers",
        "resp_status",
        "resp_headers",
        "resp_chunked",
        "resp_no_body",
        "resp_close",
        "start",
        "deadline",
        "active_at",
        "bytes_in",
        "bytes_out",
        "flags",
        "details",
        "filter_state",
        "upstream_address",
        "sent_continue",
        "https_target",
        "pool",
        "attempt",
        "replay",
        "retry_timer",
        "try_deadline",
        "retry_slot",
        "replay_size",
        "sent_at",
        "tunnel_eofs",
        "req_collect",
        "resp_collect",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: bytes,
        target: bytes,
        path: bytes,
        version_11: bool,
        keep_alive: bool,
        req: RequestHeaders,
        authority: Authority | None,
        host_header: bytes,
        is_connect: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.path = path
        self.version_11 = version_11
        self.keep_alive = keep_alive
        self.req = req
        self.authority = authority
        self.host_header = host_header
        self.is_connect = is_connect
        self.upgrade: bytes | None = req.upgrade
        self.route: Route | None = None
        self.matcher: Matcher | None = None  # the route's matcher that matched
        self.filter_index = 0
        self.state = QUEUED
        self.host: DnsHostInfo | None = None
        self.dns_wait: DnsHostInfo | None = None
        self.upstream: UpstreamConnection | None = None
        self.body_buf: list[bytes] | None = None
        self.body_buf_size = 0
        # A request without a body is complete once its head is (llhttp reports the end a
        # moment later); a local reply can then keep the connection.
        self.request_done = not req.chunked and not req.content_length
        self.request_trailers: Headers | None = None
        self.resp_status = 0
        self.resp_headers: Headers | None = None
        self.resp_chunked = False
        self.resp_no_body = False
        self.resp_close = False
        self.start = monotonic()
        self.deadline = 0.0  # route timeout, checked by the listener's sweep (0: none)
        self.active_at = self.start  # last byte either way (coarse clock): stream idle timeout
        self.bytes_in = 0
        self.bytes_out = 0
        self.flags = ""
        self.details = ""
        self.filter_state: dict[str, object] | None = None
        self.upstream_address = ""
        self.sent_continue = False
        self.https_target = False  # absolute-form https:// (needs a TLS cluster)
        self.pool: UpstreamPool | None = None  # holds a max_requests slot while set
        self.attempt = 0  # retries made so far
        # The request body as sent upstream (encoded), kept for a retry while it fits
        # REPLAY_LIMIT; None: not kept (no retry policy, or the body outgrew it). The head is
        # built again for each attempt.
        self.replay: list[bytes] | None = None
        self.retry_slot = False  # holds a max_retries slot (until the stream ends)
        self.replay_size = 0
        self.retry_timer: asyncio.TimerHandle | None = None
        self.try_deadline = 0.0
        self.sent_at = 0.0  # when the request went upstream (upstream_rq_time)
        self.tunnel_eofs = 0
        # A filter collecting the whole request / response body (dfproxy.filters.body_buffer).
        self.req_collect: RequestBodyBuffer | None = None
        self.resp_collect: ResponseBodyBuffer | None = None

    # -- request helpers for filters and matchers ---------------------------------------------

    def request_header_joined(self, lname: bytes) -> bytes | None:
        """Every value of a request header joined by ", " as RFC 9110 §5.3 allows, or None;
        ``host`` and ``:authority`` give the Host (Gloo matches Host as ``:authority``)."""
        if lname == b"host" or lname == b":authority":
            return self.host_header
        values = [v for n, v in self.req.forward if n.lower() == lname]
        if not values:
            return None
        return values[0] if len(values) == 1 else b",".join(values)

    def request_header(self, lname: bytes) -> bytes | None:
        """The first value of a request header (``lname`` lower-case), Host included."""
        if lname == b"host" or lname == b":authority":
            return self.host_header
        for name, value in self.req.forward:
            if name.lower() == lname:
                return value
        return None

    def set_request_header(self, lname: bytes, value: bytes, append: bool = False) -> None:
        """Set a request header for the upstream (``lname`` lower-case): replace every value,
        or add one more with ``append``. ``host`` sets the forwarded Host."""
        if lname == b"host" or lname == b":authority":
            self.host_header = value
            return
        forward = self.req.forward
        if not append:
            forward[:] = [(n, v) for n, v in forward if n.lower() != lname]
        forward.append((lname, value))

    def remove_request_header(self, lname: bytes) -> None:
        """Remove every value of a request header (``lname`` lower-case)."""
        forward = self.req.forward
        forward[:] = [(n, v) for n, v in forward if n.lower() != lname]

    def state_dict(self) -> dict[str, object]:
        """Per-request filter state, made on first use."""
        state = self.filter_state
        if state is None:
            state = self.filter_state = {}
        return state

    def resume_filters(self) -> None:
        """A request filter that paused (returned STOP to wait) lets the chain go on with
        the filter after it. Does nothing once the stream has answered or gone."""
        if self.state == FILTERING and self.dns_wait is None:
            self._run_filters(self.filter_index + 1)

    def path_text(self) -> str:
        return self.path.decode("latin-1")

    def path_only(self) -> str:
        q = self.path.find(b"?")
        return (self.path if q < 0 else self.path[:q]).decode("latin-1")

    def query_params(self) -> dict[str, str]:
        q = self.path.find(b"?")
        if q < 0:
            return {}
        return dict(parse_qsl(self.path[q + 1 :].decode("latin-1"), keep_blank_values=True))

    def route_host(self) -> str:
        """What virtual-host matching compares: the CONNECT target or the Host value."""
        if self.is_connect:
            return self.target.decode("latin-1").lower()
        return self.host_header.decode("latin-1").lower()

    # -- request path ---------------------------------------------------------------------------

    def begin(self) -> None:
        """Route and filter the request (the stream became head-of-line)."""
        self.state = FILTERING
        route = self.conn.listener.routes.select(self)
        if route is None:
            self.local_error(errors.NoRoute())
            return
        self.route = route
        if self.is_connect and not route.connect_terminate:
            self.local_error(errors.ConnectForbidden())
            return
        if self.upgrade is not None and (
            not route.websocket or self.upgrade.lower() != b"websocket"
        ):
            self.upgrade = None  # forwarded as a plain request, Upgrade stripped
        self._run_filters(0)

    def _run_filters(self, index: int) -> None:
        route = self.route
        assert route is not None
        hooks = route.chain.request_headers
        n = len(hooks)
        while index < n:
            self.filter_index = index
            if hooks[index].on_request_headers(self) == F.STOP:
                return  # paused, or answered locally
            if self.state == DONE:
                return
            index += 1
        route.action.run(self)

    def on_dns_complete(self, info: DnsHostInfo) -> None:
        """The DNS cache finished the lookup this stream waited for."""
        if self.dns_wait is not info or self.state != FILTERING:
            return
        self.dns_wait = None
        if not info.addresses:
            self.local_error(errors.DnsResolutionFailure(info.last_status))
            return
        self.host = info
        self._run_filters(self.filter_index + 1)

    def forward(self, cluster: DfpCluster) -> None:
        """Terminal step: send the request to ``self.host`` over a pooled connection."""
        host = self.host
        if host is None:
            self.local_error(errors.DnsResolutionFailure("no host"))
            return
        host.last_used = self.start
        route = self.route
        if route is not None and route.chain.upstream_host:
            for f in route.chain.upstream_host:
                if f.on_upstream_host(self) == F.STOP or self.state == DONE:
                    return
            # A filter may narrow the host to the addresses it allows (access control).
            host = self.host
            assert host is not None
        listener = self.conn.listener
        if host.port in listener.own_ports and any(
            # Every address: Happy Eyeballs falls back to the next one when a connect fails.
            listener.is_self(address[0], host.port, self.conn.local_ip)
            for address in host.addresses
        ):
            self.local_error(errors.ForwardingLoop(host.key))
            return
        pool = cluster.pool
        pool.st_rq_total.value += 1
        requests = pool.breakers.requests
        if requests.count >= requests.limit:
            # Envoy counts a max_requests overflow as upstream_rq_pending_overflow too.
            pool.breakers.st_pending_overflow.value += 1
            self.local_error(errors.UpstreamOverflow("max_requests"))
            return
        requests.count += 1
        host.stats.rq_total += 1  # per-host /clusters stats; rq_active is given back in _finish()
        host.stats.rq_active += 1
        self.pool = pool  # the slot is given back in _finish()
        if (
            route is not None
            and route.retry is not None
            and self.attempt == 0
            and not self.is_connect
            and self.upgrade is None
        ):
            # The body may have arrived while DNS was resolving: it counts against the limit.
            buffered = self.body_buf_size
            self.replay = None if buffered > REPLAY_LIMIT else list(self.body_buf or ())
            self.replay_size = buffered
        if self.request_done:
            self._arm_deadline()
        if not self.is_connect and self.upgrade is None:
            conn = pool.get_idle(host)
            if conn is not None:
                self._attach(conn)
                return
        self.state = CONNECTING
        if not pool.request(host, self._on_connected, plain=self.is_connect):
            self.local_error(errors.UpstreamOverflow("max_pending_requests"))

    def _on_connected(self, conn: UpstreamConnection | None, reason: str) -> None:
        if self.state != CONNECTING:
            if conn is not None:
                conn.close()  # the client went away meanwhile
            return
        if conn is None:
            log.debug("upstream connect to %s failed: %s", self.host and self.host.key, reason)
            if not self._maybe_retry(connect_failure=True):
                if reason.startswith("tls:"):
                    self.local_error(errors.UpstreamTlsFailure(reason[4:]))
                else:
                    self.local_error(errors.UpstreamConnectFailure(reason))
            return
        if self.is_connect:
            self._start_connect_tunnel(conn)
        else:
            self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        self.upstream_address = conn.address
        self.state = FORWARDING
        self.sent_at = monotonic()
        if not conn.attach(self, self.method == b"HEAD"):
            self.upstream = None
            if not self._maybe_retry(connect_failure=False):
                self.local_error(errors.UpstreamProtocolError("response before the request"))
            return
        if self.conn.write_paused and conn.flow is not None:
            conn.flow.pause(PEER_BACKPRESSURE)  # the client is not reading: hold this origin
        req = self.req
        if req.chunked:
            framing = CHUNKED
        elif req.content_length is not None:
            framing = b""  # the client's Content-Length header is forwarded as it came
        elif self.method in (b"POST", b"PUT", b"PATCH"):
            framing = b"content-length: 0\r\n"
        else:
            framing = b""
        if self.upgrade is not None:
            framing += b"connection: upgrade\r\nupgrade: " + self.upgrade + b"\r\n"
        route = self.route
        headers = req.forward
        host_header = self.host_header
        path = self.path
        if route is not None and not route.plain_request:
            if route.request_headers_to_add or route.request_headers_to_remove:
                headers = manipulate(
                    headers, route.request_headers_to_add, route.request_headers_to_remove
                )
            if route.host_rewrite is not None:
                host_header = route.host_rewrite
            if route.prefix_rewrite is not None:
                path = rewrite_prefix(path, self.matcher, route.prefix_rewrite)
        head = request_head(self.method, path, host_header, headers, framing)
        if self.attempt:
            assert self.replay is not None
            conn.write(head + b"".join(self.replay))  # a retry sends the same bytes again
        elif self.body_buf:
            conn.write(head + b"".join(self.body_buf))
            self.body_buf = None
            self.body_buf_size = 0
            self.conn.flow.resume(BODY_BUFFER)
        else:
            conn.write(head)
        if req.expect_continue and not self.request_done and not self.sent_continue:
            # Envoy answers 100-continue itself and strips Expect (proxy_100_continue false).
            self.sent_continue = True
            self.conn.write(CONTINUE_100)
        if self.request_done:
            self._request_sent()

    def request_body(self, data: bytes) -> None:
        """A piece of the request body from the codec (already de-chunked)."""
        self.bytes_in += len(data)
        self.active_at = self.conn.listener.now
        if self.req_collect is not None:
            self.req_collect.data(self, data)
            return
        if self.req.chunked:
            data = encode_chunk(data)
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None  # streamed past the replay buffer: no retry any more
            else:
                replay.append(data)
        conn = self.upstream
        if conn is not None and (self.state == FORWARDING or self.state == RESPONDING):
            conn.write(data)
            return
        if self.state >= RESPONDING:
            return  # answered already (or upstream gone): the rest of the body is dropped
        if self.body_buf is None:
            self.body_buf = [data]
        else:
            self.body_buf.append(data)
        self.body_buf_size += len(data)
        if self.body_buf_size > HIGH_WATER:
            self.conn.flow.pause(BODY_BUFFER)

    def request_complete(self, trailers: Headers | None) -> None:
        """The codec saw the end of the request."""
        if self.request_done:
            return  # bodiless: complete since its head, and acted on as such already
        self.request_done = True
        if self.req_collect is not None:
            self.req_collect.complete(self)
            return
        if self.req.chunked:
            end = last_chunk(trailers)
            if self.replay is not None:
                self.replay.append(end)
            if self.upstream is not None and self.state in (FORWARDING, RESPONDING):
                self.upstream.write(end)
            elif self.state != DONE:
                if self.body_buf is None:
                    self.body_buf = [end]
                else:
                    self.body_buf.append(end)
        if self.upstream is not None and self.state in (FORWARDING, RESPONDING):
            self._request_sent()
        elif self.state == CONNECTING:
            self._arm_deadline()

    def _request_sent(self) -> None:
        conn = self.upstream
        assert conn is not None
        conn.request_done = True
        if not self.deadline:  # usually armed by forward() already: no call then
            self._arm_deadline()
        route = self.route
        if route is not None and route.retry is not None and route.retry.per_try_timeout:
            self.try_deadline = monotonic() + route.retry.per_try_timeout

    def _arm_deadline(self) -> None:
        """Envoy's route timeout runs from the end of the request, whether or not a
        connection is ready yet. Deadlines are checked by the Listener's sweep: a timer per
        request cost 2.6 µs."""
        if self.deadline or self.is_connect or self.upgrade is not None:
            return
        route = self.route
        timeout = route.timeout if route is not None else 15.0
        if timeout:
            # A request without a body ends as it starts: no second clock read.
            bodiless = self.req.content_length is None and not self.req.chunked
            self.deadline = (self.start if bodiless else monotonic()) + timeout

    # -- retries ------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        if self.pool is not None:
            self.pool.count(name)

    def _maybe_retry(self, connect_failure: bool, status: int = 0) -> bool:
        """Retry this request if the route's policy, the replay buffer and the retry breaker
        allow it: the attempt's connection is dropped and a new one is opened after a
        jittered exponential backoff (Envoy: uniform in [0, min(max, base * 2^n))).
        Returns False, changing nothing, when no retry happens."""
        route = self.route
        policy = route.retry if route is not None else None
        if policy is None or self.is_connect or self.upgrade is not None or self.pool is None:
            return False
        if not (policy.retries_status(status) if status else policy.retries_reset(connect_failure)):
            return False
        if self.attempt >= policy.num_retries:
            self._count("upstream_rq_retry_limit_exceeded")
            return False
        if self.replay is None or not self.request_done:
            return False  # the body is streamed past the replay buffer, or still arriving
        retries = self.pool.breakers.retries
        if not self.retry_slot:
            if not retries.can_create():
                self.pool.breakers.st_retry_overflow.value += 1
                return False
            retries.acquire()  # held while this request retries (Envoy: until it ends)
            self.retry_slot = True
        self._count("upstream_rq_retry")
        self._drop_upstream()
        self.attempt += 1
        self.state = CONNECTING
        self.try_deadline = 0.0
        ceiling = min(policy.max_interval, policy.base_interval * (2 ** (self.attempt - 1)))
        self.retry_timer = self.conn.loop.call_later(random.random() * ceiling, self._retry)
        log.debug("retry %d of %s %s", self.attempt, self.method, self.target)
        return True

    def _retry(self) -> None:
        self.retry_timer = None
        pool = self.pool
        if pool is None or self.state != CONNECTING or self.host is None:
            return
        # A fresh connection: the one that failed, or one like it, is not trusted again.
        if not pool.request(self.host, self._on_connected):
            self.local_error(errors.UpstreamOverflow("max_pending_requests"))

    def check_deadline(self, now: float) -> None:
        """Called by the listener's sweep for the head-of-line stream."""
        if self.deadline and now >= self.deadline and CONNECTING <= self.state <= RESPONDING:
            self.deadline = 0.0
            self._on_timeout()
        elif self.try_deadline and now >= self.try_deadline and self.state == FORWARDING:
            # Per-try timeout: this attempt is abandoned; another may follow.
            self.try_deadline = 0.0
            self._drop_upstream()
            if not self._maybe_retry(connect_failure=False):
                self.local_error(errors.UpstreamTimeout())

    def idle_timeout(self) -> None:
        """No byte either way for stream_idle_timeout (Envoy onIdleTimeout): "stream timeout"
        before the response starts, 504 once the request is complete and 408 while it is not
        (maybeRequestTimeoutCode); after that the exchange or tunnel is cut."""
        self.flags = rf.STREAM_IDLE_TIMEOUT
        if self.state < RESPONDING:
            status = 504 if self.request_done else 408
            self.send_local_reply(
                status, b"stream timeout", flag=rf.STREAM_IDLE_TIMEOUT, close=not self.request_done
            )
        elif self.state == RESPONDING:
            self._drop_upstream()
            self.conn.abort()
        elif self.state == TUNNEL:
            if self.upstream is not None:
                self.upstream.abort()
            self.conn.abort()

    def _on_timeout(self) -> None:
        if self.state == CONNECTING:
            self.local_error(errors.UpstreamTimeout())  # _cancel_waits gives up the pending slot
        elif self.state == FORWARDING:
            self._drop_upstream()
            self.local_error(errors.UpstreamTimeout())
        elif self.state == RESPONDING:
            self.flags = rf.UPSTREAM_REQUEST_TIMEOUT
            self._drop_upstream()
            self.conn.abort()

    # -- response path (called by the upstream connection) ------------------------------------

    def upstream_response_head(self, status: int, reason: bytes, raw: Headers) -> None:
        # A retried attempt's filters decide again. The cast keeps mypy from narrowing the
        # attribute to None for the rest of this method (a filter sets it; mypyc checks).
        self.resp_collect = cast("ResponseBodyBuffer | None", None)
        try:
            resp = classify_response(raw)
        except ValueError as exc:
            self._drop_upstream()
            self.local_error(errors.UpstreamProtocolError(str(exc)))
            return
        route = self.route
        assert route is not None
        retry = route.retry
        if retry is not None and status != 101:
            if retry.retries_status(status):
                if self._maybe_retry(connect_failure=False, status=status):
                    return
                # No retry left: the upstream's own answer goes to the client (as Envoy).
            elif self.attempt:
                self._count("upstream_rq_retry_success")
        self.resp_status = status
        self.active_at = self.conn.listener.now
        headers = resp.forward
        body_filters = route.chain.response_body
        if not route.plain_response:
            self.resp_headers = headers
            for f in route.chain.response_headers:
                f.on_response_headers(self)
            headers = self.resp_headers
            status = self.resp_status  # a filter may change the status (a transformation)
            if route.response_headers_to_add or route.response_headers_to_remove:
                headers = manipulate(
                    headers, route.response_headers_to_add, route.response_headers_to_remove
                )
        self.resp_headers = headers
        if self.resp_collect is not None and status != 101:
            return  # a filter holds the head until the body is complete (send_collected)
        if status == 101:
            if self.upgrade is None:
                # A 101 nobody asked for (Upgrade absent, or stripped by the route): Envoy
                # resets; a tunnel here would bypass the route's policy.
                self._drop_upstream()
                self.local_error(errors.UpstreamProtocolError("unsolicited 101"))
            return  # written by upstream_upgraded, after the parser hands over the tunnel
        self.state = RESPONDING
        no_body = self.method == b"HEAD" or status == 204 or status == 304
        self.resp_no_body = no_body
        # Not keep-alive when the origin answered before the request ended: the next
        # request's boundary is unknown unless the body is consumed, so close afterwards.
        keep = self.keep_alive and self.request_done and not self.conn.draining
        if no_body or (resp.content_length is not None and not body_filters):
            framing = b""  # Content-Length travels in the forwarded headers unchanged
        else:
            if resp.content_length is not None:
                # A body filter may change the length: drop it and re-frame.
                headers = self.resp_headers = [
                    (n, v) for n, v in headers if n.lower() != b"content-length"
                ]
            if self.version_11:
                framing = CHUNKED
                self.resp_chunked = True
            else:
                framing = b""
                keep = False  # HTTP/1.0 client, unknown length: delimit by close
        if not keep:
            framing += CLOSE
        elif not self.version_11:
            framing += KEEP_ALIVE
        self.resp_close = not keep
        # %BYTES_SENT% counts body bytes only (Envoy), so the head is not counted.
        # The table lookup inline, status_line() for the rest: one call less per response.
        line = STATUS_LINES.get(status) or status_line(status)
        self.conn.write(serialize(line, headers, framing))

    def upstream_response_body(self, data: bytes) -> None:
        if self.resp_collect is not None:
            self.resp_collect.data(self, data)
            return
        if self.state != RESPONDING or self.resp_no_body:
            return
        self.active_at = self.conn.listener.now
        route = self.route
        if route is not None and route.chain.response_body:
            for f in route.chain.response_body:
                data = f.on_response_body(self, data, False)
            if not data:
                return
        self.bytes_out += len(data)
        if self.resp_chunked:
            self.conn.write(encode_chunk(data))
        else:
            self.conn.write(data)

    def upstream_response_complete(self, trailers: Headers | None) -> None:
        self.upstream = None
        if self.resp_collect is not None:
            self.resp_collect.complete(self)
            return
        if self.state != RESPONDING:
            return
        route = self.route
        if route is not None and route.chain.response_body and not self.resp_no_body:
            tail = b""
            for f in route.chain.response_body:
                tail = f.on_response_body(self, tail, True)
            if tail:
                self.bytes_out += len(tail)
                self.conn.write(encode_chunk(tail) if self.resp_chunked else tail)
        if self.resp_chunked:
            self.conn.write(last_chunk(trailers))
        self._finish()

    def send_collected(self, body: bytes) -> None:
        """Write a response whose body a filter collected (``resp_collect``) and may have
        changed, with ``resp_status`` / ``resp_headers`` as the filter left them, framed by
        Content-Length; then finish."""
        self.resp_collect = None
        if self.state >= RESPONDING:
            return
        self.state = RESPONDING
        status = self.resp_status
        no_body = self.method == b"HEAD" or status == 204 or status == 304
        headers = list(self.resp_headers or ())
        if not no_body:  # (a HEAD answer keeps the origin's Content-Length)
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
            headers.append((b"content-length", b"%d" % len(body)))
        keep = self.keep_alive and self.request_done and not self.conn.draining
        framing = CLOSE if not keep else (b"" if self.version_11 else KEEP_ALIVE)
        self.resp_close = not keep
        self.resp_headers = headers
        head = serialize(status_line(status), headers, framing)
        if no_body:
            self.conn.write(head)
        else:
            self.bytes_out += len(body)
            self.conn.write(head + body)
        self._finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        """The origin answered 101: send the head and relay raw bytes both ways."""
        assert self.resp_headers is not None
        head = serialize(
            status_line(101),
            self.resp_headers,
            b"connection: upgrade\r\nupgrade: " + (self.upgrade or b"websocket") + b"\r\n",
        )
        self.resp_status = 101
        self.conn.write(head)
        self._enter_tunnel(rest)

    def upstream_reset(self, reason: str) -> None:
        """The upstream connection closed or broke before the exchange completed."""
        self.upstream = None
        if self.state == FORWARDING:
            if self._maybe_retry(connect_failure=False):
                return
            if reason.startswith("protocol error"):
                self.local_error(errors.UpstreamProtocolError(reason))
            else:
                self.local_error(errors.UpstreamReset(reason))
        elif self.state == RESPONDING:
            self.flags = rf.UPSTREAM_CONNECTION_TERMINATION
            self.details = f"upstream_reset_after_response_started{{{reason}}}"
            self.conn.abort()
        elif self.state == TUNNEL:
            self.conn.close_after_flush()

    def upstream_pause_writing(self) -> None:
        self.conn.flow.pause(PEER_BACKPRESSURE)

    def upstream_resume_writing(self) -> None:
        self.conn.flow.resume(PEER_BACKPRESSURE)

    # -- tunnels (CONNECT terminated here, or an accepted upgrade) -----------------------------

    def _start_connect_tunnel(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        self.upstream_address = conn.address
        self.resp_status = 200
        if self.conn.write_paused and conn.flow is not None:
            conn.flow.pause(PEER_BACKPRESSURE)
        # The 200 first: a server-first origin's greeting is delivered by start_tunnel().
        self.conn.write(connect_established())
        self._enter_tunnel(b"")
        conn.start_tunnel(self)

    def _enter_tunnel(self, upstream_rest: bytes) -> None:
        self.state = TUNNEL
        self.conn.st_tunnels.value += 1
        self.deadline = 0.0
        if upstream_rest:
            self.tunnel_data(upstream_rest)
        early = self.conn.take_tunnel_bytes()
        if early:
            self.bytes_in += len(early)
            assert self.upstream is not None
            self.upstream.write(early)
        self.conn.enter_tunnel(self)

    def tunnel_data(self, data: bytes) -> None:
        """Bytes from the origin for the client."""
        self.bytes_out += len(data)
        self.active_at = self.conn.listener.now
        self.conn.write(data)

    def tunnel_downstream_data(self, data: bytes) -> None:
        """Bytes from the client for the origin."""
        self.bytes_in += len(data)
        self.active_at = self.conn.listener.now
        if self.upstream is not None:
            self.upstream.write(data)

    def tunnel_eof(self) -> None:
        """The origin half-closed: pass the FIN on to the client."""
        self.conn.write_eof()
        self._tunnel_half_closed()

    def tunnel_downstream_eof(self) -> None:
        """The client half-closed: pass the FIN on to the origin."""
        if self.upstream is not None:
            self.upstream.write_eof()
        self._tunnel_half_closed()

    def _tunnel_half_closed(self) -> None:
        self.tunnel_eofs += 1
        if self.tunnel_eofs >= 2:
            self.conn.close_after_flush()

    # -- endings --------------------------------------------------------------------------------

    def local_error(self, err: errors.ProxyError) -> None:
        """Answer with the error's status and Envoy wording (before the response started)."""
        if err.flag:
            self.flags = err.flag
        self.details = err.code_details
        if err.status >= 500 or err.status == 400:
            log.info(
                "%s %s -> %d %s (%s)",
                self.method.decode("latin-1"),
                self.target.decode("latin-1"),
                err.status,
                err.body or "-",
                err.detail or err.flag or "local reply",
            )
        self.send_local_reply(err.status, err.body.encode(), flag=err.flag, close=err.close)

    def send_local_reply(
        self,
        status: int,
        body: bytes,
        *,
        flag: str = "",
        close: bool = False,
        content_type: bytes | None = None,
        extra_headers: Headers | None = None,
    ) -> None:
        """Write a response made by the proxy and finish the stream."""
        if self.state >= RESPONDING:
            return
        if flag:
            self.flags = flag
        self._cancel_waits()
        self._drop_upstream()
        # A CONNECT (its bytes may be tunnel data) or a draining server: close after the
        # reply. A body still arriving is read and dropped when what is left is known and
        # small: closing with unread bytes would reset the connection and lose the reply.
        unread = not self.request_done and (
            self.req.chunked or (self.req.content_length or 0) - self.bytes_in > DISCARD_LIMIT
        )
        close = close or not self.keep_alive or unread or self.is_connect or self.conn.draining
        self.resp_status = status
        self.resp_close = close
        data = local_reply(
            status,
            body,
            close=close,
            head=self.method == b"HEAD",
            extra_headers=extra_headers,
            content_type=content_type or b"text/plain",
        )
        self.bytes_out += 0 if self.method == b"HEAD" else len(body)
        self.state = RESPONDING
        self.conn.write(data)
        self._finish()

    def downstream_closed(self) -> None:
        """The client went away before the exchange finished."""
        if self.state == DONE:
            return
        if self.state == TUNNEL:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None
            self._finish()
            return
        if not self.flags:
            self.flags = rf.DOWNSTREAM_CONNECTION_TERMINATION
        self._cancel_waits()
        self._drop_upstream()
        self.resp_close = True
        self._finish()

    def _cancel_waits(self) -> None:
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.state == CONNECTING and self.pool is not None:
            self.pool.cancel(self._on_connected)
        if self.dns_wait is not None:
            route = self.route
            if route is not None:
                for f in route.chain.request_headers:
                    cache = getattr(f, "cache", None)
                    if cache is not None:
                        cache.cancel_wait(self.dns_wait, self.on_dns_complete)
            self.dns_wait = None
        self.deadline = 0.0

    def _drop_upstream(self) -> None:
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.detach()

    def _finish(self) -> None:
        if self.state == DONE:
            return
        was_tunnel = self.state == TUNNEL
        self.state = DONE
        if self.body_buf is not None:
            # A body buffered for an upstream that never came: drop it, and read again.
            self.body_buf = None
            self.body_buf_size = 0
            self.conn.flow.resume(BODY_BUFFER)
        if not was_tunnel:
            # Envoy's downstream_rq_time / upstream_rq_time histograms, in ms.
            now = monotonic()
            self.conn.listener.st_rq_time.record((now - self.start) * 1000.0)
            if self.sent_at and self.pool is not None and self.resp_status:
                self.pool.st_rq_time.record((now - self.sent_at) * 1000.0)
        pool = self.pool
        if pool is not None:
            self.pool = None
            pool.breakers.requests.count -= 1
            host = self.host
            if host is not None:
                host.stats.rq_active -= 1
                if self.resp_status >= 500:
                    host.stats.rq_error += 1
                    if self.flags == rf.UPSTREAM_REQUEST_TIMEOUT:
                        host.stats.rq_timeout += 1
            if self.retry_slot:
                self.retry_slot = False
                pool.breakers.retries.release()
        self.deadline = 0.0
        conn = self.conn
        conn.listener.count_response(self.resp_status)  # not via conn: one call less
        if conn.access_log is not None:
            entry = self.log_entry()
            if self.route is not None:
                for f in self.route.chain.log:
                    f.on_log(self, entry)  # DLP masks logged values
            conn.access_log.log(entry)
        conn.stream_finished(self, was_tunnel)

    def log_entry(self) -> LogEntry:
        forwarded_for = user_agent = request_id = None
        for name, value in self.req.forward:
            lname = name.lower()
            if lname == b"user-agent":
                user_agent = value.decode("latin-1")
            elif lname == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif lname == b"x-request-id":
                request_id = value.decode("latin-1")
        host = self.host
        user = self.filter_state.get("proxy_user") if self.filter_state else None
        return LogEntry(
            start_time=time.time() - (monotonic() - self.start),
            method=self.method.decode("latin-1"),
            path="" if self.is_connect else self.path.decode("latin-1"),
            protocol="HTTP/1.1" if self.version_11 else "HTTP/1.0",
            status=self.resp_status,
            flags=self.flags,
            bytes_received=self.bytes_in,
            bytes_sent=self.bytes_out,
            duration_ms=int((monotonic() - self.start) * 1000),
            forwarded_for=forwarded_for,
            user_agent=user_agent,
            request_id=request_id,
            authority=(self.target if self.is_connect else self.host_header).decode("latin-1")
            or None,
            upstream_host=self.upstream_address or (host.key if host is not None else None),
            upstream_address=self.upstream_address or None,
            details=self.details or None,
            downstream_remote_address=self.conn.peer or None,
            proxy_user=user if isinstance(user, str) else None,
        )


__all__ = ["Stream", "http_date"]
