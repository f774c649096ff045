"""Cost per request of the policy filters through the real proxy, in one run (issues #7, #8).

Usage: .venv/bin/python bench/policies.py [--quick] [--duration S] [--warmup S]
                                          [--connections N] [--only plain,jwt,...]

One origin (nginx serving a 10 KiB text page with SSNs and card numbers), the DNS server
(bench/dns_server.py: every name under bench.test is 127.0.0.1), a redis-server, and for each
variant a fresh dfproxy on CPU 0 with the same flags and its own config. wrk sends every
variant the same request: the blog's origin-form `GET /files/page.txt` with
`Host: gateway.bench.test:PORT` and one fixed RS256 token in `Authorization: Bearer`.

The blog variants are bench/peers/dfproxy-blog.yaml (the blog's VirtualService) with filters
removed: plain DFP, + JWT, + template (autoHostRewriteHeader), + DLP (the whole blog path).
The egress variants add one policy to plain DFP: a local token bucket, a Redis-backed limit
(both far too high to trigger: the cost of checking) and a destinationPolicy allowing the
origin. A filter's cost is its variant's CPU per request minus that of the variant it adds to.

Before wrk, one curl checks each variant: 200, the body raw or masked, the JWT claim header
seen by the origin, the backend name asked from DNS. After wrk, every response must have been
2xx and the filters' counters must have counted every request. A variant failing a check is
reported invalid, without figures. Writes bench/results/policies.md and policies.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from harness.load import LoadError, WrkRequest, WrkResult, run_wrk
from harness.policy_variants import (
    BACKEND,
    GATEWAY_HOST,
    PAGE,
    SECRET_LINES,
    SEEN_TENANT,
    SLUGS,
    TENANT,
    VARIANTS,
    Docs,
    Env,
    Variant,
    blog_docs,
    blog_token,
    page_bodies,
)
from harness.procs import Procs, pinned, session_cpu_seconds
from harness.servers import (
    BENCH_DIR,
    LOAD_CPU,
    LOOPBACK,
    PROXY_CPU,
    Dns,
    Origin,
    Peer,
    StartError,
    http_get,
    start_dns,
    start_origin,
    start_peer,
    start_redis,
)
from harness.system import command_line, ensure_tools, machine_info, raise_nofile

TOOLS = ("wrk", "curl", "taskset", "nginx", "redis-server")
CURL_TIMEOUT_S = 10


@dataclass
class Row:
    slug: str
    label: str
    base: str | None
    status: str  # ok, invalid (a check failed), failed (did not start, died, wrk failed)
    note: str = ""
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None  # the proxy's CPU time per request
    cpu_runs_us: list[float] = field(default_factory=list)  # cpu_us of each round
    requests: int | None = None
    step_us: float | None = None  # cpu_us - the base variant's: the added filter's cost
    delta_us: float | None = None  # cpu_us - plain DFP's
    rps_ratio: float | None = None  # rps / plain DFP's


@dataclass
class Bench:
    """What every variant shares: the servers, the request, the run settings."""

    procs: Procs
    workdir: Path
    origin: Origin
    dns: Dns
    blog: Docs
    env: Env
    host: str  # the Host header every request carries
    auth: str  # the Authorization header every request carries
    bodies: tuple[bytes, bytes]  # raw, masked
    duration_s: float
    warmup_s: float
    connections: int


def curl_probe(port: int, headers: Sequence[str], workdir: Path) -> tuple[int, str, bytes]:
    """One request like wrk's through the proxy: (status, response headers, body)."""
    body, head = workdir / "probe.body", workdir / "probe.head"
    argv = ["curl", "-s", "--noproxy", "*", "--max-time", str(CURL_TIMEOUT_S)]
    argv += ["-o", str(body), "-D", str(head), "-w", "%{http_code}"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"http://{LOOPBACK}:{port}/files/{PAGE}")
    done = subprocess.run(
        pinned(argv, LOAD_CPU), capture_output=True, text=True, timeout=CURL_TIMEOUT_S + 5
    )
    if not (body.exists() and head.exists()):
        return int(done.stdout or 0), "", b""
    return int(done.stdout or 0), head.read_text(errors="replace").lower(), body.read_bytes()


