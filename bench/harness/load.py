"""Load generators: wrk (request rate and latency) and curl (bulk transfer), pinned to CPU 1."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from harness.procs import pinned
from harness.servers import BENCH_DIR, LOAD_CPU, LOOPBACK

WRK_DIR = BENCH_DIR / "wrk"
WRK_SOCKET_TIMEOUT = "5s"
WRK_GRACE_S = 30.0
CURL_TIMEOUT_S = 120.0


class LoadError(Exception):
    """The load generator itself failed (not the peer answering errors)."""


@dataclass(frozen=True)
class WrkRequest:
    """What wrk sends: a script, its arguments, extra headers, and where it connects."""

    port: int
    script: str
    args: tuple[str, ...]
    headers: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    socket_errors: int
    status_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int | None = None  # counted by scripts with a response() hook (checked.lua)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


def wrk_argv(req: WrkRequest, duration_s: float, connections: int) -> list[str]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency"]
    argv += ["--timeout", WRK_SOCKET_TIMEOUT, "-s", str(WRK_DIR / req.script)]
    for header in req.headers:
        argv += ["-H", header]
    return pinned([*argv, req.url, "--", *req.args], LOAD_CPU)


def parse_wrk(stdout: str) -> WrkResult:
    """The numbers from the `WRKJSON {...}` line printed by the scripts' done()."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise LoadError(f"no WRKJSON line in wrk output: {stdout.strip()[-300:]!r}")
    d = json.loads(line.removeprefix("WRKJSON "))
    socket_errors = sum(d[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return WrkResult(
        requests=d["requests"],
        duration_s=d["duration_us"] / 1e6,
        bytes=d["bytes"],
        socket_errors=socket_errors,
        status_errors=d["status_errors"],
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        non_2xx=d.get("non_2xx"),
    )


def run_wrk(req: WrkRequest, duration_s: float, connections: int) -> WrkResult:
    argv = wrk_argv(req, duration_s, connections)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration_s + WRK_GRACE_S:.0f}s") from exc
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return parse_wrk(done.stdout)


@dataclass(frozen=True)
class CurlResult:
    exit_code: int
    http_code: int
    connect_code: int
    size: int
    speed: float  # bytes per second

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and 200 <= self.http_code < 300


def curl_argv(url: str, proxy_port: int | None, extra: Sequence[str] = ()) -> list[str]:
    fmt = "%{http_code} %{http_connect} %{size_download} %{speed_download}"
    argv = ["curl", "-s", "-o", "/dev/null", "-w", fmt, "--max-time", str(int(CURL_TIMEOUT_S))]
    if proxy_port is None:
        argv += ["--noproxy", "*"]
    else:
        argv += ["-x", f"http://{LOOPBACK}:{proxy_port}"]
    return pinned([*argv, *extra, url], LOAD_CPU)


def run_curl(url: str, proxy_port: int | None, extra: Sequence[str] = ()) -> CurlResult:
    argv = curl_argv(url, proxy_port, extra)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CURL_TIMEOUT_S + 10, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"curl did not finish within {CURL_TIMEOUT_S + 10:.0f}s") from exc
    fields = done.stdout.split()
    if len(fields) != 4:
        raise LoadError(f"unexpected curl output {done.stdout!r} (exit {done.returncode})")
    return CurlResult(
        exit_code=done.returncode,
        http_code=int(fields[0]),
        connect_code=int(fields[1]),
        size=int(fields[2]),
        speed=float(fields[3]),
    )


def curl_sample(url: str, proxy_port: int | None, extra: Sequence[str] = ()) -> str:
    """One request's status and the start of its body, to explain error responses."""
    argv = curl_argv(url, proxy_port, extra)
    i = argv.index("-o")
    argv[i : i + 4] = ["-o", "-", "-w", "\n%{http_code}"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "sample request timed out"
    body, _, code = done.stdout.decode(errors="replace").rpartition("\n")
    snippet = " ".join(body.split())[:80]
    return f"sample: HTTP {code or '?'} {snippet!r}" if snippet else f"sample: HTTP {code or '?'}"
