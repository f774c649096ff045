"""The scenarios, and running one scenario against one target (direct or a proxy) -> a Cell."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

from harness.load import (
    CurlResult,
    LoadError,
    WrkRequest,
    WrkResult,
    curl_sample,
    run_curl,
    run_wrk,
)
from harness.procs import Proc, session_cpu_seconds
from harness.servers import LOOPBACK, Dns, Origin

Form = Literal["absolute", "origin"]
Status = Literal["ok", "invalid", "n/a", "failed"]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Literal["wrk", "bulk"]
    summary: str
    form: Form = "absolute"  # request form sent to a proxy (direct always gets origin-form)
    hosts: int = 0  # > 0: requests cycle over that many names under bench.test
    close: bool = False  # "Connection: close": a new client connection per request
    tunnel: bool = False  # bulk through CONNECT

    @property
    def host_suffix(self) -> str:
        return f"n{self.hosts}.bench.test"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("keepalive-absolute", "wrk", "keep-alive, absolute-form GET of a 12-byte body"),
    Scenario(
        "keepalive-host", "wrk", "keep-alive, origin-form GET / with Host: origin", form="origin"
    ),
    Scenario("hosts-1000", "wrk", "keep-alive, absolute-form, 1,000 names", hosts=1000),
    Scenario("hosts-10000", "wrk", "keep-alive, absolute-form, 10,000 names", hosts=10000),
    Scenario("new-connection", "wrk", "absolute-form, Connection: close", close=True),
    Scenario("connect-bulk", "bulk", "256 MiB download through a CONNECT tunnel", tunnel=True),
    Scenario("get-bulk", "bulk", "256 MiB absolute-form GET (no CONNECT)"),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    connections: int
    bulk_runs: int = 3
    error_limit: float = 0.01  # a cell with more errors than this fraction is invalid


@dataclass
class Target:
    """Where the load goes: the origin itself ("direct") or a running proxy."""

    name: str
    port: int
    proc: Proc | None = None  # None for direct
    unsupported: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def proxy(self) -> bool:
        return self.proc is not None


@dataclass
class Context:
    origin: Origin
    dns: Dns
    settings: Settings


@dataclass
class Cell:
    scenario: str
    peer: str
    status: Status
    note: str = ""
    rps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mbps: float | None = None
    requests: int | None = None
    errors: int | None = None
    error_pct: float | None = None
    dns_queries: int | None = None
    dns_per_1k: float | None = None
    dns_floor_per_1k: float | None = None
    dns_by_type: dict[str, int] | None = None
    bulk_runs_mbps: list[float] | None = None
    cpu_us_per_req: float | None = None  # the proxy's CPU time per request (all its processes)


def _with_note(base: str, target: Target, scenario: Scenario) -> str:
    extra = target.notes.get(scenario.name)
    return f"{base}; {extra}" if extra else base


def _authority(scenario: Scenario, origin_port: int) -> str:
    if scenario.hosts:
        return f"h0.{scenario.host_suffix}:{origin_port}"
    return f"{LOOPBACK}:{origin_port}"


def wrk_request(target: Target, scenario: Scenario, origin_port: int) -> WrkRequest:
    form: Form = scenario.form if target.proxy else "origin"
    headers = ("Connection: close",) if scenario.close else ()
    if scenario.hosts:
        args = (str(scenario.hosts), scenario.host_suffix, str(origin_port), form)
        return WrkRequest(target.port, "hosts.lua", args, headers)
    authority = f"{LOOPBACK}:{origin_port}"
    path = f"http://{authority}/" if form == "absolute" else "/"
    return WrkRequest(target.port, "static.lua", (path, authority), headers)


def _probe_args(
    target: Target, scenario: Scenario, authority: str
) -> tuple[str, int | None, list[str]]:
    """curl's (url, proxy port, extra args) for one request shaped like the scenario's."""
    extra = ["-H", "Connection: close"] if scenario.close else []
    if target.proxy and scenario.form == "absolute":
        return f"http://{authority}/", target.port, extra
    return f"http://{LOOPBACK}:{target.port}/", None, [*extra, "-H", f"Host: {authority}"]


def probe(target: Target, scenario: Scenario, origin_port: int) -> CurlResult:
    """One request shaped like the scenario's first one, to tell 'unsupported' from 'slow'."""
    return run_curl(*_probe_args(target, scenario, _authority(scenario, origin_port)))


def sample_error(target: Target, scenario: Scenario, origin_port: int) -> str:
    """Status and body of the scenario's last request (e.g. the 10,000th name)."""
    authority = _authority(scenario, origin_port)
    if scenario.hosts:
        authority = f"h{scenario.hosts - 1}.{scenario.host_suffix}:{origin_port}"
    return curl_sample(*_probe_args(target, scenario, authority))


def _dns_counts(ctx: Context) -> Counter[str] | None:
    """The DNS server's counters: "total" and one per query type (A, AAAA, ...)."""
    try:
        stats = ctx.dns.stats()
    except (OSError, RuntimeError, ValueError):
        return None
    by_type = stats.get("by_type")
    counts: Counter[str] = Counter(by_type if isinstance(by_type, dict) else {})
    counts["total"] = int(str(stats.get("total", 0)))
    return counts


def _dns_delta(before: Counter[str] | None, after: Counter[str] | None) -> Counter[str] | None:
    if before is None or after is None:
        return None
    return after - before