def dns_asked(dns: Dns, name: str) -> int:
    status, body = http_get(LOOPBACK, dns.stats_port, "/stats?names=1", timeout=5.0)
    by_name = json.loads(body).get("by_name", {}) if status == 200 else {}
    return sum(n for q, n in by_name.items() if q.rstrip(".").lower() == name)


def probe_problem(v: Variant, peer: Peer, b: Bench, workdir: Path) -> str | None:
    """Why the variant does not do what it should (one curl), or None."""
    asked = dns_asked(b.dns, BACKEND)
    status, head, body = curl_probe(peer.port, (f"Host: {b.host}", b.auth), workdir)
    if status != 200:
        return f"probe: HTTP {status} {' '.join(body.decode(errors='replace').split())[:80]!r}"
    raw, masked = b.bodies
    if body != (masked if v.masked else raw):
        what = "raw" if body == raw else "masked" if body == masked else f"{len(body)} bytes"
        return f"probe: body is {what}, expected {'masked' if v.masked else 'raw'}"
    seen = re.search(rf"^{SEEN_TENANT}: *(\S*)", head, re.M)
    if (seen.group(1) if seen else "") != (TENANT if v.jwt else ""):
        return f"probe: the origin saw x-mypaas-tenant-id {seen.group(1) if seen else None!r}"
    if (dns_asked(b.dns, BACKEND) > asked) != v.template:
        return f"probe: {BACKEND} {'not ' if v.template else ''}resolved"
    return None


def counters(peer: Peer) -> dict[str, int]:
    assert peer.admin_port is not None
    _, body = http_get(LOOPBACK, peer.admin_port, "/stats?format=json", timeout=5.0)
    stats = json.loads(body)["stats"]
    return {s["name"]: int(s["value"]) for s in stats if "name" in s}


def run_problem(
    v: Variant, res: WrkResult, before: dict[str, int], after: dict[str, int]
) -> str | None:
    """Why the measured run does not count (errors, a filter that did not run), or None."""
    bad = res.non_2xx if res.non_2xx is not None else res.status_errors
    if bad or res.socket_errors:
        return f"wrk: {bad} non-2xx responses, {res.socket_errors} socket errors/timeouts"
    for pattern, every in v.counters:
        names = [n for n in after if re.search(pattern, n)]
        grew = sum(after[n] - before.get(n, 0) for n in names)
        if not names:
            return f"no counter matches {pattern!r}"
        if (grew < res.requests) if every else grew:
            return f"{pattern!r} grew by {grew} over {res.requests} requests"
    return None


def measure(v: Variant, b: Bench, workdir: Path) -> Row:
    """A fresh dfproxy with the variant's config: probe, warm up, measure, check."""
    row = Row(v.slug, v.label, v.base, "failed")
    config = b.workdir / f"{v.slug}.yaml"  # the same every round
    config.write_text(v.config_yaml(b.blog, b.env))
    try:
        peer = start_peer("dfproxy", b.procs, workdir, b.origin, b.dns, ["-c", str(config)])
    except (StartError, OSError) as exc:
        row.note = f"did not start: {str(exc).splitlines()[0][:200]}"
        return row
    try:
        problem = probe_problem(v, peer, b, workdir)
        if problem:
            row.status, row.note = "invalid", problem
            return row
        req = WrkRequest(peer.port, "checked.lua", (f"/files/{PAGE}", b.host), (b.auth,))
        run_wrk(req, b.warmup_s, b.connections)
        before, cpu0 = counters(peer), session_cpu_seconds(peer.proc.pid)
        res = run_wrk(req, b.duration_s, b.connections)
        cpu1, after = session_cpu_seconds(peer.proc.pid), counters(peer)
    except (LoadError, OSError, ValueError, subprocess.SubprocessError) as exc:
        row.note = f"{type(exc).__name__}: {exc}"[:200]
        return row
    finally:
        alive = peer.proc.alive()
        b.procs.stop(peer.proc)
    if not alive:
        row.note = "dfproxy exited during the run"
        return row
    row.requests = res.requests
    problem = run_problem(v, res, before, after) or (None if res.requests else "no responses")
    if problem:
        row.status, row.note = "invalid", problem
        return row
    row.status, row.rps, row.p50_ms, row.p99_ms = "ok", res.rps, res.p50_ms, res.p99_ms
    row.cpu_us = (cpu1 - cpu0) * 1e6 / res.requests
    row.cpu_runs_us = [row.cpu_us]
    return row


