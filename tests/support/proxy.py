"""Run the proxy under test (``python -m dfproxy run``) as a real subprocess.

    p = ProxyProcess.launch(tmp_path, dns_resolver=dns.address, loop="uvloop")
    curl("-x", p.url, origin.url("/echo"))
    assert p.stop() == 0

Start-up: wait for the ports file (``{"listen": PORT, "admin": PORT}``), then poll
``GET /ready`` on the admin port until 200. stdout/stderr go to files (never pipes).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .clients import CurlResult, clean_env, curl

__all__ = [
    "EVENT_LOOPS",
    "FAKE_PROXY_ENTRY",
    "ProxyProcess",
    "ProxyStartError",
    "dfproxy_runnable",
    "proxy_command",
]

EVENT_LOOPS = ("uvloop", "asyncio")
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]
DFPROXY_ENTRY = ("-m", "dfproxy")
FAKE_PROXY_ENTRY = (str(Path(__file__).with_name("fake_proxy.py")),)
LOOPBACK_ALLOWED = ("--allow-destination", "127.0.0.0/8", "--allow-destination", "::1")
# The proxy flushes its access log once a second; a test waiting for a line would wait that
# long, so the tests' proxies flush every 20 ms (a hidden flag, same code path).
ACCESS_LOG_FLUSH_INTERVAL = "0.02"


def dfproxy_runnable() -> bool:
    """Whether ``python -m dfproxy`` can exist at all (``dfproxy/__main__.py`` present)."""
    try:
        return importlib.util.find_spec("dfproxy.__main__") is not None
    except ImportError:
        return False


def proxy_command(
    *,
    ports_file: Path,
    access_log: Path,
    dns_resolver: str | None,
    loop: str = "uvloop",
    log_level: str = "debug",
    extra_args: Sequence[str] = (),
    entry: Sequence[str] = DFPROXY_ENTRY,
) -> list[str]:
    """``[python, *entry, "run", --listen 127.0.0.1:0, --admin 127.0.0.1:0, --ports-file,
    --dns-resolver (unless None), LOOPBACK_ALLOWED (unless -c), --event-loop, --log-level,
    --access-log, --access-log-flush-interval, *extra_args]``."""
    cmd = [
        sys.executable,
        *entry,
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--ports-file",
        str(ports_file),
    ]
    if dns_resolver is not None:
        cmd += ["--dns-resolver", dns_resolver]
    if not {"-c", "--config"} & set(extra_args):
        # The embedded default denies loopback destinations (docs/access-control.md); the
        # tests' origins are on loopback.
        cmd += LOOPBACK_ALLOWED
    cmd += [
        "--event-loop",
        loop,
        "--log-level",
        log_level,
        "--access-log",
        str(access_log),
        "--access-log-flush-interval",
        ACCESS_LOG_FLUSH_INTERVAL,
        *extra_args,
    ]
    return cmd


class ProxyStartError(RuntimeError):
    pass


class ProxyProcess:
    """One proxy subprocess. Build with ``launch()`` (or the ``proxy``/``proxy_factory``
    fixtures); ``start()`` waits for readiness."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workdir: Path,
        ports_file: Path,
        access_log: Path,
        name: str = "proxy",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.ports_file = ports_file
        self.access_log = access_log
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.env = clean_env({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.port = 0
        self.admin_port = 0
        self.ports: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @classmethod
    def launch(
        cls,
        workdir: Path,
        *extra_args: str,
        dns_resolver: str | None,
        loop: str = "uvloop",
        log_level: str = "debug",
        name: str = "proxy",
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        timeout: float = STARTUP_TIMEOUT,
        entry: Sequence[str] = DFPROXY_ENTRY,
    ) -> ProxyProcess:
        """Build the standard command line and start it (waiting for /ready if asked)."""
        if loop not in EVENT_LOOPS:
            raise ValueError(f"loop must be one of {EVENT_LOOPS}")
        workdir.mkdir(parents=True, exist_ok=True)
        ports_file = workdir / f"{name}.ports.json"
        access_log = workdir / f"{name}.access.log"
        argv = proxy_command(
            ports_file=ports_file,
            access_log=access_log,
            dns_resolver=dns_resolver,
            loop=loop,
            log_level=log_level,
            extra_args=extra_args,
            entry=entry,
        )
        p = cls(
            argv,
            workdir=workdir,
            ports_file=ports_file,
            access_log=access_log,
            name=name,
            env=env,
        )
        p.start(wait_ready=wait_ready, timeout=timeout)
        return p

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, wait_ready: bool = True, timeout: float = STARTUP_TIMEOUT) -> ProxyProcess:
        if self._proc is not None:
            raise RuntimeError("already started")
        with contextlib.suppress(FileNotFoundError):
            self.ports_file.unlink()
        with (
            open(self.stdout_path, "wb") as out,
            open(self.stderr_path, "wb") as err,
        ):
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO_ROOT,
                env=self.env,
            )
        if wait_ready:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.stop(signal.SIGKILL, timeout=5)
                raise
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for the ports file, then for ``GET /ready`` == 200 on the admin port (skipped
        when the proxy runs without admin, i.e. the ports file has no "admin")."""
        deadline = time.monotonic() + timeout
        while not self.ports:
            self._check_alive("before writing the ports file")
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(self.ports_file.read_text())
                if isinstance(data, dict) and "listen" in data:
                    self.ports = data
                    self.port = int(data["listen"])
                    self.admin_port = int(data.get("admin") or 0)
                    break
            if time.monotonic() >= deadline:
                raise ProxyStartError(self._failure(f"no ports file after {timeout:.1f}s"))
            time.sleep(0.02)
        if not self.admin_port:
            return
        last = "no answer"
        while True:
            self._check_alive("before /ready answered 200")
            try:
                status, body = self.admin_get("/ready", timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body[:200]!r}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                raise ProxyStartError(self._failure(f"/ready not 200 after {timeout:.1f}s: {last}"))
            time.sleep(0.02)

    def _check_alive(self, when: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            self.returncode = code
            raise ProxyStartError(self._failure(f"proxy exited with {code} {when}"))

    def _failure(self, what: str) -> str:
        return f"{what}\ncommand: {' '.join(self.argv)}\n--- stderr ---\n{self.stderr_tail(200)}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` (by PID), wait up to ``timeout``, then SIGKILL. Returns the exit code
        (negative signal number if killed by a signal, as subprocess reports). Idempotent."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("not started")
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        self.returncode = proc.returncode
        return proc.returncode

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own (raises subprocess.TimeoutExpired)."""
        assert self._proc is not None
        self.returncode = self._proc.wait(timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    def poll(self) -> int | None:
        assert self._proc is not None
        self.returncode = self._proc.poll()
        return self.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    # ------------------------------------------------------------------ info
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` -- for ``curl -x`` / proxies=."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def listener_ports(self) -> dict[str, int]:
        """Every listener's port by name (from the ports file's "listeners")."""
        return {str(k): int(v) for k, v in dict(self.ports.get("listeners") or {}).items()}

    def listener_url(self, name: str) -> str:
        """``http://127.0.0.1:PORT`` of the named listener (config files with several)."""
        return f"http://127.0.0.1:{self.listener_ports[name]}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 100) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def access_log_lines(self) -> list[str]:
        """Complete lines of the access log so far ([] if it does not exist yet)."""
        try:
            text = self.access_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        return [ln for ln in lines[:-1] if ln]  # drop a partial last line

    def access_log_json(self) -> list[Any]:
        """Access log lines parsed as JSON (for a JSON access-log format)."""
        return [json.loads(ln) for ln in self.access_log_lines()]

    def wait_for_access_log(self, n: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until at least ``n`` access-log lines exist (they may be written after the
        response); returns them."""
        deadline = time.monotonic() + timeout
        while len(lines := self.access_log_lines()) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(lines)} < {n} access log lines after {timeout}s")
            time.sleep(0.01)
        return lines

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """``GET path`` on the admin port -> (status, body)."""
        return self.admin_request("GET", path, timeout=timeout)

    def admin_request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def curl(self, *args: str, timeout: float = 30.0, **kwargs: Any) -> CurlResult:
        """``curl -x <this proxy> *args``."""
        return curl("-x", self.url, *args, timeout=timeout, **kwargs)

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"<ProxyProcess pid={pid} port={self.port} admin={self.admin_port}>"
