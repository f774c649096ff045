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
    # Envoy's filter= and usedonly apply here too
    status, body = p.admin_get("/stats/prometheus?usedonly&filter=upstream_rq")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "envoy_cluster_upstream_rq" in names and "envoy_dns_cache_num_hosts" not in names
    assert "envoy_cluster_upstream_rq_retry" not in names  # never used


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
    # a mutation by GET is refused (Envoy: POST only), and changes nothing
    assert p.admin_get("/drain_listeners") == (405, b"Method GET not allowed, POST required.\n")
    assert p.admin_get("/ready") == (200, b"LIVE\n")
    status, body = p.admin_request("POST", "/drain_listeners")
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


# ---------------------------------------------------------------------------- Envoy shapes
import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tests.support.clients import RawClient  # noqa: E402

ENVOY = Path(__file__).parent / "fixtures" / "envoy_admin"
SEEDS = Path(__file__).parent / "fixtures" / "seeds"


def _json(p: ProxyProcess, path: str) -> Any:
    status, body = p.admin_get(path)
    assert status == 200, body
    return json.loads(body)


def _stats(p: ProxyProcess) -> dict[str, int]:
    data = _json(p, "/stats?format=json")
    return {s["name"]: s["value"] for s in data["stats"] if "name" in s}


def _shape(value: Any) -> Any:
    """Keys and value types, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _covers(ours: Any, envoy: Any, where: str = "") -> None:
    """Every key of Envoy's shape is in ours, with the same type."""
    if isinstance(envoy, dict):
        assert isinstance(ours, dict), where
        for k, v in envoy.items():
            assert k in ours, f"{where}.{k} missing"
            _covers(ours[k], v, f"{where}.{k}")
    elif isinstance(envoy, list):
        assert isinstance(ours, list), where
        if envoy and ours:
            _covers(ours[0], envoy[0], where + "[0]")
    else:
        assert ours == envoy, f"{where}: {ours} != {envoy}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scripted_traffic_mix_gives_exact_counters(proxy_factory, origin: OriginServer) -> None:
    p: ProxyProcess = proxy_factory()
    host = f"mix.test:{origin.port}"
    for path, n in (("/echo", 5), ("/missing", 3), ("/status/503", 2)):
        for _ in range(n):
            assert p.curl(f"http://{host}{path}").returncode == 0
    refused = _free_port()
    assert p.curl(f"http://refused.test:{refused}/").http_code == 503
    stats = _stats(p)
    [cluster] = {k.split(".")[1] for k in stats if k.startswith("cluster.")}
    http, up = "http.gateway-proxy.", f"cluster.{cluster}."
    assert stats[http + "downstream_rq_total"] == 11
    assert [stats[http + f"downstream_rq_{c}xx"] for c in (1, 2, 3, 4, 5)] == [0, 5, 0, 3, 3]
    assert stats[http + "downstream_cx_total"] == 11  # one curl, one connection
    assert stats[http + "downstream_rq_active"] == 0
    assert stats[http + "downstream_cx_upgrades_active"] == 0
    assert stats[up + "upstream_rq_total"] == 11
    assert stats[up + "upstream_rq_active"] == 0
    assert stats[up + "upstream_rq_pending_active"] == 0
    assert stats[up + "upstream_cx_connect_fail"] == 1
    assert stats[up + "upstream_cx_total"] >= 1
    # per-host /clusters stats, JSON and text
    data = _json(p, "/clusters?format=json")
    hosts = {h["hostname"]: h for h in data["cluster_statuses"][0]["host_statuses"]}
    mix = {m["name"]: int(m["value"]) for m in hosts[host]["stats"]}
    assert mix["rq_total"] == 10 and mix["rq_error"] == 2 and mix["rq_success"] == 8
    assert mix["rq_active"] == 0 and mix["cx_total"] == stats[up + "upstream_cx_total"]
    bad = {m["name"]: int(m["value"]) for m in hosts[f"refused.test:{refused}"]["stats"]}
    assert bad["cx_connect_fail"] == 1 and bad["cx_total"] == 0 and bad["rq_error"] == 1
    status, text = p.admin_get("/clusters")
    lines = text.decode().splitlines()
    key = f"{cluster}::127.0.0.1:{origin.port}"
    assert f"{key}::rq_total::10" in lines and f"{key}::hostname::{host}" in lines
    assert f"{key}::health_flags::healthy" in lines
    assert f"{cluster}::default_priority::max_connections::1024" in lines
    assert f"{cluster}::high_priority::max_retries::3" in lines


