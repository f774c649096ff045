"""clusters_view: Envoy's /clusters text and ClusterStatuses JSON, and merging workers."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from dfproxy.clusters_view import host_stats, merge, render_text
from dfproxy.dns.cache import DnsHostInfo

ENVOY = Path(__file__).parent / "fixtures" / "envoy_admin"


def _envoy_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ENVOY / "clusters.json").read_text())
    return data


def test_text_form_of_envoys_json_is_envoys_text() -> None:
    # Envoy's fixture JSON omits rq_timeout (protobuf leaves out nothing, the fixture does):
    # add it so both fixtures describe the same host.
    data = _envoy_json()
    data["cluster_statuses"][0]["host_statuses"][0]["stats"].append(
        {"name": "rq_timeout", "value": "0", "type": "COUNTER"}
    )
    data["cluster_statuses"][0]["host_statuses"][0]["priority"] = 0
    assert render_text(data) == (ENVOY / "clusters.txt").read_text()


def test_ipv6_host_key_is_bracketed() -> None:
    data = _envoy_json()
    data["cluster_statuses"][0]["host_statuses"][0]["address"]["socket_address"]["address"] = "::1"
    data["cluster_statuses"][0]["host_statuses"][0]["priority"] = 0
    assert "::[::1]:80::hostname::example.com:80" in render_text(data)


def test_host_stats_derive_success_from_finished_requests() -> None:
    info = DnsHostInfo("example.com:80", 80)
    st = info.stats
    st.rq_total, st.rq_active, st.rq_error, st.rq_timeout = 10, 1, 2, 1
    st.cx_total, st.cx_active, st.cx_connect_fail = 3, 1, 1
    assert host_stats(info) == {
        "cx_active": 1,
        "cx_connect_fail": 1,
        "cx_total": 3,
        "rq_active": 1,
        "rq_error": 2,
        "rq_success": 7,
        "rq_timeout": 1,
        "rq_total": 10,
    }


def test_merge_sums_a_hosts_stats_across_workers() -> None:
    a = _envoy_json()
    b = copy.deepcopy(a)
    other = copy.deepcopy(b["cluster_statuses"][0]["host_statuses"][0])
    other["hostname"] = "other.test:80"
    b["cluster_statuses"][0]["host_statuses"].append(other)
    merged = merge([a, b])
    [cluster] = merged["cluster_statuses"]
    hosts = {h["hostname"]: h for h in cluster["host_statuses"]}
    assert set(hosts) == {"example.com:80", "other.test:80"}
    stats = {m["name"]: m["value"] for m in hosts["example.com:80"]["stats"]}
    assert stats["rq_total"] == "10" and stats["cx_active"] == "2"
    assert {m["name"]: m["value"] for m in hosts["other.test:80"]["stats"]}["rq_total"] == "5"
    assert a == _envoy_json()  # inputs untouched
