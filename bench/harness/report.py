"""Markdown and JSON reports of a benchmark run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from harness.scenarios import Cell, Scenario

PEER_CAVEATS = {
    "nginx": "nginx: `proxy_pass http://$http_host$request_uri` (a variable proxy_pass, the only "
    "way to forward to any host) cannot use an `upstream {}` keepalive pool, so nginx opens a "
    "new connection to the origin for every proxied request. That is what nginx users get; "
    "stock nginx has no CONNECT either.",
    "squid": "Squid rejects origin-form requests on a forward-proxy port (it needs `accel` "
    "mode), so keepalive-host is n/a for it. Squid resolves A and AAAA for each name, so its "
    "DNS floor is twice the one shown.",
    "haproxy": "HAProxy: the destination comes from `do-resolve` + `set-dst`. Measured here "
    "with HAProxy 2.6, do-resolve sends about one DNS query per request even with `hold valid "
    "300s` (the answer is not kept between requests), so the Python DNS server (on the load "
    "CPU) bounds the multi-host cells. HAProxy has no CONNECT tunnelling of its own.",
}
CAVEATS = (
    "wrk counts HTTP status >= 400 as errors (plus socket errors and timeouts); a cell with "
    "more than 1% errors is marked invalid, a scenario whose probe request fails is n/a.",
    "DNS q/1k: DNS queries received per 1,000 requests over probe + warm-up + measured run; "
    "floor: one query per distinct name in that time (a cache that keeps every name for the "
    "300 s TTL).",
    "Two cores only: the load generator, the origin and the DNS server share CPU 1, so the "
    "direct baseline is bounded by wrk + origin on one core, and anything else running on the "
    "machine shows up as noise (see the load average above).",
)


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def throughput(cell: Cell | None) -> float | None:
    if cell is None or cell.status != "ok":
        return None
    return cell.mbps if cell.mbps is not None else cell.rps


def _matrix_entry(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.status == "ok":
        return _num(throughput(cell))
    if cell.status == "invalid":
        return f"invalid ({_num(throughput_any(cell))})"
    return cell.status


def throughput_any(cell: Cell) -> float | None:
    return cell.mbps if cell.mbps is not None else cell.rps


def _unit(scenario: Scenario) -> str:
    return "MB/s" if scenario.kind == "bulk" else "req/s"


def _index(cells: Sequence[Cell]) -> dict[tuple[str, str], Cell]:
    return {(c.scenario, c.peer): c for c in cells}


def matrix_table(cells: Sequence[Cell], scenarios: Sequence[Scenario], peers: list[str]) -> str:
    idx = _index(cells)
    lines = [
        "| scenario | unit | " + " | ".join(peers) + " |",
        "|---|---|" + "---:|" * len(peers),
    ]
    for sc in scenarios:
        row = [_matrix_entry(idx.get((sc.name, p))) for p in peers]
        lines.append(f"| {sc.name} | {_unit(sc)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _detail_row(cell: Cell) -> str:
    dns = "-"
    if cell.dns_per_1k is not None:
        dns = _num(cell.dns_per_1k, 1)
        if cell.dns_floor_per_1k is not None:
            dns += f" (floor {_num(cell.dns_floor_per_1k, 1)})"
    errors = "-" if cell.errors is None else _num(cell.errors)
    if cell.error_pct:
        errors += f" ({cell.error_pct:.2f}%)"
    cols = [
        cell.scenario,
        cell.peer,
        cell.status,
        _num(cell.rps),
        _num(cell.p50_ms, 2),
        _num(cell.p99_ms, 2),
        _num(cell.cpu_us_per_req, 1),
        _num(cell.mbps),
        errors,
        dns,
        cell.note.replace("|", "/").replace("\n", " "),
    ]
    return "| " + " | ".join(cols) + " |"


def detail_table(cells: Sequence[Cell]) -> str:
    head = (
        "| scenario | peer | status | req/s | p50 ms | p99 ms | CPU µs/req | MB/s | errors "
        "| DNS q/1k req | note |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    return "\n".join([head, *(_detail_row(c) for c in cells)])


def _ratio(a: Cell | None, b: Cell | None) -> str:
    ta, tb = throughput(a), throughput(b)
    if ta is None or tb is None or tb == 0:
        return "-"
    return f"{ta / tb:.2f}"


def ratio_table(cells: Sequence[Cell], scenarios: Sequence[Scenario], peers: list[str]) -> str:
    others = [p for p in peers if p != "dfproxy"]
    idx = _index(cells)
    heads = [f"dfproxy/{p}" for p in others]
    lines = ["| scenario | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for sc in scenarios:
        mine = idx.get((sc.name, "dfproxy"))
        row = [_ratio(mine, idx.get((sc.name, p))) for p in others]
        lines.append(f"| {sc.name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cpu_table(cells: Sequence[Cell], scenarios: Sequence[Scenario], peers: list[str]) -> str:
    """CPU µs per request of each proxy, and each peer's cost relative to dfproxy's."""
    proxies = [p for p in peers if p != "direct"]
    idx = _index(cells)
    others = [p for p in proxies if p != "dfproxy"]
    heads = proxies + [f"{p}/dfproxy" for p in others if "dfproxy" in proxies]
    lines = ["| scenario | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for sc in scenarios:
        vals = {p: getattr(idx.get((sc.name, p)), "cpu_us_per_req", None) for p in proxies}
        row = [_num(vals[p], 1) for p in proxies]
        if "dfproxy" in proxies:
            mine = vals.get("dfproxy")
            for p in others:
                theirs = vals.get(p)
                row.append(f"{theirs / mine:.2f}" if theirs and mine else "-")
        lines.append(f"| {sc.name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _meta_lines(meta: dict[str, object]) -> list[str]:
    machine = meta["machine"]
    assert isinstance(machine, dict)
    versions = machine.get("versions", {})
    assert isinstance(versions, dict)
    return [
        f"- Run: {meta['started']} (took {meta['elapsed_s']:.0f} s), `{meta['command']}`",
        f"- Machine: nproc={machine['nproc']}, CPU: {machine['cpu_model']}, "
        f"kernel {machine['kernel']}, Python {machine['python']}",
        f"- Pinning: {meta['pinning']}",
        f"- Load average before the run: {meta['loadavg']}",
        f"- Load: {meta['load']}",
        f"- DNS server: {meta['dns']}",
        f"- dfproxy hot path: {meta.get('hot_path', 'not recorded')}",
        "- Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
    ]


def render_markdown(
    meta: dict[str, object],
    cells: Sequence[Cell],
    scenarios: Sequence[Scenario],
    peers: list[str],
    notes: Sequence[str],
) -> str:
    parts = [
        "# dfproxy benchmark",
        "\n".join(_meta_lines(meta)),
        "## Throughput (req/s, or MB/s = 10^6 B/s for bulk)",
        matrix_table(cells, scenarios, peers),
        "## Details",
        detail_table(cells),
    ]
    if "dfproxy" in peers:
        parts += ["## Ratios (dfproxy throughput / other)", ratio_table(cells, scenarios, peers)]
    parts += [
        "## CPU per request (µs of the proxy's processes; peer/dfproxy > 1: dfproxy is cheaper)",
        cpu_table(cells, [s for s in scenarios if s.kind == "wrk"], peers),
    ]
    parts += ["## Scenarios", "\n".join(f"- `{s.name}`: {s.summary}" for s in scenarios)]
    caveats = [PEER_CAVEATS[p] for p in peers if p in PEER_CAVEATS]
    parts += ["## Notes", "\n".join(f"- {n}" for n in [*notes, *caveats, *CAVEATS])]
    return "\n\n".join(parts) + "\n"


def write_results(
    results_dir: Path, markdown: str, meta: dict[str, object], cells: Sequence[Cell]
) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = results_dir / "latest.md", results_dir / "latest.json"
    md_path.write_text(markdown)
    payload = json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=2) + "\n"
    json_path.write_text(payload)
    raw = results_dir / "raw"  # history, git-ignored
    raw.mkdir(exist_ok=True)
    stamp = str(meta.get("started", "run")).replace(":", "").replace("+0000", "Z")
    (raw / f"{stamp}.json").write_text(payload)
    return md_path, json_path
