"""/stats histograms and /stats/prometheus, parsed with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess


def _families(p: ProxyProcess) -> dict[str, object]:
    status, body = p.admin_get("/stats/prometheus")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_prometheus_exposition_parses_and_carries_envoy_tags(
    proxy_factory, origin: OriginServer
) -> None:
    p: ProxyProcess = proxy_factory()
    for _ in range(5):
        assert p.curl(origin.url("/echo")).http_code == 200
    families = _families(p)
    total = families["envoy_cluster_upstream_rq"]  # prometheus-client strips _total
    samples = [s for s in total.samples if s.name == "envoy_cluster_upstream_rq_total"]  # type: ignore[attr-defined]
    assert len(samples) == 1
    assert samples[0].labels["envoy_cluster_name"].startswith("solo_io_generated_dfp:")
    assert samples[0].value == 5
    rq = families["envoy_http_downstream_rq"]
    assert any(  # type: ignore[attr-defined]
        s.labels.get("envoy_http_conn_manager_prefix") == "gateway-proxy" and s.value == 5
        for s in rq.samples
    )
    assert "envoy_dns_cache_num_hosts" in families


def test_request_time_histograms(proxy_factory, origin: OriginServer) -> None:
    p: ProxyProcess = proxy_factory()
    for _ in range(4):
        assert p.curl(origin.url("/echo")).http_code == 200
    hist = _families(p)["envoy_cluster_upstream_rq_time"]
    assert hist.type == "histogram"  # type: ignore[attr-defined]
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]  # type: ignore[attr-defined]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 4
    count = [s for s in hist.samples if s.name.endswith("_count")]  # type: ignore[attr-defined]
    assert count[0].value == 4
    status, body = p.admin_get("/stats?filter=rq_time")
    text = body.decode()
    assert "downstream_rq_time: P0(nan," in text and "upstream_rq_time: P0(nan," in text
    status, body = p.admin_get("/stats?filter=rq_time&format=json")
    assert b'"computed_quantiles"' in body


def test_drain_listeners_stops_accepting_but_keeps_running(
    proxy_factory, origin: OriginServer
) -> None:
    import socket

    p: ProxyProcess = proxy_factory()
    assert p.curl(origin.url("/echo")).http_code == 200
    status, body = p.admin_get("/drain_listeners")
    assert (status, body) == (200, b"OK\n")
    status, body = p.admin_get("/ready")
    assert (status, body) == (503, b"DRAINING\n")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", p.port)) != 0  # no longer accepting
    assert p.poll() is None  # the process (and its admin) keeps running


def test_non_loopback_admin_needs_an_explicit_flag() -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "dfproxy", "run", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 2
    assert "--admin-allow-remote" in res.stderr
