"""/clusters: Envoy's ClusterStatuses (JSON) and its text form, built from the runtime.

Envoy's DFP cluster holds one logical host per DNS cache entry; its address is the entry's
first resolved address and its ``hostname`` the cache key (``example.com:443``), see
envoy-gloo-dfp.md §5.2. Per-host figures are kept on the DnsHostInfo (plain int slots the hot
path adds to); ``rq_success`` is derived (finished requests without a 5xx).

JSON shape (``admin.v3.Clusters``): ``cluster_statuses[]`` with ``name``,
``observability_name``, ``added_via_api``, ``circuit_breakers.thresholds[]`` and
``host_statuses[]`` (``address.socket_address{address, port_value}``, ``stats[]`` of
SimpleMetric ``{name, type, value}`` with the uint64 value as a string as protobuf's JSON
mapping prints it, ``health_status.eds_health_status``, ``weight``, ``hostname``,
``priority``, ``locality``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfproxy.dns.cache import DnsHostInfo
    from dfproxy.runtime import Runtime

# Envoy's defaults for the high priority, which dfproxy's routes never use (Gloo's DFP
# circuitBreakers set the default priority); Envoy lists both.
HIGH_PRIORITY_DEFAULTS = {
    "max_connections": 1024,
    "max_pending_requests": 1024,
    "max_requests": 1024,
    "max_retries": 3,
}
_GAUGES = ("cx_active", "rq_active")
_LIMITS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def host_stats(info: DnsHostInfo) -> dict[str, int]:
    """Envoy's per-host stats (upstream/host_description.h ALL_HOST_STATS) dfproxy keeps."""
    st = info.stats
    return {
        "cx_active": st.cx_active,
        "cx_connect_fail": st.cx_connect_fail,
        "cx_total": st.cx_total,
        "rq_active": st.rq_active,
        "rq_error": st.rq_error,
        "rq_success": st.rq_total - st.rq_active - st.rq_error,
        "rq_timeout": st.rq_timeout,
        "rq_total": st.rq_total,
    }


def _metric(name: str, value: int) -> dict[str, Any]:
    return {"name": name, "type": "GAUGE" if name in _GAUGES else "COUNTER", "value": str(value)}


def cluster_statuses(runtime: Runtime) -> dict[str, Any]:
    """The ``admin.v3.Clusters`` view of every DFP cluster of ``runtime``."""
    limits: dict[str, dict[str, Any]] = {}
    for spec, _ in runtime.listeners:
        if spec.dfp is not None:
            cb = spec.dfp.circuit_breakers
            limits[spec.dfp.cluster_name] = {
                "max_connections": cb.max_connections,
                "max_pending_requests": cb.max_pending_requests,
                "max_requests": cb.max_requests,
                "max_retries": cb.max_retries,
            }
    statuses = []
    for cluster in runtime.clusters.values():
        hosts = []
        for info in cluster.dns_cache.hosts.values():
            addr = info.address
            if addr is None:
                continue
            hosts.append(
                {
                    "address": {
                        "socket_address": {
                            "protocol": "TCP",
                            "address": addr[0],
                            "port_value": info.port,
                        }
                    },
                    "stats": [_metric(k, v) for k, v in host_stats(info).items()],
                    "health_status": {"eds_health_status": "HEALTHY"},
                    "weight": 1,
                    "hostname": info.key,
                    "priority": 0,
                    "locality": {},
                }
            )
        default = limits.get(cluster.name, {})
        statuses.append(
            {
                "name": cluster.name,
                "observability_name": cluster.name,
                "added_via_api": True,
                "circuit_breakers": {
                    "thresholds": [
                        {"priority": "DEFAULT", **default},
                        {"priority": "HIGH", **HIGH_PRIORITY_DEFAULTS},
                    ]
                },
                "host_statuses": hosts,
            }
        )
    return {"cluster_statuses": statuses}


def _address(h: dict[str, Any]) -> str:
    sa = h["address"]["socket_address"]
    ip = sa["address"]
    return f"[{ip}]:{sa['port_value']}" if ":" in ip else f"{ip}:{sa['port_value']}"


def render_text(data: dict[str, Any]) -> str:
    """Envoy's text form (clusters_chunk_processor.cc): ``<cluster>::<key>::<value>`` lines."""
    lines: list[str] = []
    for c in data["cluster_statuses"]:
        name = c["name"]
        lines.append(f"{name}::observability_name::{c['observability_name']}")
        for t in c["circuit_breakers"]["thresholds"]:
            prio = "high_priority" if t.get("priority") == "HIGH" else "default_priority"
            lines.extend(f"{name}::{prio}::{k}::{t[k]}" for k in _LIMITS if k in t)
        lines.append(f"{name}::added_via_api::{str(c['added_via_api']).lower()}")
        for h in c["host_statuses"]:
            addr = _address(h)
            stats = sorted(h["stats"], key=lambda m: str(m["name"]))
            lines.extend(f"{name}::{addr}::{m['name']}::{m['value']}" for m in stats)
            lines.append(f"{name}::{addr}::hostname::{h['hostname']}")
            lines.append(f"{name}::{addr}::health_flags::healthy")
            lines.append(f"{name}::{addr}::weight::{h['weight']}")
            lines.extend(f"{name}::{addr}::{k}::" for k in ("region", "zone", "sub_zone"))
            lines.append(f"{name}::{addr}::canary::false")
            lines.append(f"{name}::{addr}::priority::{h['priority']}")
            lines.append(f"{name}::{addr}::success_rate::-1")
            lines.append(f"{name}::{addr}::local_origin_success_rate::-1")
    return "".join(line + "\n" for line in lines)


def merge(views: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' views as one: a host (same cluster and cache key) has its stats summed; the
    address shown is the first worker's (each worker resolves on its own)."""
    clusters: dict[str, dict[str, Any]] = {}
    for view in views:
        for c in view["cluster_statuses"]:
            merged = clusters.get(c["name"])
            if merged is None:
                merged = clusters[c["name"]] = {**c, "host_statuses": []}
            hosts = {h["hostname"]: h for h in merged["host_statuses"]}
            for h in c["host_statuses"]:
                have = hosts.get(h["hostname"])
                if have is None:
                    h = {**h, "stats": [dict(m) for m in h["stats"]]}
                    merged["host_statuses"].append(h)
                    hosts[h["hostname"]] = h
                    continue
                extra = {m["name"]: int(m["value"]) for m in h["stats"]}
                for m in have["stats"]:
                    m["value"] = str(int(m["value"]) + extra.get(m["name"], 0))
    return {"cluster_statuses": list(clusters.values())}
