"""``--workers N``: N worker processes share the listening ports (SO_REUSEPORT).

The parent binds nothing it serves: it reserves the listener ports (so port 0 resolves to one
port for every worker), starts the workers as ``dfproxy run --worker-index I``, restarts any
that dies, serves the admin port with figures merged over the workers (admin_supervisor.py;
each worker has a private admin port on loopback), and on SIGTERM/SIGINT passes the signal on
and waits.
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
from typing import Any

from dfproxy import loop as loops
from dfproxy.admin_supervisor import SupervisorAdmin
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
            argv += ["--access-log-flush-interval", str(a.access_log_flush_interval)]
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
        admin_server: SupervisorAdmin | None = None
        ports: dict[str, Any] = {"listen": self.ports[0], "listeners": {}}
        for spec, port in zip(self.config.listeners, self.ports, strict=True):
            ports["listeners"][spec.name] = port
        if self.admin is not None:
            admin_server = SupervisorAdmin(self)
            ports["admin"] = await admin_server.start(*self.admin)
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
            await admin_server.close()
        return 0

    def worker_list(self) -> list[dict[str, Any]]:
        """The workers, for the admin ``/workers``."""
        return [
            {
                "index": w.index,
                "pid": w.process.pid if w.process else None,
                "restarts": w.restarts,
                "admin_port": w.admin_port,
            }
            for w in self.workers
        ]
