"""Benchmark dfproxy against nginx, Squid and HAProxy as HTTP forward proxies (loopback only).

Usage: .venv/bin/python bench/run.py [--quick] [--only SCENARIO,...] [--peers dfproxy,nginx,...]
                                      [--duration SECONDS]

Starts an origin (nginx), a DNS server for *.bench.test (bench/dns_server.py) and each proxy in
a temp dir, drives them with wrk/curl, prints a Markdown report and writes it to
bench/results/latest.md (+ latest.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from harness.procs import Procs
from harness.report import render_markdown, write_results
from harness.scenarios import (
    SCENARIO_NAMES,
    SCENARIOS,
    Cell,
    Context,
    Scenario,
    Settings,
    Target,
    run_cell,
)
from harness.servers import (
    BENCH_DIR,
    LOAD_CPU,
    PEERS,
    PROXY_CPU,
    Dns,
    Origin,
    StartError,
    start_dns,
    start_origin,
    start_peer,
)
from harness.system import command_line, ensure_tools, machine_info, raise_nofile

CORE_TOOLS = ("wrk", "curl", "taskset", "nginx")  # nginx: the origin
POLICIES_TIMEOUT_S = 3600.0  # bench/policies.py bounds each of its own waits; this bounds all
PEER_TOOLS = {
    "dfproxy": (),
    "nginx": ("nginx",),
    "squid": ("squid",),
    "haproxy": ("haproxy",),
    "bare": (),
}


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dfproxy forward-proxy benchmark (loopback only)")
    p.add_argument("--quick", action="store_true", help="3 s per cell, 1 s warm-up")
    p.add_argument("--only", type=_csv, help=f"scenarios, from: {','.join(SCENARIO_NAMES)}")
    p.add_argument("--peers", type=_csv, default=list(PEERS), help="default: all")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per cell (default 2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--big-mib", type=int, default=2048, help="size of /big for the bulk runs (MiB)")
    p.add_argument(
        "--dfproxy-args",
        type=shlex.split,
        # maxHosts 1024 (Envoy's default) would overflow hosts-10000; the other peers get
        # caches of that size too (Squid ipcache_size 65536, nginx unbounded).
        default=["-c", str(Path(__file__).parent / "peers" / "dfproxy-large-cache.yaml")],
        help="arguments for `dfproxy run` (default: -c bench/peers/dfproxy-large-cache.yaml)",
    )
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    p.add_argument(
        "--no-policies", action="store_true", help="skip bench/policies.py (run at the end)"
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    return Settings(duration_s=duration, warmup_s=warmup, connections=args.connections)


def select_scenarios(only: list[str] | None) -> list[Scenario]:
    if not only:
        return list(SCENARIOS)
    unknown = sorted(set(only) - set(SCENARIO_NAMES))
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {SCENARIO_NAMES}")
    return [s for s in SCENARIOS if s.name in only]


def select_peers(peers: list[str]) -> list[str]:
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)}; known: {PEERS}")
    return list(dict.fromkeys(peers))


def prepare_tools(peers: list[str], install: bool) -> tuple[list[str], list[str]]:
    """Install what is missing; returns (peers that can run, notes about skipped ones)."""
    wanted = [*CORE_TOOLS, *(t for p in peers for t in PEER_TOOLS[p])]
    missing = ensure_tools(wanted, install=install)
    core = {t: why for t, why in missing.items() if t in CORE_TOOLS}
    if core:
        raise SystemExit(
            "cannot run the benchmark: " + "; ".join(f"{t}: {w}" for t, w in core.items())
        )
    notes, usable = [], []
    for peer in peers:
        gone = [t for t in PEER_TOOLS[peer] if t in missing]
        if gone:
            note = f"{peer} skipped: {'; '.join(f'{t} {missing[t]}' for t in gone)}"
            print(note, flush=True)
            notes.append(note)
        else:
            usable.append(peer)
    return usable, notes


def _progress(done: int, total: int, cell: Cell) -> None:
    if cell.mbps is not None:
        numbers = f"{cell.mbps:10,.0f} MB/s"
    elif cell.rps is not None:
        numbers = f"{cell.rps:10,.0f} req/s p50 {cell.p50_ms:.2f} ms p99 {cell.p99_ms:.2f} ms"
        if cell.dns_per_1k is not None:
            numbers += f" dns/1k {cell.dns_per_1k:.1f}"
    else:
        numbers = ""
    note = f"  [{cell.note}]" if cell.note else ""
    print(
        f"[{done:3d}/{total}] {cell.peer:8s} {cell.scenario:18s} {cell.status:7s} {numbers}{note}",
        flush=True,
    )


class Runner:
    """Runs every scenario against each target in turn, collecting cells."""

    def __init__(
        self,
        ctx: Context,
        scenarios: list[Scenario],
        total_targets: int,
        dfproxy_args: Sequence[str] = (),
    ) -> None:
        self.ctx = ctx
        self.dfproxy_args = dfproxy_args
        self.scenarios = scenarios
        self.cells: list[Cell] = []
        self.total = total_targets * len(scenarios)

    def add(self, cell: Cell) -> None:
        self.cells.append(cell)
        _progress(len(self.cells), self.total, cell)

    def run_direct(self, origin_port: int) -> None:
        target = Target("direct", origin_port)
        for scenario in self.scenarios:
            self.add(run_cell(target, scenario, self.ctx))

    def run_peer(self, name: str, procs: Procs, workdir: Path) -> str | None:
        """Each scenario against a freshly started proxy (no cache or pool state carried over
        from the previous scenario); returns a note if the proxy could not start."""
        ctx = self.ctx
        for i, scenario in enumerate(self.scenarios):
            try:
                peer = start_peer(
                    name, procs, workdir / scenario.name, ctx.origin, ctx.dns, self.dfproxy_args
                )
            except (StartError, OSError) as exc:
                why = f"{name} did not start: {exc}"
                print(why, flush=True)
                for rest in self.scenarios[i:]:
                    self.add(Cell(rest.name, name, "failed", str(exc).splitlines()[0][:200]))
                return why
            try:
                target = Target(name, peer.port, peer.proc, peer.unsupported, peer.notes)
                self.add(run_cell(target, scenario, ctx))
            finally:
                procs.stop(peer.proc)
        return None


def _meta(
    args: argparse.Namespace, settings: Settings, origin: Origin | None, dns: Dns | None
) -> dict[str, object]:
    return {
        "command": command_line("bench/run.py", sys.argv[1:]),
        "machine": machine_info(),
        "settings": vars(settings) | {"big_mib": args.big_mib},
        "pinning": (
            f"proxy under test on CPU {PROXY_CPU} (`taskset -c {PROXY_CPU}`, one worker/thread);"
            f" wrk, curl, the origin nginx (1 worker) and the DNS server on CPU {LOAD_CPU}"
        ),
        "load": (
            f"wrk -t1 -c{settings.connections}, {settings.duration_s:g} s per cell after a "
            f"{settings.warmup_s:g} s warm-up; bulk: curl, {args.big_mib} MiB, median of "
            f"{settings.bulk_runs} runs after one warm-up run"
        ),
        "dns": dns.address if dns else "not started",
        "hot_path": _hot_path(),
        "origin_port": origin.port if origin else None,
    }


def _hot_path() -> str:
    """dfproxy's hot path as the proxy under test will load it (dfproxy/_native.py)."""
    from dfproxy import _native

    active, why = _native.check()
    return f"{'compiled' if active else 'interpreted'} ({why})"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _estimate_s(settings: Settings, scenarios: list[Scenario], targets: int) -> float:
    wrk = sum(1 for s in scenarios if s.kind == "wrk")
    per_target = wrk * (settings.duration_s + settings.warmup_s + 1) + 5
    return targets * per_target


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    scenarios = select_scenarios(args.only)
    peers, notes = prepare_tools(select_peers(args.peers), install=not args.no_install)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started as `cmd &`
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    raise_nofile()
    started, t0 = dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), time.monotonic()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    est = _estimate_s(settings, scenarios, 1 + len(peers))
    print(f"targets: direct, {', '.join(peers) or '(no peers)'}; about {est / 60:.1f} min")
    tmp = Path(tempfile.mkdtemp(prefix="dfproxy-bench-"))
    tmp.chmod(0o755)  # nginx workers and squid run as other users
    procs = Procs()
    origin: Origin | None = None
    dns: Dns | None = None
    runner: Runner | None = None
    interrupted = False
    try:
        origin = start_origin(procs, tmp / "origin", args.big_mib)
        dns = start_dns(procs, tmp / "dns")
        ctx = Context(origin, dns, settings)
        runner = Runner(ctx, scenarios, 1 + len(peers), args.dfproxy_args)
        runner.run_direct(origin.port)
        for name in peers:
            note = runner.run_peer(name, procs, tmp / name)
            if note:
                notes.append(note)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping everything", file=sys.stderr, flush=True)
    except StartError as exc:
        print(f"cannot run the benchmark: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"kept temp dir {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if runner is None or not runner.cells:
        return 130 if interrupted else 1
    if interrupted:
        notes.append("run interrupted: partial results")
    meta = _meta(args, settings, origin, dns)
    meta |= {"started": started, "elapsed_s": time.monotonic() - t0, "loadavg": loadavg}
    if "dfproxy" in peers and not interrupted:
        notes.append(dfproxy_extras(args.quick))
    meta["notes"] = notes
    table_peers = ["direct", *peers]
    markdown = render_markdown(meta, runner.cells, scenarios, table_peers, notes)
    md_path, json_path = write_results(args.results_dir, markdown, meta, runner.cells)
    print("\n" + markdown)
    print(f"wrote {md_path} and {json_path}")
    if interrupted:
        return 130
    if "dfproxy" in peers and not args.no_policies:
        run_policies(args)
    return 0


def run_policies(args: argparse.Namespace) -> None:
    """bench/policies.py, the policy filters' cost, with the same settings (its own report)."""
    argv = [sys.executable, str(Path(__file__).parent / "policies.py")]
    argv += ["--connections", str(args.connections), "--results-dir", str(args.results_dir)]
    argv += ["--quick"] * args.quick + ["--no-install"] * args.no_install
    for flag, value in (("--duration", args.duration), ("--warmup", args.warmup)):
        if value is not None:
            argv += [flag, str(value)]
    print(f"\nrunning {shlex.join(argv[1:])}", flush=True)
    child = subprocess.Popen(argv)
    try:
        code = child.wait(timeout=POLICIES_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.terminate()  # SIGTERM: policies.py stops what it started
        code = child.wait(timeout=60)
    if code:
        print(f"bench/policies.py failed (exit {code}); see its output above", flush=True)


def dfproxy_extras(quick: bool) -> str:
    """dfproxy-only figures: DNS cache memory per host, and its Python cost per request."""
    here = Path(__file__).parent
    out = []
    for script, args in (
        ("dns_memory.py", ["--hosts", "20000" if quick else "100000"]),
        ("hotpath.py", ["--requests", "50000" if quick else "200000"]),
    ):
        try:
            res = subprocess.run(
                [sys.executable, str(here / script), *args],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            out.append(res.stdout.strip().splitlines()[-1])
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            out.append(f"{script} failed: {last[0]}")
        except (subprocess.SubprocessError, IndexError) as exc:
            out.append(f"{script} failed: {type(exc).__name__}")
    return "dfproxy: " + "; ".join(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
