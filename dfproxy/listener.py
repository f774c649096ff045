"""A listener: the bound socket's protocol factory and what its connections share.

Per listener: the route table, the access log, the ``http.<name>.`` stats and the set of
open connections (for drain). Per-connection objects come from here; nothing per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dfproxy.access_log import LogSink
from dfproxy.downstream import HttpConnection
from dfproxy.ratelimit.connection_limit import ConnectionLimiter
from dfproxy.stats import StatsStore

if TYPE_CHECKING:
    from dfproxy.config.model import ListenerSpec
    from dfproxy.router import RouteTable

log = logging.getLogger("dfproxy.listener")

# Route timeouts are checked this often (so they fire up to this late). A timer per request
# cost 2.6 µs; one sweep over the connections costs far less at any request rate.
SWEEP_INTERVAL = 0.25


def _connected_ip(ip: str) -> str:
    """The address a connect to ``ip`` reaches, as the listener's own addresses are written:
    an IPv4-mapped address is its IPv4 address (RFC 4291 §2.5.5.2), and the unspecified
    address is loopback (Linux connects 0.0.0.0 to 127.0.0.1, :: to ::1)."""
    if ip == "0.0.0.0":
        return "127.0.0.1"
    if ":" in ip:
        try:
            v6 = ipaddress.IPv6Address(ip.partition("%")[0])
        except ValueError:
            return ip
        if v6.ipv4_mapped is not None:
            return _connected_ip(str(v6.ipv4_mapped))
        return "::1" if v6.is_unspecified else str(v6)
    return ip


class Listener:
    """Shared state of one listening address."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        routes: RouteTable,
        stats: StatsStore,
        access_log: LogSink | None,
        default_port: int = 80,
        use_proxy_protocol: bool = False,
    ) -> None:
        self.name = name
        self.use_proxy_protocol = use_proxy_protocol
        self.loop = loop
        self.routes = routes
        self.access_log = access_log
        self.default_port = default_port
        self.draining = False
        self.connections: set[HttpConnection] = set()
        self.on_connection_closed: Callable[[], None] | None = None
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.now = time.monotonic()  # coarse clock, advanced by _sweep
        self.stream_idle_timeout = 300.0
        self.idle_timeout = 3600.0
        self.request_headers_timeout = 30.0
        self.bound: tuple[str, int] | None = None
        # Where this process listens, to refuse forwarding to itself (shared by all listeners).
        self.own_ports: set[int] = set()
        self.own_endpoints: set[tuple[str, int]] = set()
        self.conn_limit: ConnectionLimiter | None = None  # connectionLimit (None: unset)
        self._bind_stats(name, stats)

    def _bind_stats(self, name: str, stats: StatsStore) -> None:
        p = f"http.{name}."
        self.st_cx_total = stats.counter(p + "downstream_cx_total")
        self.st_cx_active = stats.gauge(p + "downstream_cx_active")
        self.st_rq_total = stats.counter(p + "downstream_rq_total")
        self.st_rq_class = [stats.counter(p + f"downstream_rq_{n}xx") for n in range(1, 6)]
        self.st_tunnels = stats.counter(p + "downstream_cx_upgrades_total")
        self.st_rq_time = stats.histogram(p + "downstream_rq_time")
        # Envoy's active gauges, counted over the open connections when read (admin only).
        stats.computed_gauge(
            p + "downstream_cx_upgrades_active",
            lambda: sum(1 for c in self.connections if c.tunnel is not None),
        )
        stats.computed_gauge(
            p + "downstream_rq_active", lambda: sum(len(c.streams) for c in self.connections)
        )
        self.st_cx_overflow = stats.counter(p + "downstream_cx_overflow")
        self.st_cx_overflow_client = stats.counter(p + "downstream_cx_overflow_per_client")

    def rename(self, name: str, stats: StatsStore) -> None:
        """A reload renamed the Gateway on this address: count under the new name from now."""
        self.name = name
        self._bind_stats(name, stats)

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        self.st_cx_total.value += 1
        self.st_cx_active.value = len(self.connections)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self.conn_limit is not None:
            self.conn_limit.release(conn)
        self.st_cx_active.value = len(self.connections)
        if self.on_connection_closed is not None:
            self.on_connection_closed()

    def count_response(self, status: int) -> None:
        self.st_rq_total.value += 1
        klass = status // 100
        if 1 <= klass <= 5:
            self.st_rq_class[klass - 1].value += 1

    def set_timeouts(self, spec: ListenerSpec) -> None:
        """The HCM timeouts (seconds; 0 disables one)."""
        self.stream_idle_timeout = spec.stream_idle_timeout
        self.idle_timeout = spec.idle_timeout
        self.request_headers_timeout = spec.request_headers_timeout
        if spec.connection_limit is not None or self.conn_limit is not None:
            if self.conn_limit is None:
                self.conn_limit = ConnectionLimiter(self.st_cx_overflow, self.st_cx_overflow_client)
            self.conn_limit.configure(spec.connection_limit)

    def _sweep(self) -> None:
        """Every timeout of this listener's connections, in one pass every SWEEP_INTERVAL:
        route deadlines, stream idle, connection idle and slow request heads. ``now`` is
        the coarse clock the hot path stamps activity with (one attribute store, no call)."""
        self.now = now = time.monotonic()
        stream_idle = self.stream_idle_timeout
        for conn in list(self.connections):
            streams = conn.streams
            stream = streams[0] if streams else conn.tunnel
            if stream is not None:
                stream.check_deadline(now)
                if stream_idle and now - stream.active_at > stream_idle:
                    stream.idle_timeout()
            else:
                conn.check_idle(now, self.idle_timeout, self.request_headers_timeout)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Bind and listen; returns the bound port."""
        self.server = await self.loop.create_server(
            self, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=4096
        )
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        server: Any = self.server  # uvloop's sockets are a list, typeshed says tuple (mypyc checks)
        sockets: Sequence[socket.socket] = server.sockets
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        self.own_ports.add(bound)
        self.own_endpoints.add((host, bound))
        self.bound = (host, bound)
        return bound

    def is_self(self, ip: str, port: int, local_ip: str) -> bool:
        """True when (ip, port) is one of our listeners: forwarding there would loop."""
        ip = _connected_ip(ip)
        if (ip, port) in self.own_endpoints or ip == _connected_ip(local_ip):
            return True
        wildcard = ("0.0.0.0", port) in self.own_endpoints or ("::", port) in self.own_endpoints
        return wildcard and (ip.startswith("127.") or ip == "::1")

    def close(self) -> None:
        """Stop the timeout sweep (shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def start_draining(self) -> None:
        """Stop accepting; let every connection finish what it has in flight."""
        self.draining = True
        if self.bound is not None:
            # No longer ours: a destination on this port is not a forwarding loop any more.
            self.own_endpoints.discard(self.bound)
            if not any(port == self.bound[1] for _, port in self.own_endpoints):
                self.own_ports.discard(self.bound[1])
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.start_draining()
