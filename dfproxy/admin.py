"""The admin server of one process: Envoy's admin endpoints and the dashboard's data.

Not on the hot path: handlers read the runtime and the stats store when asked. Shapes follow
Envoy's admin interface (``/ready``, ``/stats``, ``/clusters``, ``/server_info``, ...); the
rendering lives in ``stats_views`` and ``clusters_view`` so the ``--workers`` supervisor
prints the same shapes from its workers' merged figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from dfproxy import __version__, _native, clusters_view, stats_views
from dfproxy.admin_http import AdminHttp, Query, Reply, arg
from dfproxy.config.dump import config_dump, filter_names
from dfproxy.recent import RECENT_ENTRIES, RateSeries, RecentRequests

if TYPE_CHECKING:
    from dfproxy.server import Server

log = logging.getLogger("dfproxy.admin")


PROMETHEUS = "text/plain; version=0.0.4"


def json_reply(data: Any) -> Reply:
    return 200, "application/json", json.dumps(data, indent=1).encode()


def stats_reply(snap: stats_views.Snapshot, q: Query, prometheus: bool = False) -> Reply:
    """/stats in Envoy's text or JSON form (or /stats/prometheus), with ``filter=`` and
    ``usedonly``."""
    pattern = arg(q, "filter")
    rx = None
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            return 400, "text/plain", f"invalid regex: {exc}\n".encode()
    snap = stats_views.select(snap, rx, "usedonly" in q)
    if prometheus or arg(q, "format") == "prometheus":
        return 200, PROMETHEUS, stats_views.render_prometheus(snap).encode()
    if arg(q, "format") == "json":
        return json_reply(stats_views.render_json(snap))
    return 200, "text/plain", stats_views.render_text(snap).encode()


def clusters_reply(data: dict[str, Any], q: Query) -> Reply:
    if arg(q, "format") == "json":
        return json_reply(data)
    return 200, "text/plain", clusters_view.render_text(data).encode()


def limit_arg(q: Query) -> int:
    try:
        return max(0, min(RECENT_ENTRIES, int(arg(q, "limit", str(RECENT_ENTRIES)))))
    except ValueError:
        return RECENT_ENTRIES


class AdminServer(AdminHttp):
    """Serves the admin endpoints for one process."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.started = time.time()
        self.routes.update(
            {
                "/ready": self.ready,
                "/stats": self.stats,
                "/stats/prometheus": self.prometheus,
                "/stats/raw": self.stats_raw,
                "/stats/history": self.stats_history,
                "/access_log": self.access_log,
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
        )
        self.healthy = True
        log_ring = server.access_log.recent if server.access_log is not None else None
        self.recent = RecentRequests(log_ring)
        self.series: RateSeries | None = None

    async def start(self, host: str, port: int) -> int:
        self.series = RateSeries(self._rates, asyncio.get_running_loop())
        return await super().start(host, port)

    async def close(self) -> None:
        if self.series is not None:
            self.series.close()
        self.recent.close()
        await super().close()

    def _rates(self) -> list[int]:
        """Cumulative [downstream_rq_total, 1xx..5xx] over every listener (the series)."""
        runtime = self.server.runtime
        total = [0] * 6
        for _, listener in runtime.listeners if runtime is not None else ():
            total[0] += listener.st_rq_total.value
            for i, c in enumerate(listener.st_rq_class):
                total[i + 1] += c.value
        return total

    # -- endpoints ------------------------------------------------------------------------------

    async def ready(self, q: Query) -> Reply:
        state = self.server.state
        return (200 if state == "LIVE" else 503), "text/plain", f"{state}\n".encode()

    async def stats(self, q: Query) -> Reply:
        return stats_reply(stats_views.snapshot(self.server.stats), q)

    async def prometheus(self, q: Query) -> Reply:
        return stats_reply(stats_views.snapshot(self.server.stats), q, prometheus=True)

    async def stats_raw(self, q: Query) -> Reply:
        """Every stat with histogram bucket counts (what the supervisor merges)."""
        return json_reply(stats_views.to_wire(stats_views.snapshot(self.server.stats)))

    async def stats_history(self, q: Query) -> Reply:
        """Requests per second by status class, one sample a second (dfproxy.recent)."""
        assert self.series is not None
        return json_reply(self.series.view())

    async def access_log(self, q: Query) -> Reply:
        """The last access-log entries (``limit=``, at most 100), oldest first, in the JSON
        access-log format; without a configured access log entries are kept only while
        someone polls this endpoint."""
        runtime = self.server.runtime
        listeners = [listener for _, listener in runtime.listeners] if runtime else []
        self.recent.want(listeners, asyncio.get_running_loop())
        return json_reply(self.recent.view(limit_arg(q)))

    async def clusters(self, q: Query) -> Reply:
        assert self.server.runtime is not None
        return clusters_reply(clusters_view.cluster_statuses(self.server.runtime), q)

    async def dns_cache(self, q: Query) -> Reply:
        return json_reply(self.server.dns_cache_view())

    async def server_info(self, q: Query) -> Reply:
        info: dict[str, Any] = {
            "version": __version__,
            "state": self.server.state,
            "uptime_current_epoch": f"{int(time.time() - self.started)}s",
            "uptime_all_epochs": f"{int(time.time() - self.started)}s",
            "hot_restart_version": "disabled",
            "node": {"id": "dfproxy", "user_agent_name": "dfproxy"},
            "command_line_options": {"argv": sys.argv, "concurrency": 1},
            "config_version": self.server.config.version,
            "hot_path": {"compiled": _native.active, "why": _native.reason},
        }
        return json_reply(info)

    async def config_dump(self, q: Query) -> Reply:
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

    async def drain_listeners(self, q: Query) -> Reply:
        """Envoy's /drain_listeners: stop accepting and let open connections finish (the
        process keeps running; /ready then answers DRAINING)."""
        self.server.drain_listeners()
        return 200, "text/plain", b"OK\n"

    async def config_status(self, q: Query) -> Reply:
        return 200, "application/json", json.dumps(self.server.config_status(), indent=1).encode()

    async def healthcheck_fail(self, q: Query) -> Reply:
        self.healthy = False
        return 200, "text/plain", b"OK\n"

    async def healthcheck_ok(self, q: Query) -> Reply:
        self.healthy = True
        return 200, "text/plain", b"OK\n"

    async def logging(self, q: Query) -> Reply:
        level = q.get("level", [""])[0].upper()
        if level:
            if level not in ("TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"):
                return 400, "text/plain", b"unknown level\n"
            level = {"TRACE": "DEBUG", "WARN": "WARNING"}.get(level, level)
            logging.getLogger("dfproxy").setLevel(level)
        current = logging.getLevelName(logging.getLogger("dfproxy").getEffectiveLevel())
        return 200, "text/plain", f"active loggers:\n  dfproxy: {current.lower()}\n".encode()

    async def reset_counters(self, q: Query) -> Reply:
        self.server.stats.reset_counters()
        return 200, "text/plain", b"OK\n"
