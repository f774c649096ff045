"""The running configuration in Envoy's /config_dump shape (admin.v3 *ConfigDump messages).

What a Gloo user inspects with the seed's command
``jq '.configs[] | select(.["@type"]=="type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
| .dynamic_active_clusters | map(select(.cluster.name | startswith("solo_io_generated_dfp")))'``:
the generated dynamic forward proxy cluster with its connect timeout, CLUSTER_PROVIDED load
balancing and circuit-breaker thresholds.
"""

from __future__ import annotations

import re
import time
from typing import Any

from dfproxy.config.model import DfpConfig, ListenerSpec, ProxyConfig, RouteSpec

ADMIN = "type.googleapis.com/envoy.admin.v3."
TYPES = "type.googleapis.com/envoy."


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _cluster(dfp: DfpConfig) -> dict[str, Any]:
    cb = dfp.circuit_breakers
    cache = dfp.dns_cache
    dns_cache_config: dict[str, Any] = {
        "name": dfp.cluster_name,
        "dns_lookup_family": cache.dns_lookup_family,
        "dns_refresh_rate": _duration(cache.dns_refresh_rate),
        "host_ttl": _duration(cache.host_ttl),
        "max_hosts": cache.max_hosts,
        "dns_cache_circuit_breaker": {"max_pending_requests": cache.max_pending_requests},
        "dns_query_timeout": _duration(cache.dns_query_timeout),
    }
    if dfp.resolver.servers:
        dns_cache_config["typed_dns_resolver_config"] = {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": TYPES + "extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": list(dfp.resolver.servers),
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": dfp.resolver.use_tcp,
                    "no_default_search_domain": dfp.resolver.no_default_search_domain,
                },
            },
        }
    cluster: dict[str, Any] = {
        "@type": TYPES + "config.cluster.v3.Cluster",
        "name": dfp.cluster_name,
        "connect_timeout": _duration(dfp.connect_timeout),
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": cb.max_connections,
                    "max_pending_requests": cb.max_pending_requests,
                    "max_requests": cb.max_requests,
                    "max_retries": cb.max_retries,
                    "track_remaining": cb.track_remaining,
                }
            ]
        },
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": TYPES + "extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache_config,
                "allow_insecure_cluster_options": False,
                "allow_coalesced_connections": False,
            },
        },
    }
    if dfp.tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TYPES + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": dfp.tls.sni or "",
                "common_tls_context": {"alpn_protocols": list(dfp.tls.alpn)},
            },
        }
    return cluster


def _match(route: RouteSpec) -> list[dict[str, Any]]:
    out = []
    for m in route.matchers:
        match: dict[str, Any] = {}
        if m.connect:
            match["connect_matcher"] = {}
        elif m.exact is not None:
            match["path"] = m.exact
        elif m.regex is not None:
            match["safe_regex"] = {"regex": m.regex.pattern}
        else:
            match["prefix"] = m.prefix or "/"
        if not m.case_sensitive:
            match["case_sensitive"] = False
        out.append(match)
    return out


def _route_config(spec: ListenerSpec) -> dict[str, Any]:
    return {
        "@type": TYPES + "config.route.v3.RouteConfiguration",
        "name": f"{spec.name}-routes",
        "virtual_hosts": [
            {
                "name": vh.name,
                "domains": vh.domains,
                "routes": [
                    {
                        "name": f"{r.name}-matcher-{i}",
                        "match": match,
                        "action": r.action,
                        "timeout": _duration(r.timeout),
                    }
                    for r in vh.routes
                    for i, match in enumerate(_match(r))
                ],
            }
            for vh in spec.virtual_hosts
        ],
    }


def config_dump(config: ProxyConfig, loaded_at: float) -> dict[str, Any]:
    """The whole dump: listeners, clusters, routes, all at the active config's version."""
    version = config.version
    updated = _stamp(loaded_at)
    clusters: dict[str, dict[str, Any]] = {}
    for spec in config.listeners:
        if spec.dfp is not None:
            clusters.setdefault(spec.dfp.cluster_name, _cluster(spec.dfp))
    return {
        "configs": [
            {
                "@type": ADMIN + "ListenersConfigDump",
                "version_info": version,
                "dynamic_listeners": [
                    {
                        "name": spec.name,
                        "active_state": {
                            "version_info": version,
                            "listener": {
                                "@type": TYPES + "config.listener.v3.Listener",
                                "name": spec.name,
                                "address": {
                                    "socket_address": {
                                        "address": spec.host,
                                        "port_value": spec.port,
                                    }
                                },
                                "use_proxy_proto": spec.use_proxy_protocol,
                            },
                            "last_updated": updated,
                        },
                    }
                    for spec in config.listeners
                ],
            },
            {
                "@type": ADMIN + "ClustersConfigDump",
                "version_info": version,
                "dynamic_active_clusters": [
                    {"version_info": version, "cluster": c, "last_updated": updated}
                    for c in clusters.values()
                ],
            },
            {
                "@type": ADMIN + "RoutesConfigDump",
                "dynamic_route_configs": [
                    {
                        "version_info": version,
                        "route_config": _route_config(spec),
                        "last_updated": updated,
                    }
                    for spec in config.listeners
                ],
            },
        ]
    }


def filter_names(dump: dict[str, Any], rx: re.Pattern[str]) -> dict[str, Any]:
    """Keep the listeners, clusters and route configs whose name matches ``rx``."""

    def name_of(item: dict[str, Any]) -> str:
        for key in ("cluster", "route_config"):
            if key in item:
                return str(item[key].get("name", ""))
        return str(item.get("name", ""))

    out = []
    for config in dump["configs"]:
        kept = dict(config)
        for key, value in config.items():
            if isinstance(value, list):
                kept[key] = [v for v in value if rx.search(name_of(v))]
        out.append(kept)
    return {"configs": out}
