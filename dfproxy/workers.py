"""``--workers N``: N worker processes share the listening ports (SO_REUSEPORT).

The parent binds nothing it serves: it reserves the listener ports (so port 0 resolves to one
port for every worker), starts the workers as ``dfproxy run --worker-index I``, restarts any
that dies, serves the admin port with figures summed over the workers (each worker has a
private admin port on loopback), and on SIGTERM/SIGINT passes the signal on and waits.
Each worker keeps its own DNS cache (as each Envoy worker keeps its own connection pools);
see docs/workers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
from typing import Any

from dfproxy import loop as loops
from dfproxy.config.model import ProxyConfig
from dfproxy.server import write_ports_file

log = logging.getLogger("dfproxy.workers")

RESTART_BACKOFF = 1.0
READY_TIMEOUT = 30.0


def die_with_supervisor() -> None:
    """In a worker: get SIGTERM when the supervisor dies (Linux PR_SET_PDEATHSIG), so a
    killed supervisor never leaves workers holding the port. Exits if it is already gone."""
    expected = os.environ.get("DFPROXY_SUPERVISOR_PID")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("cannot ask to be told of the supervisor's death on this platform")
    if expected is not None and os.getppid() != int(expected):
        log.error("supervisor %s is gone; worker exiting", expected)
        raise SystemExit(0)


class Worker:
    __slots__ = ("index", "process", "ports_file", "admin_port", "started", "restarts")

    def __init__(self, index: int, ports_file: str) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.ports_file = ports_file
        self.admin_port = 0
        self.started = 0.0
        self.restarts = 0


class Supervisor:
    """The parent process of ``--workers N``."""

    def __init__(
        self, args: argparse.Namespace, config: ProxyConfig, admin: tuple[str, int] | None
    ) -> None:
        self.args = args
        self.config = config
        self.admin = admin
        self.tmpdir = tempfile.mkdtemp(prefix="dfproxy-workers-")
        self.workers = [
            Worker(i, os.path.join(self.tmpdir, f"worker-{i}.json")) for i in range(args.workers)
        ]
        self.reserved: list[socket.socket] = []
        self.ports: list[int] = []
        self.stopping = False
        self.state = "PRE_INITIALIZING"

    def run(self) -> int:
        return loops.run(self._main(), "asyncio")

    def _reserve_ports(self) -> None:
        for spec in self.config.listeners:
            family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((spec.host, spec.port))
            self.reserved.append(sock)
            self.ports.append(sock.getsockname()[1])

    def _worker_argv(self, worker: Worker) -> list[str]:
        a = self.args
        argv = [sys.executable, "-m", "dfproxy", "run", "--worker-index", str(worker.index)]
        for path in a.config:
            argv += ["-c", path]
        first = self.config.listeners[0]
        host = f"[{first.host}]" if ":" in first.host else first.host
        argv += ["--listen", f"{host}:{self.ports[0]}", "--admin", "127.0.0.1:0"]
        argv += ["--ports-file", worker.ports_file, "--log-level", a.log_level]
        argv += ["--event-loop", a.event_loop, "--drain-timeout", str(a.drain_timeout)]
        for resolver in a.dns_resolver:
            argv += ["--dns-resolver", resolver]
        for text in a.allow_destination:
            argv += ["--allow-destination", text]
        for port in a.allow_connect_port:
            argv += ["--allow-connect-port", str(port)]
        if a.access_log:
            argv += ["--access-log", a.access_log, "--access-log-format", a.access_log_format]
        return argv

    async def _start(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.ports_file)
        env = dict(os.environ, DFPROXY_SUPERVISOR_PID=str(os.getpid()))
        worker.process = await asyncio.create_subprocess_exec(*self._worker_argv(worker), env=env)
        worker.started = time.monotonic()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and worker.process.returncode is None:
            try:
                with open(worker.ports_file) as f:  # noqa: ASYNC230 - tiny local file
                    worker.admin_port = int(json.load(f)["admin"])
                log.info("worker %d ready (pid %d)", worker.index, worker.process.pid)
                return
            except (FileNotFoundError, ValueError, KeyError):
                await asyncio.sleep(0.05)
        log.error("worker %d did not become ready", worker.index)

    def _forward_hup(self) -> None:
        """SIGHUP reloads every worker (each validates and swaps on its own)."""
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGHUP)

    async def _watch(self, worker: Worker) -> None:
        while not self.stopping:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                return
            log.error(
                "worker %d (pid %d) exited with %s; restarting",
                worker.index,
                worker.process.pid,
                code,
            )
            worker.restarts += 1
            await asyncio.sleep(RESTART_BACKOFF)
            await self._start(worker)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._reserve_ports()
        await asyncio.gather(*(self._start(w) for w in self.workers))
        for sock in self.reserved:
            sock.close()  # the workers hold the ports now
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        admin_server = None
        ports: dict[str, Any] = {"listen": self.ports[0], "listeners": {}}
        for spec, port in zip(self.config.listeners, self.ports, strict=True):
            ports["listeners"][spec.name] = port
        if self.admin is not None:
            admin_server = await asyncio.start_server(self._admin, *self.admin)
            ports["admin"] = admin_server.sockets[0].getsockname()[1]
        self.state = "LIVE"
        if self.args.ports_file:
            write_ports_file(self.args.ports_file, ports)
        watchers = [loop.create_task(self._watch(w)) for w in self.workers]
        await stop.wait()
        self.stopping = True
        self.state = "DRAINING"
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGTERM)
        await asyncio.gather(
            *(w.process.wait() for w in self.workers if w.process is not None),
            return_exceptions=True,
        )
        for t in watchers:
            t.cancel()
        if admin_server is not None:
            admin_server.close()
        return 0

    # -- admin: /ready here, everything else summed over the workers' own admin ports ---------

    async def _admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            url = urllib.parse.urlsplit(target)
            if url.path == "/ready":
                status = 200 if self.state == "LIVE" else 503
                body = f"{self.state}\n".encode()
                ctype = "text/plain"
            elif url.path == "/stats":
                status, ctype, body = 200, "text/plain", await self._summed_stats(url.query)
            elif url.path == "/config_dump":
                # Every worker runs the same configuration: worker 0 answers for all.
                status, ctype = 200, "application/json"
                body = await self._fetch(self.workers[0].admin_port, target)
            elif url.path == "/config_status":
                status, ctype = 200, "application/json"
                body = await self._config_status()
            elif url.path in ("/dns_cache", "/clusters"):
                status, ctype = 200, "application/json"
                body = await self._per_worker(url.path + "?format=json")
            elif url.path == "/workers":
                status, ctype = 200, "application/json"
                body = json.dumps(
                    [
                        {
                            "index": w.index,
                            "pid": w.process.pid if w.process else None,
                            "restarts": w.restarts,
                            "admin_port": w.admin_port,
                        }
                        for w in self.workers
                    ]
                ).encode()
            else:
                status, ctype, body = 404, "text/plain", b"invalid path\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            IndexError,
        ):
            pass
        finally:
            writer.close()

    async def _fetch(self, port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n".encode()
            )
            data = await reader.read()
        finally:
            writer.close()
        return data.split(b"\r\n\r\n", 1)[1]

    async def _per_worker(self, path: str) -> bytes:
        """Each worker's own JSON view, side by side (each worker has its own DNS cache)."""
        results = await asyncio.gather(
            *(self._fetch(w.admin_port, path) for w in self.workers), return_exceptions=True
        )
        views = []
        for w, res in zip(self.workers, results, strict=True):
            entry: dict[str, Any] = {"worker": w.index, "pid": w.process.pid if w.process else None}
            if isinstance(res, BaseException):
                entry["error"] = str(res) or type(res).__name__
            else:
                entry["view"] = json.loads(res)
            views.append(entry)
        return json.dumps({"workers": views}, indent=1).encode()

    async def _config_status(self) -> bytes:
        """One view as a single process gives it: the version every worker runs (or
        "mixed" while a reload is under way), the latest rejection, and each worker's own."""
        views = json.loads(await self._per_worker("/config_status"))["workers"]
        ok = [w["view"] for w in views if "view" in w]
        versions = {v["active"]["version"] for v in ok}
        rejected = [v["last_rejected"] for v in ok if v.get("last_rejected")]
        active = dict(ok[0]["active"]) if ok else {}
        if len(versions) > 1:
            active["version"] = "mixed"
        out = {
            "active": active,
            "last_rejected": max(rejected, key=lambda r: r.get("time", 0)) if rejected else None,
            "workers": views,
        }
        return json.dumps(out, indent=1).encode()

    async def _summed_stats(self, query: str) -> bytes:
        """Counters and gauges summed over workers (Envoy sums across its workers too)."""
        totals: dict[str, int] = {}
        results = await asyncio.gather(
            *(self._fetch(w.admin_port, f"/stats?format=json&{query}") for w in self.workers),
            return_exceptions=True,
        )
        for res in results:
            if isinstance(res, BaseException):
                continue
            for item in json.loads(res)["stats"]:
                if "name" not in item:
                    continue  # histograms: per worker only for now (not merged across workers)
                totals[item["name"]] = totals.get(item["name"], 0) + int(item["value"])
        return "".join(f"{k}: {v}\n" for k, v in sorted(totals.items())).encode()
