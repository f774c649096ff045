"""The ``--workers`` supervisor's admin port: every figure covers all workers.

Each worker serves its own admin on a private loopback port; the supervisor asks them all
and merges: counters summed, gauges summed (flags by max), histograms merged by bucket
(``stats_views.merge``), ``/clusters`` hosts summed (``clusters_view.merge``), the rate series
summed second by second and the recent access-log entries interleaved by time. ``?worker=I``
on ``/stats``, ``/stats/prometheus`` and ``/clusters`` gives worker I's own view; ``/dns_cache``
lists each worker's cache (each worker has its own). Commands (``/drain_listeners``,
``/healthcheck/*``, ``/logging``, ``/reset_counters``) reach every worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from dfproxy import __version__, clusters_view, stats_views
from dfproxy.admin import clusters_reply, json_reply, limit_arg, stats_reply
from dfproxy.admin_http import AdminHttp, Query, Reply, arg
from dfproxy.recent import merge_entries, merge_series

if TYPE_CHECKING:
    from dfproxy.workers import Supervisor, Worker

FETCH_TIMEOUT = 5.0


class WorkerUnavailable(Exception):
    """A worker's admin did not answer (restarting, or not ready yet)."""


class SupervisorAdmin(AdminHttp):
    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.sup = supervisor
        self.started = time.time()
        self.routes.update(
            {
                "/ready": self.ready,
                "/stats": self.stats,
                "/stats/prometheus": self.prometheus,
                "/stats/raw": self.stats_raw,
                "/stats/history": self.history,
                "/access_log": self.access_log,
                "/clusters": self.clusters,
                "/dns_cache": self.per_worker_view,
                "/config_dump": self.config_dump,
                "/config_status": self.config_status,
                "/server_info": self.server_info,
                "/workers": self.workers,
                "/drain_listeners": self.drain_listeners,
                "/healthcheck/fail": self._command("/healthcheck/fail"),
                "/healthcheck/ok": self._command("/healthcheck/ok"),
                "/logging": self._command("/logging"),
                "/reset_counters": self._command("/reset_counters"),
            }
        )

    # -- talking to workers ---------------------------------------------------------------------

    async def fetch(self, worker: Worker, path: str, method: str = "GET") -> tuple[int, bytes]:
        """``method path`` on one worker's admin: (status, body)."""
        if not worker.admin_port:
            raise WorkerUnavailable(f"worker {worker.index} is not ready")
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", worker.admin_port)
                try:
                    writer.write(
                        f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                        "content-length: 0\r\nconnection: close\r\n\r\n".encode()
                    )
                    data = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise WorkerUnavailable(f"worker {worker.index}: {exc or type(exc).__name__}") from exc
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise WorkerUnavailable(f"worker {worker.index}: bad admin reply") from exc
        return status, body

    async def fetch_json(self, worker: Worker, path: str) -> Any:
        status, body = await self.fetch(worker, path)
        if status != 200:
            raise WorkerUnavailable(f"worker {worker.index}: {path} answered {status}")
        return json.loads(body)

    async def gather_json(self, path: str) -> list[Any]:
        """``path`` from every worker that answers (a restarting worker is left out)."""
        results = await asyncio.gather(
            *(self.fetch_json(w, path) for w in self.sup.workers), return_exceptions=True
        )
        return [r for r in results if not isinstance(r, BaseException)]

    def _worker(self, q: Query) -> Worker | None | str:
        """``?worker=I``: that worker; None for all; an error text for a bad index."""
        value = arg(q, "worker")
        if not value:
            return None
        try:
            return self.sup.workers[int(value)]
        except (ValueError, IndexError):
            return f"no worker {value!r}: workers are 0..{len(self.sup.workers) - 1}\n"

    async def _snapshot(self, q: Query) -> stats_views.Snapshot | str:
        worker = self._worker(q)
        if isinstance(worker, str):
            return worker
        if worker is not None:
            try:
                return stats_views.from_wire(await self.fetch_json(worker, "/stats/raw"))
            except WorkerUnavailable as exc:
                return f"{exc}\n"
        parts = await self.gather_json("/stats/raw")
        return stats_views.merge([stats_views.from_wire(p) for p in parts])

    # -- endpoints ------------------------------------------------------------------------------

    async def ready(self, q: Query) -> Reply:
        state = self.sup.state
        return (200 if state == "LIVE" else 503), "text/plain", f"{state}\n".encode()

    async def stats(self, q: Query) -> Reply:
        snap = await self._snapshot(q)
        if isinstance(snap, str):
            return 400, "text/plain", snap.encode()
        return stats_reply(snap, q)

    async def prometheus(self, q: Query) -> Reply:
        snap = await self._snapshot(q)
        if isinstance(snap, str):
            return 400, "text/plain", snap.encode()
        return stats_reply(snap, q, prometheus=True)

    async def stats_raw(self, q: Query) -> Reply:
        snap = await self._snapshot(q)
        if isinstance(snap, str):
            return 400, "text/plain", snap.encode()
        return json_reply(stats_views.to_wire(snap))

    async def history(self, q: Query) -> Reply:
        return json_reply(merge_series(await self.gather_json("/stats/history")))

    async def access_log(self, q: Query) -> Reply:
        limit = limit_arg(q)
        views = await self.gather_json(f"/access_log?limit={limit}")
        return json_reply(merge_entries(views, limit))

    async def clusters(self, q: Query) -> Reply:
        worker = self._worker(q)
        if isinstance(worker, str):
            return 400, "text/plain", worker.encode()
        if worker is not None:
            try:
                data = await self.fetch_json(worker, "/clusters?format=json")
            except WorkerUnavailable as exc:
                return 503, "text/plain", f"{exc}\n".encode()
        else:
            data = clusters_view.merge(await self.gather_json("/clusters?format=json"))
        return clusters_reply(data, q)

    async def per_worker_view(self, q: Query) -> Reply:
        """Each worker's own view side by side (each worker has its own DNS cache)."""
        return json_reply({"workers": await self._per_worker("/dns_cache")})

    async def _per_worker(self, path: str) -> list[dict[str, Any]]:
        results = await asyncio.gather(
            *(self.fetch_json(w, path) for w in self.sup.workers), return_exceptions=True
        )
        views = []
        for w, res in zip(self.sup.workers, results, strict=True):
            entry: dict[str, Any] = {"worker": w.index, "pid": w.process.pid if w.process else None}
            if isinstance(res, BaseException):
                entry["error"] = str(res) or type(res).__name__
            else:
                entry["view"] = res
            views.append(entry)
        return views

    async def config_dump(self, q: Query) -> Reply:
        # Every worker runs the same configuration: worker 0 answers for all.
        path = "/config_dump" + ("?" + urlencode(q, doseq=True) if q else "")
        try:
            status, body = await self.fetch(self.sup.workers[0], path)
        except WorkerUnavailable as exc:
            return 503, "text/plain", f"{exc}\n".encode()
        return status, "application/json" if status == 200 else "text/plain", body

    async def config_status(self, q: Query) -> Reply:
        """One view as a single process gives it: the version every worker runs (or
        "mixed" while a reload is under way), the latest rejection, and each worker's own."""
        views = await self._per_worker("/config_status")
        ok = [w["view"] for w in views if "view" in w]
        versions = {v["active"]["version"] for v in ok}
        rejected = [v["last_rejected"] for v in ok if v.get("last_rejected")]
        active = dict(ok[0]["active"]) if ok else {}
        if len(versions) > 1:
            active["version"] = "mixed"
        return json_reply(
            {
                "active": active,
                "last_rejected": max(rejected, key=lambda r: r.get("time", 0))
                if rejected
                else None,
                "workers": views,
            }
        )

    async def server_info(self, q: Query) -> Reply:
        return json_reply(
            {
                "version": __version__,
                "state": self.sup.state,
                "uptime_current_epoch": f"{int(time.time() - self.started)}s",
                "uptime_all_epochs": f"{int(time.time() - self.started)}s",
                "hot_restart_version": "disabled",
                "node": {"id": "dfproxy", "user_agent_name": "dfproxy"},
                "command_line_options": {"argv": sys.argv, "concurrency": len(self.sup.workers)},
                "config_version": self.sup.config.version,
            }
        )

    async def workers(self, q: Query) -> Reply:
        return 200, "application/json", json.dumps(self.sup.worker_list()).encode()

    async def drain_listeners(self, q: Query) -> Reply:
        """Every worker stops accepting; the supervisor then answers /ready with DRAINING."""
        if self.sup.state == "LIVE":
            self.sup.state = "DRAINING"
        await self._broadcast("/drain_listeners")
        return 200, "text/plain", b"OK\n"

    async def _broadcast(self, path: str) -> list[tuple[int, bytes] | BaseException]:
        return await asyncio.gather(
            *(self.fetch(w, path, "POST") for w in self.sup.workers), return_exceptions=True
        )

    def _command(self, path: str) -> Any:
        async def run(q: Query) -> Reply:
            full = path + ("?" + urlencode(q, doseq=True) if q else "")
            results = await self._broadcast(full)
            first = next((r for r in results if not isinstance(r, BaseException)), None)
            if first is None:
                return 503, "text/plain", b"no worker answered\n"
            return first[0], "text/plain", first[1]

        return run