def merge(runs: list[Row]) -> Row:
    """One row from a variant's rounds: the medians, or the first round that failed."""
    for i, r in enumerate(runs, 1):
        if r.status != "ok":
            r.note = f"round {i}: {r.note}" if len(runs) > 1 else r.note
            return r
    row = Row(runs[0].slug, runs[0].label, runs[0].base, "ok")
    row.rps, row.p50_ms, row.p99_ms, row.cpu_us = (
        statistics.median(getattr(r, name) for r in runs)
        for name in ("rps", "p50_ms", "p99_ms", "cpu_us")
    )
    row.requests = sum(r.requests or 0 for r in runs)
    row.cpu_runs_us = [r.cpu_us or 0.0 for r in runs]
    return row


def compare(rows: list[Row]) -> None:
    """Fill in each row's cost over its base variant and over plain DFP."""
    by_slug = {r.slug: r for r in rows if r.status == "ok"}
    plain = by_slug.get("plain")
    for row in by_slug.values():
        base = by_slug.get(row.base or "")
        if base and row.cpu_us is not None and base.cpu_us is not None:
            row.step_us = row.cpu_us - base.cpu_us
        if plain and row.cpu_us is not None and plain.cpu_us is not None and plain.rps:
            row.delta_us = row.cpu_us - plain.cpu_us
            row.rps_ratio = (row.rps or 0.0) / plain.rps


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _spread(values: list[float]) -> str:
    return f" ({min(values):.1f}–{max(values):.1f})" if len(values) > 1 else ""


