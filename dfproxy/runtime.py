"""Build the running objects (clusters, DNS caches, pools, listeners) from a ProxyConfig.

One Runtime per worker process and config version. Clusters are shared by every listener
whose DFP configuration is identical (Gloo names them by the config's hash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from dfproxy import policies
from dfproxy.access_log import AccessLog
from dfproxy.actions import DirectResponseAction, ForwardAction, RedirectAction
from dfproxy.cluster import DfpCluster
from dfproxy.config.model import DfpConfig, ListenerSpec, ProxyConfig, RouteSpec
from dfproxy.dns.cache import DnsCache
from dfproxy.dns.persistence import CacheStore, StoreConfig
from dfproxy.dns.resolver import Resolver
from dfproxy.filters import FilterChain, HttpFilter
from dfproxy.filters.dynamic_forward_proxy import DynamicForwardProxyFilter
from dfproxy.listener import Listener
from dfproxy.router import Route, RouteTable, VirtualHost
from dfproxy.stats import StatsStore
from dfproxy.upstream.circuit_breaker import Thresholds
from dfproxy.upstream.pool import UpstreamPool

log = logging.getLogger("dfproxy.runtime")


class Runtime:
    """Everything one worker runs for one configuration.

    Built from a ProxyConfig, optionally on top of the previous Runtime (live reload): a
    listener with the same name and address is kept (its open connections see the new routes
    from their next request on), and a cluster with an identical DFP configuration is kept
    with its warm DNS cache and pool. What the new config no longer has is *retired*: the
    caller drains retired listeners and closes retired clusters once they are idle.
    """

    def __init__(
        self,
        config: ProxyConfig,
        loop: asyncio.AbstractEventLoop,
        stats: StatsStore,
        access_log: AccessLog | None,
        worker_index: int | None = None,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        self.worker_index = worker_index
        self.loop = loop
        self.stats = stats
        self.access_log = access_log
        self.clusters: dict[str, DfpCluster] = {}
        # Objects policies share across routes and keep across reloads (a Redis client, a
        # JWKS cache), by a key of the policy's choosing; closed at process exit.
        self.shared: dict[str, Any] = dict(previous.shared) if previous else {}
        self.listeners: list[tuple[ListenerSpec, Listener]] = []
        self.new_listeners: list[tuple[ListenerSpec, Listener]] = []
        self.kept_routes: list[tuple[Listener, RouteTable, ListenerSpec]] = []
        old_clusters = dict(previous.clusters) if previous else {}
        old_listeners = {
            (spec.host, spec.port): listener
            for spec, listener in (previous.listeners if previous else [])
        }
        own_ports: set[int] = set()
        own_endpoints: set[tuple[str, int]] = set()
        for spec in config.listeners:
            cluster = self._cluster(spec.dfp, old_clusters) if spec.dfp is not None else None
            routes = RouteTable(
                [
                    VirtualHost(
                        vh.name, vh.domains, [self._route(spec, r, cluster) for r in vh.routes]
                    )
                    for vh in spec.virtual_hosts
                ]
            )
            # A listener is its address (Gloo requires bindAddress:bindPort to be unique): the
            # same address keeps its socket, whatever else about it changed.
            listener = old_listeners.pop((spec.host, spec.port), None)
            if listener is not None:
                self.kept_routes.append((listener, routes, spec))  # swapped in by activate()
                own_ports, own_endpoints = listener.own_ports, listener.own_endpoints
            else:
                listener = Listener(
                    spec.name,
                    loop,
                    routes,
                    stats,
                    access_log,
                    use_proxy_protocol=spec.use_proxy_protocol,
                )
                listener.set_timeouts(spec)
                self.new_listeners.append((spec, listener))
            self.listeners.append((spec, listener))
        # Every listener of this process shares one record of where the process listens.
        for _, listener in self.new_listeners:
            listener.own_ports = own_ports
            listener.own_endpoints = own_endpoints
        self.retired_listeners = list(old_listeners.values())
        self.retired_clusters = [c for name, c in old_clusters.items() if name not in self.clusters]

    def _cluster(self, dfp: DfpConfig, old: dict[str, DfpCluster]) -> DfpCluster:
        name = dfp.cluster_name
        cluster = self.clusters.get(name) or old.get(name)
        if cluster is not None:
            self.clusters[name] = cluster
            return cluster
        resolver = Resolver(dfp.resolver, self.loop)
        cache_config = dataclasses.replace(dfp.dns_cache, name=name)
        cache = DnsCache(cache_config, resolver, self.stats, self.loop)
        cb = dfp.circuit_breakers
        pool = UpstreamPool(
            self.loop,
            self.stats,
            name,
            connect_timeout=dfp.connect_timeout,
            idle_timeout=dfp.upstream_idle_timeout,
            tls=dfp.tls,
            breakers=Thresholds(
                cb.max_connections,
                cb.max_pending_requests,
                cb.max_requests,
                cb.max_retries,
                cb.track_remaining,
            ),
        )
        # Envoy: the cache key's default port is 443 when the cluster speaks TLS.
        cluster = DfpCluster(
            name, cache, pool, default_port=443 if dfp.tls else 80, resolver=resolver
        )
        cluster.created_by = self
        self.clusters[name] = cluster
        if cache_config.store_filename:
            filename = cache_config.store_filename
            if self.worker_index is not None:
                filename = f"{filename}.{self.worker_index}"  # one file per worker process
            store = CacheStore(
                cache,
                StoreConfig(
                    filename, cache_config.store_flush_interval, cache_config.store_max_entries
                ),
                self.loop,
            )
            store.load()
            store.start()
            cluster.store = store
        for host, port in cache_config.preresolve_hostnames:
            cache.preresolve(host, port)
        return cluster

    def _route(self, listener: ListenerSpec, spec: RouteSpec, cluster: DfpCluster | None) -> Route:
        filters: list[HttpFilter] = policies.build_route(
            spec.policies, policies.BuildContext(self, listener, cluster, spec.name)
        )
        action: object
        if spec.action == "dfp":
            if cluster is None:
                raise ValueError(
                    f"route {spec.name!r} uses dynamicForwardProxy but the gateway has no "
                    "httpGateway.options.dynamicForwardProxy"
                )
            filters.append(
                DynamicForwardProxyFilter(
                    cluster,
                    spec.host_rewrite,
                    spec.host_rewrite_header.encode() if spec.host_rewrite_header else None,
                )
            )
            action = ForwardAction(cluster)
        elif spec.action == "direct":
            action = DirectResponseAction(spec.direct_status, spec.direct_body.encode())
        else:
            action = RedirectAction(**spec.redirect)  # type: ignore[arg-type]
        websocket = listener.websocket_enabled if spec.websocket is None else spec.websocket
        return Route(
            name=spec.name,
            matchers=spec.matchers,
            action=action,
            chain=FilterChain(filters),
            connect_terminate=spec.connect_terminate,
            websocket=websocket,
            timeout=spec.timeout,
            prefix_rewrite=spec.prefix_rewrite,
            retry=spec.retry,
            host_rewrite=spec.forward_host_rewrite.encode() if spec.forward_host_rewrite else None,
            request_headers_to_add=[
                (n.encode(), v.encode(), a) for n, v, a in spec.request_headers_to_add
            ],
            request_headers_to_remove=frozenset(
                n.lower().encode() for n in spec.request_headers_to_remove
            ),
            response_headers_to_add=[
                (n.encode(), v.encode(), a) for n, v, a in spec.response_headers_to_add
            ],
            response_headers_to_remove=frozenset(
                n.lower().encode() for n in spec.response_headers_to_remove
            ),
        )

    def activate(self) -> None:
        """Switch kept listeners to the new routes (each swap is one attribute store: a request
        sees the old table or the new one, never a mix)."""
        for listener, routes, spec in self.kept_routes:
            listener.routes = routes
            listener.use_proxy_protocol = spec.use_proxy_protocol  # for new connections
            listener.set_timeouts(spec)
            if listener.name != spec.name:
                listener.rename(spec.name, self.stats)
        self.kept_routes = []

    def discard(self) -> None:
        """Undo a Runtime that will not be activated: close what it created, keep the rest."""
        for _, listener in self.new_listeners:
            listener.start_draining()
            listener.close()
        for cluster in self.clusters.values():
            if cluster.created_by is self:
                cluster.close()

    def close(self) -> None:
        """Shut everything down (process exit)."""
        for _, listener in self.listeners:
            listener.close()
        for cluster in self.clusters.values():
            cluster.close()
        for obj in self.shared.values():
            close = getattr(obj, "close", None)
            if close is not None:
                close()
