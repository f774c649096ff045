"""One proxy process: builds the runtime, listens, serves admin, drains on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dfproxy import _native, tasks
from dfproxy.access_log import FLUSH_INTERVAL, AccessLog
from dfproxy.admin import AdminServer
from dfproxy.config.model import ProxyConfig
from dfproxy.listener import Listener
from dfproxy.reload import ConfigWatcher
from dfproxy.runtime import Runtime
from dfproxy.stats import StatsStore

log = logging.getLogger("dfproxy.server")


@dataclass
class Settings:
    """Process-level settings from the command line."""

    admin: tuple[str, int] | None = ("127.0.0.1", 19000)
    access_log: str | None = None
    access_log_format: str = "envoy"
    access_log_flush_interval: float = FLUSH_INTERVAL
    ports_file: str | None = None
    drain_timeout: float = 15.0
    reuse_port: bool = False
    worker_index: int | None = None
    argv: list[str] = field(default_factory=list)
    # Reload: how to read the config again (None: embedded default, nothing to reload) and
    # which files to watch.
    loader: Callable[[], ProxyConfig] | None = None
    watch_paths: list[str] = field(default_factory=list)


def write_ports_file(path: str, ports: dict[str, Any]) -> None:
    """Write the bound ports atomically (tests and scripts wait for this file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, path)


