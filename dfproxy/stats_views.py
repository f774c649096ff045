"""/stats and /stats/prometheus: a snapshot of a StatsStore, merged across workers, rendered.

Pure functions over values (no I/O): a process renders its own snapshot; the ``--workers``
supervisor fetches each worker's snapshot in the wire form (``to_wire``), merges them
(``merge``) and renders the result with the same functions, so one process and N workers
print the same shapes.

Envoy's shapes (docs/root/operations/admin.rst, ``/stats``):
- text: ``name: value`` for counters and gauges, sorted; then one line per histogram with
  ``P0(interval,cumulative) P25(...) ... P100(...)``. dfproxy keeps cumulative histograms only,
  so the interval value is ``nan`` as Envoy prints it for an interval with no samples.
- JSON: ``{"stats": [{"name", "value"}..., {"histograms": {"supported_quantiles": [...],
  "computed_quantiles": [{"name", "values": [{"interval", "cumulative"}...]}]}}]}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dfproxy.stats import BUCKETS_MS, Histogram, StatsStore

# Envoy's supported quantiles, in percent, in the order it prints them.
QUANTILES = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0)


@dataclass
class Snapshot:
    """Every stat's value at one moment: counters, gauges and histograms by full name."""

    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def snapshot(store: StatsStore) -> Snapshot:
    """Read ``store`` (computed gauges are evaluated now); histograms are copied."""
    hists = {}
    for name, h in store.histograms.items():
        copy = Histogram()
        copy.counts = list(h.counts)
        copy.sum = h.sum
        copy.count = h.count
        hists[name] = copy
    return Snapshot(
        {k: c.value for k, c in store.counters.items()},
        {k: g.value for k, g in store.gauges.items()},
        hists,
    )


def to_wire(s: Snapshot) -> dict[str, Any]:
    """The JSON form a worker sends its supervisor (bucket counts, not quantiles, so the
    supervisor can merge histograms exactly)."""
    return {
        "counters": s.counters,
        "gauges": s.gauges,
        "histograms": {k: {"counts": h.counts, "sum": h.sum} for k, h in s.histograms.items()},
    }


def from_wire(data: dict[str, Any]) -> Snapshot:
    hists = {}
    for name, h in data.get("histograms", {}).items():
        hist = Histogram()
        counts = [int(n) for n in h["counts"]]
        if len(counts) != len(hist.counts):
            continue  # a worker of another version: skip rather than mis-merge
        hist.counts = counts
        hist.sum = float(h["sum"])
        hist.count = sum(counts)
        hists[name] = hist
    return Snapshot(
        {k: int(v) for k, v in data.get("counters", {}).items()},
        {k: int(v) for k, v in data.get("gauges", {}).items()},
        hists,
    )


def _gauge_is_flag(name: str) -> bool:
    """Gauges that are a per-process copy of one state, not a quantity: merged by max.

    Circuit breaker ``*_open`` gauges are 0/1 flags (open when any worker's is open), and
    each worker caches the same hosts, so ``dns_cache.<name>.num_hosts`` is the largest
    worker's count rather than a sum that would count a host once per worker."""
    return name.endswith("_open") or name.endswith(".num_hosts")


def merge(parts: list[Snapshot]) -> Snapshot:
    """All workers as one process: counters summed, gauges summed (Envoy's gauges cover
    every worker thread: connections, active requests) except flags (max), histograms merged
    by summing bucket counts (exact: every worker uses Envoy's bucket bounds)."""
    out = Snapshot()
    for part in parts:
        for k, v in part.counters.items():
            out.counters[k] = out.counters.get(k, 0) + v
        for k, v in part.gauges.items():
            if k in out.gauges and _gauge_is_flag(k):
                out.gauges[k] = max(out.gauges[k], v)
            else:
                out.gauges[k] = out.gauges.get(k, 0) + v
        for k, h in part.histograms.items():
            merged = out.histograms.get(k)
            if merged is None:
                merged = out.histograms[k] = Histogram()
            merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
            merged.sum += h.sum
            merged.count += h.count
    return out


