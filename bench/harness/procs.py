"""Starting and stopping the benchmark's long-running processes (by PID, always bounded)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_S = 5.0


@dataclass
class Proc:
    """One process the harness started, in its own session (so its process group is its PID)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 8) -> str:
        """The last lines of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """argv prefixed with `taskset -c CPU` (taskset execs, so the PID stays the program's)."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Procs:
    """Registry of every long-running process started; `stop_all()` belongs in a `finally`."""

    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cpu: int | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout`; always reaps the leader."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
        # Leftover members of the group (e.g. an nginx worker whose master died) keep the
        # group ID allocated, so this reaches only processes started here.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], proc: Proc, timeout: float) -> bool:
    """Poll `check` until it holds, `proc` exits, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not proc.alive():
            return False
        time.sleep(0.1)
    return check()


def wait_tcp(proc: Proc, host: str, port: int, timeout: float = 15.0) -> bool:
    return wait_until(lambda: tcp_open(host, port), proc, timeout)


def session_cpu_seconds(sid: int) -> float:
    """CPU time (user + system) of every live process in session ``sid``: a proxy and its
    workers (each Proc is started in its own session). Contention on a shared machine moves
    this far less than it moves throughput, so it is reported next to req/s."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        # after "pid (comm) ": state ppid pgrp session ... utime(12) stime(13)
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
