"""Upstream connection pool: idle keep-alive connections per DNS cache key (``host:port``).

Envoy keeps one pool per logical host; so do we. Idle connections are reused LIFO (the most
recently used is the least likely to have been closed by the origin), bounded per host and
closed after ``idle_timeout``. New connections are opened with Happy Eyeballs over the host's
address list, bounded by ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dfproxy.dns.cache import DnsHostInfo
from dfproxy.stats import Counter, StatsStore
from dfproxy.tasks import spawn
from dfproxy.upstream.circuit_breaker import CircuitBreakers, Thresholds
from dfproxy.upstream.connect import happy_eyeballs_connect
from dfproxy.upstream.connection import CLOSED, IDLE, UpstreamConnection
from dfproxy.upstream.tls import (
    SanMismatch,
    TlsSettings,
    build_context,
    check_san,
    failure_kind,
    failure_reason,
    server_hostname,
)

log = logging.getLogger("dfproxy.upstream")

ConnectCallback = Callable[[UpstreamConnection | None, str], None]

SWEEP_INTERVAL = 5.0


class UpstreamPool:
    """All upstream connections of one cluster in one worker."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: StatsStore,
        cluster_name: str,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 3600.0,
        max_idle_per_host: int = 64,
        breakers: Thresholds | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_per_host = max_idle_per_host
        self.idle: dict[tuple[str, int, str], list[UpstreamConnection]] = {}
        self.tls = tls
        self.tls_context = build_context(tls) if tls is not None else None
        self.breakers = CircuitBreakers(breakers or Thresholds(), stats, cluster_name)
        self.waiters: deque[tuple[DnsHostInfo, ConnectCallback, bool]] = deque()
        self.active = 0
        self.closing = False
        prefix = f"cluster.{cluster_name}."
        self.prefix = prefix
        self.stats = stats
        self._counters: dict[str, Counter] = {}
        self.st_cx_total = stats.counter(prefix + "upstream_cx_total")
        self.st_cx_active = stats.gauge(prefix + "upstream_cx_active")
        self.st_cx_connect_fail = stats.counter(prefix + "upstream_cx_connect_fail")
        self.st_cx_connect_timeout = stats.counter(prefix + "upstream_cx_connect_timeout")
        self.st_rq_total = stats.counter(prefix + "upstream_rq_total")
        self.st_rq_time = stats.histogram(prefix + "upstream_rq_time")
        # Envoy's active-request gauges, read from the breakers' own counts (no hot-path cost).
        stats.computed_gauge(prefix + "upstream_rq_active", lambda: self.breakers.requests.count)
        stats.computed_gauge(
            prefix + "upstream_rq_pending_active", lambda: self.breakers.pending.count
        )
        self.now = time.monotonic()  # coarse clock for idle bookkeeping, set by _sweep
        self.sweep_interval = min(SWEEP_INTERVAL, idle_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = loop.call_later(
            self.sweep_interval, self._sweep
        )

    def count(self, name: str) -> None:
        """Increment ``cluster.<name>.<stat>`` (rare events: retries)."""
        stat = self._counters.get(name)
        if stat is None:
            stat = self._counters[name] = self.stats.counter(self.prefix + name)
        stat.value += 1

    def get_idle(self, host: DnsHostInfo) -> UpstreamConnection | None:
        """An idle connection to one of ``host``'s addresses, or None.

        Plaintext HTTP/1.1 names its Host in every request, so a connection to ip:port serves
        every name that resolves to that address (nginx and HAProxy reuse the same way); with
        many names on one address (tenants, CDNs) a pool per name would open a connection per
        name. Connections are filed under the peer they are actually connected to, and only
        an address in this host's own list is ever used for it.
        """
        port = host.port
        name = host.host if self.tls is not None else ""  # tls_name(), inline: one call less
        for ip, _ in host.addresses:
            conns = self.idle.get((ip, port, name))
            while conns:
                conn = conns.pop()
                t = conn.transport
                if conn.state == IDLE and t is not None and not t.is_closing():
                    return conn
        return None

    def tls_name(self, host: DnsHostInfo) -> str:
        """The name a TLS connection to ``host`` is for (its pool key part): the SNI and SAN
        target, so connections for different names are never shared."""
        return host.host if self.tls is not None else ""

    def request(self, host: DnsHostInfo, callback: ConnectCallback, plain: bool = False) -> bool:
        """Ask for a new connection to ``host`` for one request (no idle one was free).

        The request is pending until ``callback(conn, "")`` or ``callback(None, reason)``.
        Returns False, having called nothing, when the pending-requests breaker is open (the
        caller answers 503 UO). At the connection limit the request waits for a slot; an idle
        connection to another address is closed to make one.
        """
        cb = self.breakers
        if not cb.pending.can_create():
            cb.st_pending_overflow.value += 1
            return False
        cb.pending.acquire()
        if cb.connections.can_create():
            self._start(host, callback, plain)
        else:
            cb.st_cx_overflow.value += 1
            self.waiters.append((host, callback, plain))
            self._evict_one_idle()
        return True

    def cancel(self, callback: ConnectCallback) -> None:
        """The request waiting with ``callback`` went away before it got a connection."""
        for i, (_, cb, _plain) in enumerate(self.waiters):
            if cb == callback:
                del self.waiters[i]
                self.breakers.pending.release()
                return

    def connect(
        self, host: DnsHostInfo, callback: ConnectCallback, plain: bool = False
    ) -> asyncio.Task[None]:
        """Open a connection (TLS if the cluster has it, unless ``plain``: a CONNECT tunnel's
        bytes are the client's own TLS)."""
        self.breakers.connections.acquire()
        return spawn(self._connect(host, callback, plain), name=f"connect:{host.key}")

    def _start(self, host: DnsHostInfo, callback: ConnectCallback, plain: bool) -> None:
        def done(conn: UpstreamConnection | None, reason: str) -> None:
            self.breakers.pending.release()
            callback(conn, reason)

        self.connect(host, done, plain)

    def _evict_one_idle(self) -> None:
        """Close the least recently used idle connection, freeing a slot for a waiter."""
        oldest: UpstreamConnection | None = None
        for conns in self.idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is not None:
            oldest.close()  # its on_closed() frees the slot and serves the waiter

    def _serve_waiters(self) -> None:
        cb = self.breakers
        while self.waiters and cb.connections.can_create():
            host, callback, plain = self.waiters.popleft()
            self._start(host, callback, plain)

    async def _connect(self, host: DnsHostInfo, callback: ConnectCallback, plain: bool) -> None:
        addresses = [a[0] for a in host.addresses]
        kwargs: dict[str, Any] = {}
        tls = None if plain else self.tls
        name = ""
        if tls is not None:
            name = host.host
            kwargs = {
                "ssl": self.tls_context,
                "server_hostname": server_hostname(tls, name),  # Python sends no SNI for an IP
                "ssl_handshake_timeout": self.connect_timeout,
            }
        try:
            transport, conn = await asyncio.wait_for(
                happy_eyeballs_connect(
                    self.loop,
                    lambda: UpstreamConnection(self, host, name),
                    addresses,
                    host.port,
                    **kwargs,
                ),
                self.connect_timeout,
            )
            if tls is not None:
                self.count("ssl.handshake")
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is not None and ssl_object.session_reused:
                    self.count("ssl.session_reused")
                if self.tls_context is not None and not self.tls_context.check_hostname:
                    try:
                        check_san(transport.get_extra_info("peercert"), name, tls.verify_san)
                    except SanMismatch:
                        transport.abort()  # never used for a request
                        raise
                assert self.tls_context is not None
                self.tls_context.remember(
                    server_hostname(tls, name) or "", transport.get_extra_info("ssl_object")
                )
        except ssl.SSLError as exc:
            self._connect_failed(host)
            self.count("ssl." + failure_kind(exc))
            callback(None, "tls:" + failure_reason(exc))
            return
        except TimeoutError:
            self._connect_failed(host)
            self.st_cx_connect_timeout.value += 1
            callback(None, "timeout")
            return
        except OSError as err:  # not `exc`: mypyc types a name by its first binding
            self._connect_failed(host)
            callback(None, err.strerror or str(err))
            return
        if conn.state == CLOSED or conn.transport is None:
            # The origin closed it between connection_made and here: a failed connect, and
            # the slot reserved for it goes back now (on_closed saw it uncounted).
            self._connect_failed(host)
            callback(None, "connection termination")
            return
        # The slot reserved for this connect now belongs to the connection (Happy Eyeballs
        # losers never held one); on_closed() gives it back.
        conn.counted = True
        self.st_cx_total.value += 1
        self.active += 1
        self.st_cx_active.value = self.active
        host.stats.cx_total += 1
        host.stats.cx_active += 1
        callback(conn, "")

    def _connect_failed(self, host: DnsHostInfo) -> None:
        self.st_cx_connect_fail.value += 1
        host.stats.cx_connect_fail += 1
        self.breakers.connections.release()
        self._serve_waiters()

    def release(self, conn: UpstreamConnection) -> None:
        """Take ``conn`` back after a complete exchange; keep it idle if it can be reused."""
        if not conn.reusable() or self.closing or self.waiters:
            # With requests waiting at the connection limit, closing frees their slot.
            conn.close()
            return
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle[conn.key] = []
        if len(conns) >= self.max_idle_per_host:
            conn.close()
            return
        conn.mark_idle()
        conns.append(conn)
        if self.tls_context is not None and conn.tls_name and conn.transport is not None:
            self.tls_context.remember(
                server_hostname(self.tls, conn.tls_name) or "",  # type: ignore[arg-type]
                conn.transport.get_extra_info("ssl_object"),
            )

    def on_closed(self, conn: UpstreamConnection) -> None:
        """Connection lost (either side closed it)."""
        conn.transport = None
        if conn.counted:
            conn.counted = False
            self.active -= 1
            self.st_cx_active.value = self.active
            conn.host.stats.cx_active -= 1
            self.breakers.connections.release()
            self._serve_waiters()
        conns = self.idle.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.idle[conn.key]

    def _sweep(self) -> None:
        self.now = now = time.monotonic()
        for key in list(self.idle):
            conns = self.idle[key]
            keep = []
            for conn in conns:
                if conn.state == CLOSED:
                    continue
                if now - conn.idle_since > self.idle_timeout:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def close_idle(self) -> None:
        """Close every idle connection and stop pooling (shutdown)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