def select(s: Snapshot, rx: re.Pattern[str] | None, used_only: bool) -> Snapshot:
    """Envoy's ``filter=`` (regex search on the name) and ``usedonly`` (non-zero values,
    histograms with samples)."""

    def keep(name: str, used: bool) -> bool:
        return (rx is None or rx.search(name) is not None) and (used or not used_only)

    return Snapshot(
        {k: v for k, v in s.counters.items() if keep(k, v != 0)},
        {k: v for k, v in s.gauges.items() if keep(k, v != 0)},
        {k: h for k, h in s.histograms.items() if keep(k, h.count > 0)},
    )


def _scalars(s: Snapshot) -> list[tuple[str, int]]:
    merged = dict(s.counters)
    merged.update(s.gauges)
    return sorted(merged.items())


def _fmt(v: float | None) -> str:
    return "nan" if v is None else f"{v:.6g}"


def render_text(s: Snapshot) -> str:
    lines = [f"{k}: {v}\n" for k, v in _scalars(s)]
    for name, h in sorted(s.histograms.items()):
        parts = [f"P{q:g}(nan,{_fmt(h.quantile(q / 100))})" for q in QUANTILES]
        lines.append(f"{name}: {' '.join(parts)}\n")
    return "".join(lines)


def render_json(s: Snapshot) -> dict[str, Any]:
    stats: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in _scalars(s)]
    if s.histograms:
        stats.append(
            {
                "histograms": {
                    "supported_quantiles": list(QUANTILES),
                    "computed_quantiles": [
                        {
                            "name": name,
                            "values": [
                                {"interval": None, "cumulative": h.quantile(q / 100)}
                                for q in QUANTILES
                            ],
                        }
                        for name, h in sorted(s.histograms.items())
                    ],
                }
            }
        )
    return {"stats": stats}


# Envoy's default tag extraction for the stat families dfproxy has: the name's second part
# becomes a label and leaves the metric name (cluster.<name>.x -> envoy_cluster_x{...}).
_TAGS = {
    "cluster": "envoy_cluster_name",
    "http": "envoy_http_conn_manager_prefix",
    "dns_cache": "envoy_dns_cache_name",
}
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _metric(name: str) -> tuple[str, str]:
    head, _, rest = name.partition(".")
    label = _TAGS.get(head)
    if label and "." in rest:
        value, _, stat = rest.partition(".")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f"envoy_{head}_{_UNSAFE.sub('_', stat)}", f'{label}="{escaped}"'
    return "envoy_" + _UNSAFE.sub("_", name), ""


def render_prometheus(s: Snapshot) -> str:
    """The Prometheus text exposition format (0.0.4), one TYPE line per metric family;
    histograms as cumulative ``_bucket{le=...}`` lines with ``_sum`` and ``_count``."""
    families: dict[str, tuple[str, list[str]]] = {}

    def add(metric: str, kind: str, line: str) -> None:
        families.setdefault(metric, (kind, []))[1].append(line)

    for name, value in s.counters.items():
        metric, labels = _metric(name)
        add(metric, "counter", f"{metric}{{{labels}}} {value}")
    for name, value in s.gauges.items():
        metric, labels = _metric(name)
        add(metric, "gauge", f"{metric}{{{labels}}} {value}")
    for name, hist in s.histograms.items():
        metric, labels = _metric(name)
        sep = "," if labels else ""
        cumulative = 0
        for bound, n in zip(BUCKETS_MS, hist.counts, strict=False):
            cumulative += n
            add(metric, "histogram", f'{metric}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        add(metric, "histogram", f'{metric}_bucket{{{labels}{sep}le="+Inf"}} {hist.count}')
        add(metric, "histogram", f"{metric}_sum{{{labels}}} {hist.sum:.17g}")
        add(metric, "histogram", f"{metric}_count{{{labels}}} {hist.count}")
    out = []
    for metric in sorted(families):
        kind, lines = families[metric]
        out.append(f"# TYPE {metric} {kind}\n")
        out.extend(line + "\n" for line in lines)
    return "".join(out)