def render_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    labels = {r.slug: r.label.removeprefix("+ ") for r in rows}
    head = (
        "| variant | status | req/s | p50 ms | p99 ms | CPU µs/req | filter cost µs/req "
        "| Δ CPU vs plain µs/req | req/s vs plain | note |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        step = _num(r.step_us, "+.1f")
        if r.step_us is not None and r.base != "plain":
            step += f" (over {labels.get(r.base or '', r.base)})"
        cols = [
            r.label,
            r.status,
            _num(r.rps, ",.0f"),
            _num(r.p50_ms, ".2f"),
            _num(r.p99_ms, ".2f"),
            _num(r.cpu_us, ".1f") + _spread(r.cpu_runs_us),
            step,
            _num(r.delta_us, "+.1f"),
            _num(r.rps_ratio, ".2f"),
            r.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cols) + " |")
    machine = meta["machine"]
    facts = [
        f"- Run: {meta['started']} (took {meta['elapsed_s']:.0f} s), `{meta['command']}`",
        f"- Machine: nproc={machine['nproc']}, CPU: {machine['cpu_model']}, "
        f"kernel {machine['kernel']}, Python {machine['python']}; load average before the "
        f"run: {meta['loadavg']}",
        f"- {meta['setup']}",
        f"- Request: {meta['request']}",
    ]
    notes = [
        "- CPU µs/req: user + system time of the dfproxy process over the measured run, per "
        "response wrk received; with several rounds, the median and (min–max); req/s, p50 and "
        "p99 are medians too. Filter cost: the difference to the variant it adds to (plain "
        "DFP unless named); Δ vs plain: the difference to plain DFP.",
        "- JWT: one fixed token, so after the first request it is found in the provider's "
        "verified-token cache (Envoy's jwt_cache_config): no RS256 signature check per request "
        "(bench/jwt_verify.py measures that one). DLP: SSN + ALL_CREDIT_CARDS over the 10 KiB "
        "body, which is then sent chunked. Limits never trigger; Redis runs on the load CPU.",
    ]
    return (
        "\n\n".join(
            [
                "# dfproxy policy filters: cost per request",
                "\n".join(facts),
                "\n".join(lines),
                "\n".join(notes),
            ]
        )
        + "\n"
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cost of dfproxy's policy filters (loopback only)")
    p.add_argument("--quick", action="store_true", help="3 s per variant, 1 s warm-up")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per variant (default 2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, help="runs of every variant, medians (default 3)")
    p.add_argument("--only", help=f"variants, from: {','.join(SLUGS)} (plain always runs)")
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    return p.parse_args(argv)


def select(only: str | None) -> list[Variant]:
    if not only:
        return list(VARIANTS)
    wanted = {s.strip() for s in only.split(",") if s.strip()} | {"plain"}
    unknown = sorted(wanted - set(SLUGS))
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}; known: {','.join(SLUGS)}")
    return [v for v in VARIANTS if v.slug in wanted]


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, variants: list[Variant], tmp: Path, procs: Procs) -> list[Row]:
    raw, masked = page_bodies()
    origin = start_origin(procs, tmp / "origin", 0, files={PAGE: raw})
    dns = start_dns(procs, tmp / "dns")
    redis = start_redis(procs, tmp / "redis")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    b = Bench(
        procs,
        tmp,
        origin,
        dns,
        blog_docs(tmp, origin.port, key),
        Env(origin.port, redis.address),
        f"{GATEWAY_HOST}:{origin.port}",
        f"Authorization: Bearer {blog_token(key)}",
        (raw, masked),
        args.duration,
        args.warmup,
        args.connections,
    )
    # Round-robin over the variants, so that a change in the machine's load reaches them all.
    runs: dict[str, list[Row]] = {v.slug: [] for v in variants}
    for n in range(1, args.rounds + 1):
        for v in variants:
            row = measure(v, b, tmp / f"{v.slug}-{n}")
            runs[v.slug].append(row)
            ok = row.status == "ok"
            figures = f"{row.rps:8,.0f} req/s {row.cpu_us:6.1f} µs/req" if ok else row.note
            print(f"[{n}/{args.rounds}] {v.label:36s} {row.status:7s} {figures}", flush=True)
    return [merge(r) for r in runs.values()]


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    variants = select(args.only)
    missing = ensure_tools(TOOLS, install=not args.no_install)
    if missing:
        raise SystemExit("cannot run: " + "; ".join(f"{t}: {w}" for t, w in missing.items()))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    raise_nofile()
    started, t0 = dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), time.monotonic()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="dfproxy-policies-"))
    tmp.chmod(0o755)  # nginx workers run as another user
    procs = Procs()
    try:
        rows = run(args, variants, tmp, procs)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    except StartError as exc:
        print(f"cannot run the benchmark: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"kept temp dir {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    compare(rows)
    meta = {
        "command": command_line("bench/policies.py", argv),
        "started": started,
        "elapsed_s": time.monotonic() - t0,
        "loadavg": loadavg,
        "machine": machine_info(),
        "setup": (
            f"dfproxy (one process) on CPU {PROXY_CPU}; wrk (-t1 -c{args.connections}, "
            f"{args.duration:g} s after a {args.warmup:g} s warm-up, {args.rounds} round(s) over "
            "all variants in turn, a fresh dfproxy each time), "
            f"the origin nginx, the DNS server and redis-server on CPU {LOAD_CPU}"
        ),
        "request": f"`GET /files/{PAGE}` (10 KiB, {SECRET_LINES} lines with an SSN and two "
        f"card numbers), `Host: {GATEWAY_HOST}:ORIGIN`, `Authorization: Bearer <RS256 JWT>`",
    }
    markdown = render_markdown(rows, meta)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "policies.md").write_text(markdown)
    payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
    (args.results_dir / "policies.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n" + markdown)
    print(f"wrote {args.results_dir / 'policies.md'} and policies.json")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
