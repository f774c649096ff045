"""The admin server: readiness, stats, clusters and the DNS cache, on a separate port.

Not on the hot path: a small asyncio-streams server with one handler per endpoint, shaped
after Envoy's admin interface (``/ready``, ``/stats``, ``/clusters``, ``/server_info``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from dfproxy import __version__
from dfproxy.config.dump import config_dump, filter_names
from dfproxy.http.local_reply import http_date
from dfproxy.http.status import status_line
from dfproxy.stats import BUCKETS_MS, StatsStore

if TYPE_CHECKING:
    from dfproxy.server import Server

log = logging.getLogger("dfproxy.admin")

Handler = Callable[[dict[str, list[str]]], Awaitable[tuple[int, str, bytes]]]
MAX_HEAD = 16 * 1024


class AdminServer:
    """Serves the admin endpoints for one process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.started = time.time()
        self.routes: dict[str, Handler] = {
            "/ready": self.ready,
            "/stats": self.stats,
            "/stats/prometheus": self.prometheus,
            "/clusters": self.clusters,
            "/dns_cache": self.dns_cache,
            "/server_info": self.server_info,
            "/healthcheck/fail": self.healthcheck_fail,
            "/healthcheck/ok": self.healthcheck_ok,
            "/logging": self.logging,
            "/reset_counters": self.reset_counters,
            "/config_status": self.config_status,
            "/config_dump": self.config_dump,
            "/drain_listeners": self.drain_listeners,
        }
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.healthy = True

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()  # idle keep-alive admin clients would hold wait_closed()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if len(head) > MAX_HEAD:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    await self._respond(writer, 400, "text/plain", b"bad request\n", close=True)
                    return
                method, target, version = parts
                lower = head.lower()
                # Honour Connection: close (and HTTP/1.0): a client reading to EOF waits else.
                close = version == "HTTP/1.0" or b"\r\nconnection: close" in lower
                url = urlsplit(target)
                handler = self.routes.get(url.path)
                if handler is None:
                    status, ctype, body = 404, "text/plain", b"invalid path\n"
                else:
                    try:
                        status, ctype, body = await handler(parse_qs(url.query))
                    except Exception:
                        log.exception("admin handler %s failed", url.path)
                        status, ctype, body = 500, "text/plain", b"internal error\n"
                await self._respond(
                    writer, status, ctype, body, close=close, head_only=method == "HEAD"
                )
                if close:
                    return
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        ctype: str,
        body: bytes,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        head = (
            status_line(status)
            + f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n".encode()
            + b"date: "
            + http_date()
            + b"\r\n"
            + (b"connection: close\r\n" if close else b"")
            + b"\r\n"
        )
        writer.write(head if head_only else head + body)
        await writer.drain()

    # -- endpoints ------------------------------------------------------------------------------

    async def ready(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        state = self.server.state
        return (200 if state == "LIVE" else 503), "text/plain", f"{state}\n".encode()

    async def stats(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        items = self.server.stats_items()
        pattern = q.get("filter", [None])[0]
        if pattern:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                return 400, "text/plain", f"invalid regex: {exc}\n".encode()
            items = [(k, v) for k, v in items if rx.search(k)]
        if "usedonly" in q:
            items = [(k, v) for k, v in items if v]
        histograms = sorted(self.server.stats.histograms.items())
        if pattern:
            histograms = [(k, h) for k, h in histograms if rx.search(k)]
        if "usedonly" in q:
            histograms = [(k, h) for k, h in histograms if h.count]
        if q.get("format", [""])[0] == "json":
            body = json.dumps(
                {
                    "stats": [{"name": k, "value": v} for k, v in items]
                    + [
                        {
                            "histograms": {
                                "name": k,
                                "count": h.count,
                                "sum_ms": h.sum,
                                "quantiles": {
                                    "P50": h.quantile(0.5),
                                    "P90": h.quantile(0.9),
                                    "P99": h.quantile(0.99),
                                },
                            }
                        }
                        for k, h in histograms
                    ]
                },
                indent=1,
            )
            return 200, "application/json", body.encode()
        lines = [f"{k}: {v}\n" for k, v in items]
        lines += [f"{k}: {h.summary()}\n" for k, h in histograms]
        return 200, "text/plain", "".join(lines).encode()

    async def prometheus(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        body = prometheus_text(self.server.stats)
        return 200, "text/plain; version=0.0.4", body.encode()

    async def clusters(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        data = self.server.clusters_view()
        if q.get("format", [""])[0] == "json":
            return 200, "application/json", json.dumps(data, indent=1).encode()
        lines: list[str] = []
        for c in data["cluster_statuses"]:
            name = c["name"]
            lines.append(f"{name}::observability_name::{name}")
            for k, v in c["circuit_breakers"].items():
                lines.append(f"{name}::default_priority::{k}::{v}")
            lines.append(f"{name}::added_via_api::true")
            for h in c["host_statuses"]:
                addr = h["address"]
                for stat, value in sorted(h["stats"].items()):
                    lines.append(f"{name}::{addr}::{stat}::{value}")
                lines.append(f"{name}::{addr}::hostname::{h['hostname']}")
                lines.append(f"{name}::{addr}::health_flags::healthy")
                lines.append(f"{name}::{addr}::weight::1")
        return 200, "text/plain", ("\n".join(lines) + "\n").encode()

    async def dns_cache(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.server.dns_cache_view(), indent=1).encode()

    async def server_info(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        info: dict[str, Any] = {
            "version": __version__,
            "state": self.server.state,
            "uptime_current_epoch": f"{int(time.time() - self.started)}s",
            "command_line_options": {"argv": sys.argv},
            "config_version": self.server.config.version,
        }
        return 200, "application/json", json.dumps(info, indent=1).encode()

    async def config_dump(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """Envoy's /config_dump shape; ``resource=`` keeps one field of each dump,
        ``name_regex=`` keeps the named items (listeners, clusters, route configs)."""
        dump = config_dump(self.server.config, self.server.loaded_at)
        pattern = q.get("name_regex", [None])[0]
        if pattern:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                return 400, "text/plain", f"invalid name_regex: {exc}\n".encode()
            dump = filter_names(dump, rx)
        resource = q.get("resource", [None])[0]
        if resource:
            items = [item for config in dump["configs"] for item in config.get(resource, [])]
            if not items and not any(resource in c for c in dump["configs"]):
                return 404, "text/plain", f"no resource {resource!r} in the dump\n".encode()
            dump = {"configs": items}
        return 200, "application/json", json.dumps(dump, indent=1).encode()

    async def drain_listeners(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """Envoy's /drain_listeners: stop accepting and let open connections finish (the
        process keeps running; /ready then answers DRAINING)."""
        self.server.drain_listeners()
        return 200, "text/plain", b"OK\n"

    async def config_status(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.server.config_status(), indent=1).encode()

    async def healthcheck_fail(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        self.healthy = False
        return 200, "text/plain", b"OK\n"

    async def healthcheck_ok(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        self.healthy = True
        return 200, "text/plain", b"OK\n"

    async def logging(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        level = q.get("level", [""])[0].upper()
        if level:
            if level not in ("TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"):
                return 400, "text/plain", b"unknown level\n"
            level = {"TRACE": "DEBUG", "WARN": "WARNING"}.get(level, level)
            logging.getLogger("dfproxy").setLevel(level)
        current = logging.getLevelName(logging.getLogger("dfproxy").getEffectiveLevel())
        return 200, "text/plain", f"active loggers:\n  dfproxy: {current.lower()}\n".encode()

    async def reset_counters(self, q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        self.server.stats.reset_counters()
        return 200, "text/plain", b"OK\n"


# Envoy's default tag extraction for the stat families dfproxy has: the name's second part
# becomes a label and leaves the metric name (cluster.<name>.x -> envoy_cluster_x{...}).
_TAGS = {
    "cluster": "envoy_cluster_name",
    "http": "envoy_http_conn_manager_prefix",
    "dns_cache": "envoy_dns_cache_name",
}
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _metric(name: str) -> tuple[str, str]:
    head, _, rest = name.partition(".")
    label = _TAGS.get(head)
    if label and "." in rest:
        value, _, stat = rest.partition(".")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f"envoy_{head}_{_UNSAFE.sub('_', stat)}", f'{label}="{escaped}"'
    return "envoy_" + _UNSAFE.sub("_", name), ""


def prometheus_text(stats: StatsStore) -> str:
    """The Prometheus text exposition format (0.0.4), one TYPE line per metric family."""
    families: dict[str, tuple[str, list[str]]] = {}

    def add(metric: str, kind: str, line: str) -> None:
        families.setdefault(metric, (kind, []))[1].append(line)

    for name, counter in stats.counters.items():
        metric, labels = _metric(name)
        add(metric, "counter", f"{metric}{{{labels}}} {counter.value}")
    for name, gauge in stats.gauges.items():
        metric, labels = _metric(name)
        add(metric, "gauge", f"{metric}{{{labels}}} {gauge.value}")
    for name, hist in stats.histograms.items():
        metric, labels = _metric(name)
        sep = "," if labels else ""
        cumulative = 0
        for bound, n in zip(BUCKETS_MS, hist.counts, strict=False):
            cumulative += n
            add(metric, "histogram", f'{metric}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        add(metric, "histogram", f'{metric}_bucket{{{labels}{sep}le="+Inf"}} {hist.count}')
        add(metric, "histogram", f"{metric}_sum{{{labels}}} {hist.sum:.17g}")
        add(metric, "histogram", f"{metric}_count{{{labels}}} {hist.count}")
    out = []
    for metric in sorted(families):
        kind, lines = families[metric]
        out.append(f"# TYPE {metric} {kind}\n")
        out.extend(line + "\n" for line in lines)
    return "".join(out)
