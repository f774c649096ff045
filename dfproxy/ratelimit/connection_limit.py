"""Downstream connection limits: in total per listener and per client address.

Gloo ListenerOptions ``connectionLimit`` (Envoy's connection_limit network filter) caps the
listener's active connections; ``maxActiveConnectionsPerClient`` (dfproxy extension) caps
those of one client address, so one client cannot take every slot. A connection over a
limit is refused right after accept, before anything is read: with ``delayBeforeClose`` it
is held (not read) for that long first, as Envoy does to slow down a client that reconnects
at once. Refusals count in ``downstream_cx_overflow`` (Envoy's listener overflow name) and
``downstream_cx_overflow_per_client``, and are logged at most once per LOG_INTERVAL.

The client address is the socket's peer: the PROXY protocol header has not been read yet
when the decision is made (that is the point of deciding early).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfproxy.config.schema.ratelimit import ConnectionLimit
    from dfproxy.downstream import HttpConnection
    from dfproxy.stats import Counter

log = logging.getLogger("dfproxy.connection_limit")

LOG_INTERVAL = 10.0


def peer_ip(peer: str) -> str:
    """``1.2.3.4:5`` / ``[::1]:5`` -> the address without the port."""
    host = peer.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


class ConnectionLimiter:
    """Admission of new connections for one listener. Pure bookkeeping: the caller closes."""

    __slots__ = (
        "max_total",
        "max_per_client",
        "delay_before_close",
        "per_client",
        "admitted",
        "st_overflow",
        "st_overflow_client",
        "_last_log",
        "_suppressed",
    )

    def __init__(self, st_overflow: Counter, st_overflow_client: Counter) -> None:
        self.max_total: int | None = None
        self.max_per_client: int | None = None
        self.delay_before_close = 0.0
        self.per_client: dict[str, int] = {}
        self.admitted: dict[HttpConnection, str] = {}
        self.st_overflow = st_overflow
        self.st_overflow_client = st_overflow_client
        self._last_log = 0.0
        self._suppressed = 0

    def configure(self, limit: ConnectionLimit | None) -> None:
        """New limits (a reload); connections already open are kept and still counted."""
        self.max_total = limit.max_active_connections if limit else None
        self.max_per_client = limit.max_active_connections_per_client if limit else None
        self.delay_before_close = limit.delay_before_close if limit else 0.0

    def admit(self, conn: HttpConnection, active: int) -> bool:
        """Count ``conn`` in, or return False (counted as an overflow) when over a limit.
        ``active``: the listener's open connections before this one."""
        ip = peer_ip(conn.peer)
        if self.max_total is not None and active >= self.max_total:
            self.st_overflow.value += 1
            self._log(ip, f"listener limit {self.max_total}")
            return False
        n = self.per_client.get(ip, 0)
        if self.max_per_client is not None and n >= self.max_per_client:
            self.st_overflow_client.value += 1
            self._log(ip, f"per-client limit {self.max_per_client}")
            return False
        self.per_client[ip] = n + 1
        self.admitted[conn] = ip
        return True

    def release(self, conn: HttpConnection) -> None:
        ip = self.admitted.pop(conn, None)
        if ip is None:
            return
        n = self.per_client.get(ip, 1) - 1
        if n > 0:
            self.per_client[ip] = n
        else:
            self.per_client.pop(ip, None)

    def _log(self, ip: str, why: str) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            self._suppressed += 1
            return
        more = (
            f" ({self._suppressed} more refused since the last report)" if self._suppressed else ""
        )
        log.warning("refused a connection from %s: %s reached%s", ip, why, more)
        self._last_log = now
        self._suppressed = 0