def _wrk_cell(
    target: Target,
    scenario: Scenario,
    res: WrkResult,
    warm: WrkResult | None,
    dns: Counter[str] | None,
) -> Cell:
    cell = Cell(scenario.name, target.name, "ok")
    cell.rps, cell.requests, cell.errors = res.rps, res.requests, res.errors
    cell.p50_ms, cell.p90_ms, cell.p99_ms = res.p50_ms, res.p90_ms, res.p99_ms
    cell.error_pct = 100.0 * res.errors / max(1, res.requests)
    if dns is not None:
        sent = res.requests + (warm.requests if warm else 0) + 1
        cell.dns_queries = dns["total"]
        cell.dns_by_type = {k: v for k, v in dns.items() if k != "total"}
        cell.dns_per_1k = 1000.0 * dns["total"] / sent
        if scenario.hosts:
            names = min(scenario.hosts, max(res.requests, warm.requests if warm else 0))
            cell.dns_floor_per_1k = 1000.0 * names / sent
    return cell


# "Miss then hit": the measured run of a many-names cell is meant to see a warm cache. The
# first pass over the names goes at the DNS server's pace (bench/dns_server.py is Python, on
# the load CPU), and a 2 s warm-up did not finish it for 10,000 names: a third of them were
# still first lookups inside the measured run (dfproxy's dns_query_attempt during the run).
# So the warm-up goes on until it has completed one request per name, bounded.
MAX_EXTRA_WARMUPS = 5


def _warm_every_name(req: WrkRequest, warm: WrkResult, names: int, st: Settings) -> WrkResult:
    total = warm.requests
    for _ in range(MAX_EXTRA_WARMUPS):
        if total >= names:
            break
        total += run_wrk(req, st.warmup_s, st.connections).requests
    return replace(warm, requests=total)


def run_wrk_cell(target: Target, scenario: Scenario, ctx: Context) -> Cell:
    st = ctx.settings
    origin_port = ctx.origin.port
    dns_before = _dns_counts(ctx) if target.proxy else None
    first = probe(target, scenario, origin_port)
    if not first.ok:
        why = f"answers HTTP {first.http_code}" if first.http_code else "no HTTP response"
        return Cell(scenario.name, target.name, "n/a", _with_note(why, target, scenario))
    req = wrk_request(target, scenario, origin_port)
    warm = run_wrk(req, st.warmup_s, st.connections) if st.warmup_s > 0 else None
    if warm is not None and scenario.hosts:
        warm = _warm_every_name(req, warm, scenario.hosts, st)
    cpu_before = session_cpu_seconds(target.proc.pid) if target.proc else None
    res = run_wrk(req, st.duration_s, st.connections)
    cpu_after = session_cpu_seconds(target.proc.pid) if target.proc else None
    dns = _dns_delta(dns_before, _dns_counts(ctx) if dns_before is not None else None)
    cell = _wrk_cell(target, scenario, res, warm, dns)
    if cpu_before is not None and cpu_after is not None and res.requests:
        cell.cpu_us_per_req = (cpu_after - cpu_before) * 1e6 / res.requests
    if res.requests == 0:
        cell.status, cell.note = "failed", "no responses"
    elif (cell.error_pct or 0.0) > 100.0 * st.error_limit:
        cell.status = "invalid"
        cell.note = f"{cell.error_pct:.1f}% errors (HTTP >= 400: {res.status_errors}); "
        cell.note += sample_error(target, scenario, origin_port)
    return cell


def _bulk_failure(result: CurlResult, expected: int, tunnel: bool) -> str | None:
    if tunnel and result.connect_code and not 200 <= result.connect_code < 300:
        return f"CONNECT answered HTTP {result.connect_code}"
    if not result.ok:
        return f"HTTP {result.http_code} (curl exit {result.exit_code})"
    if result.size != expected:
        return f"got {result.size} of {expected} bytes"
    return None


def run_bulk_cell(target: Target, scenario: Scenario, ctx: Context) -> Cell:
    url = f"http://{LOOPBACK}:{ctx.origin.port}/big"
    tunnel = scenario.tunnel and target.proxy
    proxy = target.port if target.proxy else None
    extra = ["--proxytunnel"] if tunnel else []
    first = run_curl(url, proxy, extra)  # doubles as the warm-up
    failure = _bulk_failure(first, ctx.origin.big_size, tunnel)
    if failure:
        return Cell(scenario.name, target.name, "n/a", _with_note(failure, target, scenario))
    runs = [run_curl(url, proxy, extra) for _ in range(ctx.settings.bulk_runs)]
    speeds = [r.speed / 1e6 for r in runs]
    cell = Cell(scenario.name, target.name, "ok", mbps=statistics.median(speeds))
    cell.bulk_runs_mbps = speeds
    bad = [f for f in (_bulk_failure(r, ctx.origin.big_size, tunnel) for r in runs) if f]
    cell.errors = len(bad)
    if bad:
        cell.status, cell.note = "invalid", bad[0]
    return cell


def run_cell(target: Target, scenario: Scenario, ctx: Context) -> Cell:
    if scenario.name in target.unsupported:
        return Cell(scenario.name, target.name, "n/a", target.unsupported[scenario.name])
    if target.proc is not None and not target.proc.alive():
        return Cell(scenario.name, target.name, "failed", "process exited")
    runner = run_wrk_cell if scenario.kind == "wrk" else run_bulk_cell
    try:
        cell = runner(target, scenario, ctx)
    except LoadError as exc:
        cell = Cell(scenario.name, target.name, "failed", str(exc))
    if target.proc is not None and not target.proc.alive():
        cell.status, cell.note = "failed", f"process exited during the run: {target.proc.tail(2)}"
    return cell
