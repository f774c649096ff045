"""admin_supervisor: with --workers 2 every admin figure covers both workers."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for
from tests.support.clients import RawClient
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

REQUESTS = 40
HTTP = "http.gateway-proxy."


@pytest.fixture
def workers(proxy_factory, origin: OriginServer) -> Iterator[tuple[ProxyProcess, str]]:
    p: ProxyProcess = proxy_factory("--workers", "2", timeout=30)
    host = f"many.test:{origin.port}"
    # One connection per request: SO_REUSEPORT spreads new connections over both workers.
    for i in range(REQUESTS):
        with RawClient("127.0.0.1", p.port, timeout=5) as c:
            path = "/status/404" if i % 4 == 0 else "/echo"
            assert c.request("GET", f"http://{host}{path}").status in (200, 404)
    yield p, host


def _json(p: ProxyProcess, path: str) -> Any:
    status, body = p.admin_get(path)
    assert status == 200, body
    return json.loads(body)


def _scalars(p: ProxyProcess, query: str = "") -> dict[str, int]:
    data = _json(p, "/stats?format=json" + query)
    return {s["name"]: s["value"] for s in data["stats"] if "name" in s}


def _count(p: ProxyProcess, name: str, query: str = "") -> int:
    wire = _json(p, "/stats/raw" + ("?" + query if query else ""))
    return sum(wire["histograms"][name]["counts"])


def test_counters_summed_histograms_merged_and_per_worker_views(workers) -> None:
    p, host = workers
    total = _scalars(p)
    per = [_scalars(p, f"&worker={i}") for i in (0, 1)]
    assert total[HTTP + "downstream_rq_total"] == REQUESTS
    assert [w[HTTP + "downstream_rq_total"] > 0 for w in per] == [True, True], per
    for name in (
        HTTP + "downstream_rq_total",
        HTTP + "downstream_rq_4xx",
        HTTP + "downstream_cx_total",
    ):
        assert total[name] == per[0][name] + per[1][name], name
    assert total[HTTP + "downstream_rq_4xx"] == REQUESTS // 4
    # histograms: bucket counts summed, quantiles computed from the merged buckets
    rq_time = HTTP + "downstream_rq_time"
    assert (
        _count(p, rq_time)
        == REQUESTS
        == _count(p, rq_time, "worker=0") + _count(p, rq_time, "worker=1")
    )
    data = _json(p, "/stats?format=json&filter=downstream_rq_time")
    [hist] = [s["histograms"] for s in data["stats"] if "histograms" in s]
    assert hist["computed_quantiles"][0]["values"][2]["cumulative"] is not None
    status, text = p.admin_get("/stats?filter=downstream_rq_time")
    assert text.decode().startswith(rq_time + ": P0(nan,")
    # Prometheus over both workers parses, with the merged figures
    status, body = p.admin_get("/stats/prometheus")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    counts = [
        s for s in families["envoy_http_downstream_rq_time"].samples if s.name.endswith("_count")
    ]
    assert counts[0].value == REQUESTS
    status, body = p.admin_get("/stats/prometheus?worker=1")
    assert status == 200 and b"envoy_http_downstream_rq_total" in body
    for bad in ("/stats?worker=2", "/stats?worker=x", "/clusters?worker=9"):
        status, body = p.admin_get(bad)
        assert status == 400 and b"workers are 0..1" in body, bad


def test_clusters_dns_and_dashboard_data_cover_both_workers(workers) -> None:
    p, host = workers
    data = _json(p, "/clusters?format=json")
    [cluster] = data["cluster_statuses"]
    [h] = [h for h in cluster["host_statuses"] if h["hostname"] == host]
    assert {m["name"]: m["value"] for m in h["stats"]}["rq_total"] == str(REQUESTS)
    status, text = p.admin_get("/clusters")
    assert text.decode().count(f"::hostname::{host}\n") == 1
    per = [_json(p, f"/clusters?worker={i}&format=json") for i in (0, 1)]
    assert all(c["cluster_statuses"][0]["host_statuses"] for c in per)  # each resolved it
    caches = _json(p, "/dns_cache")["workers"]
    assert [w["worker"] for w in caches] == [0, 1]
    assert all(host in {x["host"] for x in w["view"]["dns_caches"][0]["hosts"]} for w in caches)
    assert _json(p, "/server_info")["command_line_options"]["concurrency"] == 2
    assert len(_json(p, "/access_log")["entries"]) == REQUESTS
    wait_for(
        lambda: sum(s[1] for s in _json(p, "/stats/history")["samples"]) == REQUESTS,
        5,
        "the merged rate series",
    )


def test_drain_listeners_reaches_every_worker(workers) -> None:
    p, _ = workers
    assert p.admin_request("POST", "/drain_listeners") == (200, b"OK\n")
    assert p.admin_get("/ready") == (503, b"DRAINING\n")
    for w in _json(p, "/workers"):
        status, body = _get(int(w["admin_port"]), "/ready")
        assert (status, body) == (503, b"DRAINING\n")

    def refused() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", p.port)) != 0

    wait_for(refused, 5, "both workers to stop accepting")
    assert p.poll() is None


def _get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_commands_reach_every_worker(workers) -> None:
    p, _ = workers
    assert p.admin_get("/reset_counters")[0] == 405
    assert p.admin_request("POST", "/reset_counters") == (200, b"OK\n")
    assert _scalars(p)[HTTP + "downstream_rq_total"] == 0
    status, body = p.admin_request("POST", "/logging?level=info")
    assert status == 200 and b"dfproxy: info" in body
    for w in _json(p, "/workers"):
        assert b"dfproxy: info" in _get(int(w["admin_port"]), "/logging")[1]