class Server:
    """Runs one configuration in this process until told to stop."""

    def __init__(self, settings: Settings, config: ProxyConfig) -> None:
        self.settings = settings
        self.config = config
        self.state = "PRE_INITIALIZING"
        self.stats = StatsStore()
        self.runtime: Runtime | None = None
        self.admin: AdminServer | None = None
        self.access_log: AccessLog | None = None
        self._stop: asyncio.Event | None = None
        self.watcher: ConfigWatcher | None = None
        self.loaded_at = time.time()
        self.rejected: dict[str, Any] | None = None  # the last config that failed to load
        self.reloads = self.stats.counter("server.config_reload")
        self.reload_failures = self.stats.counter("server.config_reload_rejected")
        self._reloading = False
        self._reload_again = False

    async def serve(self) -> int:
        """Start, run until SIGTERM/SIGINT, drain, and return the exit code."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.settings.access_log:
            self.access_log = AccessLog(
                self.settings.access_log,
                self.settings.access_log_format,
                self.settings.access_log_flush_interval,
            )
        self.runtime = Runtime(
            self.config, loop, self.stats, self.access_log, self.settings.worker_index
        )
        ports: dict[str, Any] = {"listeners": {}}
        for spec, listener in self.runtime.listeners:
            try:
                port = await listener.start(
                    spec.host, spec.port, reuse_port=self.settings.reuse_port
                )
            except OSError as exc:
                log.error(
                    "cannot listen on %s:%d for %s: %s",
                    spec.host,
                    spec.port,
                    spec.name,
                    exc.strerror or exc,
                )
                self.runtime.close()
                if self.access_log is not None:
                    self.access_log.close()
                return 1
            ports["listeners"][spec.name] = port
            ports.setdefault("listen", port)
            log.info("listener %s on %s:%d", spec.name, spec.host, port)
        if self.settings.admin is not None:
            self.admin = AdminServer(self)
            host, port = self.settings.admin
            ports["admin"] = await self.admin.start(host, port)
            log.info("admin on %s:%d", host, ports["admin"])
        log.info(
            "hot path %s (%s)", "compiled" if _native.active else "interpreted", _native.reason
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.settings.loader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            if self.settings.watch_paths:
                self.watcher = ConfigWatcher(self.settings.watch_paths, self.request_reload, loop)
        self.state = "LIVE"
        if self.settings.ports_file:
            write_ports_file(self.settings.ports_file, ports)
        await self._stop.wait()
        await self.drain()
        return 0

    def drain_listeners(self) -> None:
        """Admin /drain_listeners: every listener stops accepting; in-flight work finishes."""
        if self.runtime is None or self.state != "LIVE":
            return
        self.state = "DRAINING"
        for _, listener in self.runtime.listeners:
            listener.start_draining()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP or a file change: reload in the background (one at a time)."""
        if self.state != "LIVE":
            return
        if self._reloading:
            self._reload_again = True  # read the files once more when this reload ends
        else:
            tasks.spawn(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Validate the new configuration and swap it in whole, or keep the old one.

        Nothing in flight is dropped: open connections keep their listener (which now routes
        with the new table) and every exchange keeps the route and cluster it started with.
        Listeners the new config removes drain; clusters it no longer uses close after the
        drain timeout; identical clusters are kept with their warm DNS cache and pool.
        """
        assert self.settings.loader is not None and self.runtime is not None
        self._reloading = True
        try:
            try:
                config = self.settings.loader()
            except Exception as exc:
                errors = getattr(exc, "errors", None) or [str(exc)]
                self.rejected = {"time": time.time(), "errors": list(errors)}
                self.reload_failures.value += 1
                log.error(
                    "configuration rejected, still serving version %s:\n%s",
                    self.config.version,
                    "\n".join(f"  - {e}" for e in errors),
                )
                return False
            if config.version == self.config.version:
                log.info("configuration unchanged (version %s)", config.version)
                return True
            loop = asyncio.get_running_loop()
            new = Runtime(
                config,
                loop,
                self.stats,
                self.access_log,
                self.settings.worker_index,
                previous=self.runtime,
            )
            try:
                for spec, listener in new.new_listeners:
                    await listener.start(spec.host, spec.port, reuse_port=self.settings.reuse_port)
            except OSError as exc:
                new.discard()
                self.rejected = {
                    "time": time.time(),
                    "version": config.version,
                    "errors": [f"cannot listen: {exc}"],
                }
                self.reload_failures.value += 1
                log.error("configuration %s rejected: cannot listen: %s", config.version, exc)
                return False
            new.activate()
            for listener in new.retired_listeners:
                log.info("listener %s removed by the new configuration; draining", listener.name)
                listener.start_draining()
                loop.call_later(self.settings.drain_timeout, self._retire, listener)
            for cluster in new.retired_clusters:
                loop.call_later(self.settings.drain_timeout, cluster.close)
            old_version = self.config.version
            self.runtime, self.config = new, config
            self.loaded_at = time.time()
            self.reloads.value += 1
            log.info("configuration %s active (was %s)", config.version, old_version)
            return True
        finally:
            self._reloading = False
            if self._reload_again:
                self._reload_again = False
                self.request_reload()

    @staticmethod
    def _retire(listener: Listener) -> None:
        """The drain timeout of a removed listener is over: end what is still open (its
        timeouts stop with its sweep), as a shutdown drain does."""
        for conn in list(listener.connections):
            conn.abort()
        listener.close()

    def config_status(self) -> dict[str, Any]:
        """The active configuration and the last rejected one (admin)."""
        return {
            "active": {
                "version": self.config.version,
                "source": self.config.source,
                "loaded_at": self.loaded_at,
            },
            "last_rejected": self.rejected,
        }

    async def drain(self) -> None:
        """Stop accepting; wait for in-flight requests and tunnels up to the drain timeout."""
        self.state = "DRAINING"
        assert self.runtime is not None
        if self.watcher is not None:
            self.watcher.close()
        listeners = [listener for _, listener in self.runtime.listeners]
        for listener in listeners:
            listener.start_draining()
        drained = asyncio.Event()

        def check() -> None:
            if not any(listener.connections for listener in listeners):
                drained.set()

        for listener in listeners:
            listener.on_connection_closed = check
        check()
        try:
            await asyncio.wait_for(drained.wait(), self.settings.drain_timeout)
        except TimeoutError:
            pass
        left = sum(len(listener.connections) for listener in listeners)
        if left:
            log.warning("drain deadline passed with %d connections open; closing them", left)
            for listener in listeners:
                for conn in list(listener.connections):
                    conn.abort()
        self.runtime.close()
        if self.admin is not None:
            await self.admin.close()
        pending = tasks.cancel_all()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if self.access_log is not None:
            self.access_log.close()
        log.info("drained, exiting")

    # -- views for the admin server -------------------------------------------------------------

    def dns_cache_view(self) -> dict[str, Any]:
        assert self.runtime is not None
        import time

        now = time.monotonic()
        caches = []
        for cluster in self.runtime.clusters.values():
            cache = cluster.dns_cache
            caches.append(
                {
                    "name": cache.config.name,
                    "num_hosts": len(cache.hosts),
                    "pending": cache.pending,
                    "hosts": [
                        {
                            "host": info.key,
                            "addresses": [a[0] for a in info.addresses],
                            "ttl": info.ttl,
                            "status": info.last_status or "resolving",
                            "failures": info.failures,
                            "last_used_seconds_ago": round(now - info.last_used, 3),
                            "resolved_seconds_ago": round(now - info.resolved_at, 3)
                            if info.resolved
                            else None,
                            "next_refresh_in_seconds": round(info.next_refresh_at - now, 3)
                            if info.next_refresh_at
                            else None,
                        }
                        for info in cache.hosts.values()
                    ],
                }
            )
        return {"dns_caches": caches}
