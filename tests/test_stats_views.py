"""stats_views: Envoy's /stats text and JSON shapes, merging across workers, Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dfproxy.stats import StatsStore
from dfproxy.stats_views import (
    QUANTILES,
    Snapshot,
    from_wire,
    merge,
    render_json,
    render_prometheus,
    render_text,
    select,
    snapshot,
    to_wire,
)

ENVOY = Path(__file__).parent / "fixtures" / "envoy_admin"
CLUSTER = "cluster.solo_io_generated_dfp:12345."


def _store(values: list[float], rq: int = 5, cx_active: int = 1, open_flag: int = 0) -> StatsStore:
    s = StatsStore()
    s.counter(CLUSTER + "upstream_rq_total").value = rq
    s.counter("http.gateway-proxy.downstream_rq_total").value = rq
    s.gauge(CLUSTER + "upstream_cx_active").value = cx_active
    s.gauge(CLUSTER + "circuit_breakers.default.rq_open").value = open_flag
    s.gauge("dns_cache.solo_io_generated_dfp:12345.num_hosts").value = 3
    h = s.histogram(CLUSTER + "upstream_rq_time")
    for v in values:
        h.record(v)
    s.histogram("http.gateway-proxy.downstream_rq_time")  # never recorded
    return s


def test_json_has_envoys_shape() -> None:
    envoy = json.loads((ENVOY / "stats.json").read_text())
    ours = render_json(snapshot(_store([1, 2, 3, 250])))
    assert set(ours) == set(envoy) == {"stats"}
    scalars = [s for s in ours["stats"] if "histograms" not in s]
    assert all(set(s) == {"name", "value"} and isinstance(s["value"], int) for s in scalars)
    [hist] = [s["histograms"] for s in ours["stats"] if "histograms" in s]
    [envoy_hist] = [s["histograms"] for s in envoy["stats"] if "histograms" in s]
    assert set(hist) == set(envoy_hist)
    assert hist["supported_quantiles"] == envoy_hist["supported_quantiles"] == list(QUANTILES)
    item = hist["computed_quantiles"][0]
    assert set(item) == set(envoy_hist["computed_quantiles"][0]) == {"name", "values"}
    assert len(item["values"]) == len(QUANTILES)
    assert all(set(v) == {"interval", "cumulative"} for v in item["values"])
    cumulative = [v["cumulative"] for v in item["values"] if v["cumulative"] is not None]
    assert cumulative == sorted(cumulative)
    # a histogram without samples reports null quantiles (Envoy's "no data")
    empty = [h for h in hist["computed_quantiles"] if h["name"].startswith("http.")]
    assert all(v["cumulative"] is None for v in empty[0]["values"])


def test_text_has_envoys_shape() -> None:
    envoy_hist = (ENVOY / "stats.txt").read_text().splitlines()[-1]
    line = re.compile(
        r"^[\w.:-]+: " + " ".join(rf"P{q:g}\(nan,[\d.e+-]+\)" for q in QUANTILES) + "$"
    )
    assert line.match(envoy_hist)
    text = render_text(snapshot(_store([1, 2, 3]))).splitlines()
    assert f"{CLUSTER}upstream_rq_total: 5" in text
    [ours] = [t for t in text if t.startswith(CLUSTER + "upstream_rq_time:")]
    assert line.match(ours), ours
    [empty] = [t for t in text if t.startswith("http.gateway-proxy.downstream_rq_time:")]
    assert "P50(nan,nan)" in empty


def test_merge_sums_counters_and_gauges_maxes_flags_and_merges_buckets() -> None:
    a = snapshot(_store([0.3, 2, 40], rq=5, cx_active=2, open_flag=0))
    b = snapshot(_store([7, 900], rq=7, cx_active=3, open_flag=1))
    merged = merge([from_wire(json.loads(json.dumps(to_wire(x)))) for x in (a, b)])
    assert merged.counters[CLUSTER + "upstream_rq_total"] == 12
    assert merged.gauges[CLUSTER + "upstream_cx_active"] == 5
    assert merged.gauges[CLUSTER + "circuit_breakers.default.rq_open"] == 1  # a flag, not 2
    assert merged.gauges["dns_cache.solo_io_generated_dfp:12345.num_hosts"] == 3  # same hosts
    h = merged.histograms[CLUSTER + "upstream_rq_time"]
    one = _store([0.3, 2, 40, 7, 900]).histograms[CLUSTER + "upstream_rq_time"]
    assert h.counts == one.counts and h.count == 5 and abs(h.sum - one.sum) < 1e-9
    assert h.quantile(0.5) == one.quantile(0.5) and h.quantile(0.99) == one.quantile(0.99)


def test_wire_from_another_version_is_skipped_not_mis_merged() -> None:
    wire = to_wire(snapshot(_store([1])))
    wire["histograms"][CLUSTER + "upstream_rq_time"]["counts"] = [1, 2]
    assert CLUSTER + "upstream_rq_time" not in from_wire(wire).histograms


def test_select_filter_and_usedonly() -> None:
    snap = snapshot(_store([1]))
    used = select(snap, None, True)
    assert CLUSTER + "circuit_breakers.default.rq_open" not in used.gauges
    assert list(used.histograms) == [CLUSTER + "upstream_rq_time"]
    only = select(snap, re.compile(r"^http\."), False)
    assert list(only.counters) == ["http.gateway-proxy.downstream_rq_total"]
    assert list(only.histograms) == ["http.gateway-proxy.downstream_rq_time"]


def test_prometheus_of_merged_workers_parses() -> None:
    merged = merge([snapshot(_store([1, 2])), snapshot(_store([3]))])
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(merged))}
    hist = families["envoy_cluster_upstream_rq_time"]
    count = [s for s in hist.samples if s.name.endswith("_count")]
    assert count[0].value == 3
    assert count[0].labels == {"envoy_cluster_name": "solo_io_generated_dfp:12345"}
    assert families["envoy_cluster_upstream_rq"].samples[0].value == 10
    assert render_prometheus(Snapshot()) == ""