def test_endpoint_shapes_match_envoys(proxy_factory, origin: OriginServer) -> None:
    p: ProxyProcess = proxy_factory()
    for _ in range(3):
        assert p.curl(f"http://shape.test:{origin.port}/echo").http_code == 200
    envoy = json.loads((ENVOY / "clusters.json").read_text())
    ours = _json(p, "/clusters?format=json")
    # Envoy omits the DEFAULT priority (protobuf's enum default); dfproxy names it.
    for t in envoy["cluster_statuses"][0]["circuit_breakers"]["thresholds"]:
        t.setdefault("priority", "DEFAULT")
    _covers(_shape(ours), _shape(envoy))
    _covers(
        _shape(_json(p, "/server_info")),
        _shape(json.loads((ENVOY / "server_info.json").read_text())),
    )
    info = _json(p, "/server_info")
    assert info["state"] == "LIVE" and re.fullmatch(r"\d+s", info["uptime_current_epoch"])
    _covers(
        _shape(_json(p, "/stats?format=json&filter=upstream_rq_t")),
        _shape(json.loads((ENVOY / "stats.json").read_text())),
    )


def test_dashboard_data_endpoints(proxy_factory, origin: OriginServer) -> None:
    p: ProxyProcess = proxy_factory()
    for path in ("/echo", "/status/404"):
        assert p.curl(f"http://recent.test:{origin.port}{path}").returncode == 0
    log = _json(p, "/access_log?limit=1")["entries"]
    assert len(log) == 1 and log[0]["path"] == "/status/404" and log[0]["response_code"] == 404
    assert len(_json(p, "/access_log")["entries"]) == 2
    assert _json(p, "/access_log?limit=nonsense")["entries"]  # a bad limit means the default
    deadline = time.monotonic() + 5
    while True:  # the series is sampled once a second
        history = _json(p, "/stats/history")
        if sum(s[1] for s in history["samples"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert history["columns"] == ["t", "rq", "1xx", "2xx", "3xx", "4xx", "5xx"]
    assert sum(s[3] for s in history["samples"]) == 1 and sum(s[5] for s in history["samples"]) == 1
    status, body = p.admin_get("/stats?filter=(")
    assert status == 400 and b"invalid regex" in body


def test_active_tunnel_gauge(proxy_factory, tcp_echo_server) -> None:
    p: ProxyProcess = proxy_factory("-c", str(SEEDS / "dfp_circuit_breakers.yaml"))
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("CONNECT", f"tunnel.test:{tcp_echo_server.port}").status == 200
        c.send(b"ping")
        assert c.recv_exact(4) == b"ping"
        stats = _stats(p)
        assert stats["http.gateway-proxy.downstream_cx_upgrades_active"] == 1
        assert stats["http.gateway-proxy.downstream_cx_active"] == 1


def test_admin_refuses_foreign_host_names_and_get_mutations(proxy_factory) -> None:
    import http.client

    p: ProxyProcess = proxy_factory()

    def get(host: str, path: str = "/stats", method: str = "GET", body: bytes = b"") -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", p.admin_port, timeout=5)
        try:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", host)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            res = conn.getresponse()
            return res.status, res.read()
        finally:
            conn.close()

    # DNS rebinding: a page whose name now points at 127.0.0.1 must not read the admin port
    status, body = get("attacker.example:19000")
    assert status == 403 and b"loopback" in body
    for host in (f"127.0.0.1:{p.admin_port}", "localhost", "[::1]:19000", "app.localhost"):
        assert get(host)[0] == 200, host
    for path in ("/healthcheck/fail", "/reset_counters", "/logging?level=debug"):
        assert get("127.0.0.1", path)[0] == 405, path
    assert get("127.0.0.1", "/logging")[0] == 200  # listing levels changes nothing
    # a POST body is read and dropped; the connection stays usable
    assert get("127.0.0.1", "/reset_counters", "POST", b"x" * 100) == (200, b"OK\n")
    assert get("127.0.0.1", "/reset_counters", "POST", b"x" * (65 * 1024))[0] == 413
