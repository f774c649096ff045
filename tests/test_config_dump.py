"""/config_dump in Envoy's shape, checked with the seed's own jq command (seed 000)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.proxy import ProxyProcess

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
# Verbatim from the seed's "Verify that your circuit breaker settings were applied".
SEED_JQ = (
    '.configs[] | select(.["@type"]=="type.googleapis.com/envoy.admin.v3.ClustersConfigDump")'
    ' | .dynamic_active_clusters | map(select(.cluster.name | startswith("solo_io_generated_dfp")))'
)


def _dump(p: ProxyProcess, query: str = "") -> dict[str, object]:
    status, body = p.admin_get("/config_dump" + query)
    assert status == 200, body
    result: dict[str, object] = json.loads(body)
    return result


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is installed by make test")
def test_seed_jq_command_prints_the_cluster_with_its_thresholds(proxy_factory) -> None:
    p = proxy_factory("-c", str(SEEDS / "dfp_circuit_breakers.yaml"))
    status, body = p.admin_get("/config_dump")
    assert status == 200
    out = subprocess.run(
        ["jq", "-r", SEED_JQ], input=body, capture_output=True, check=True, timeout=10
    ).stdout
    clusters = json.loads(out)
    assert len(clusters) == 1
    cluster = clusters[0]["cluster"]
    assert cluster["name"].startswith("solo_io_generated_dfp:")
    assert cluster["connect_timeout"] == "5s"
    assert cluster["lb_policy"] == "CLUSTER_PROVIDED"
    assert cluster["circuit_breakers"]["thresholds"] == [
        {
            "max_connections": 40000,
            "max_pending_requests": 40000,
            "max_requests": 40000,
            "max_retries": 40000,
            "track_remaining": True,
        }
    ]
    assert clusters[0]["version_info"]


def test_dump_has_listeners_clusters_and_routes(proxy_factory) -> None:
    p = proxy_factory("-c", str(SEEDS / "dfp_connect.yaml"))
    types = [c["@type"].rsplit(".", 1)[1] for c in _dump(p)["configs"]]  # type: ignore[attr-defined,index]
    assert types == ["ListenersConfigDump", "ClustersConfigDump", "RoutesConfigDump"]
    routes = _dump(p, "?resource=dynamic_route_configs")["configs"]
    assert routes[0]["route_config"]["virtual_hosts"][0]["routes"][0]["match"] == {  # type: ignore[index]
        "connect_matcher": {}
    }


def test_resource_and_name_regex_filters(proxy_factory) -> None:
    p = proxy_factory()
    clusters = _dump(p, "?resource=dynamic_active_clusters")["configs"]
    assert [c["cluster"]["lb_policy"] for c in clusters] == ["CLUSTER_PROVIDED"]  # type: ignore[attr-defined,index]
    none = _dump(p, "?name_regex=no-such-name")["configs"]
    assert all(not c.get("dynamic_active_clusters") for c in none)  # type: ignore[attr-defined]
    status, body = p.admin_get("/config_dump?resource=nonsense")
    assert status == 404 and b"nonsense" in body
    status, body = p.admin_get("/config_dump?name_regex=(")
    assert status == 400


def test_supervisor_answers_config_dump_for_its_workers(proxy_factory) -> None:
    p = proxy_factory("--workers", "2")
    clusters = _dump(p, "?resource=dynamic_active_clusters")["configs"]
    assert len(clusters) == 1  # type: ignore[arg-type]
