"""Build the running objects (clusters, DNS caches, pools, listeners) from a ProxyConfig.

One Runtime per worker process and config version. Clusters are shared by every listener
whose DFP configuration is identical (Gloo names them by the config's hash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

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
from dfproxy.upstream.pool import UpstreamPool

log = logging.getLogger("dfproxy.runtime")


class Runtime:
    """Everything one worker runs for one configuration."""

    def __init__(
        self,
        config: ProxyConfig,
        loop: asyncio.AbstractEventLoop,
        stats: StatsStore,
        access_log: AccessLog | None,
        worker_index: int | None = None,
    ) -> None:
        self.config = config
        self.worker_index = worker_index
        self.stores: list[CacheStore] = []
        self.loop = loop
        self.stats = stats
        self.access_log = access_log
        self.clusters: dict[str, DfpCluster] = {}
        self.resolvers: list[Resolver] = []
        self.listeners: list[tuple[ListenerSpec, Listener]] = []
        for spec in config.listeners:
            cluster = self._cluster(spec.dfp) if spec.dfp is not None else None
            routes = RouteTable(
                [
                    VirtualHost(
                        vh.name, vh.domains, [self._route(spec, r, cluster) for r in vh.routes]
                    )
                    for vh in spec.virtual_hosts
                ]
            )
            listener = Listener(spec.name, loop, routes, stats, access_log)
            if self.listeners:
                listener.own_ports = self.listeners[0][1].own_ports
                listener.own_endpoints = self.listeners[0][1].own_endpoints
            self.listeners.append((spec, listener))

    def _cluster(self, dfp: DfpConfig) -> DfpCluster:
        name = dfp.cluster_name
        cluster = self.clusters.get(name)
        if cluster is None:
            resolver = Resolver(dfp.resolver, self.loop)
            self.resolvers.append(resolver)
            cache_config = dataclasses.replace(dfp.dns_cache, name=name)
            cache = DnsCache(cache_config, resolver, self.stats, self.loop)
            pool = UpstreamPool(self.loop, self.stats, name, connect_timeout=dfp.connect_timeout)
            cluster = DfpCluster(name, cache, pool)
            self.clusters[name] = cluster
            if cache_config.store_filename:
                filename = cache_config.store_filename
                if self.worker_index is not None:
                    filename = f"{filename}.{self.worker_index}"  # one file per worker process
                store = CacheStore(
                    cache,
                    StoreConfig(
                        filename,
                        cache_config.store_flush_interval,
                        cache_config.store_max_entries,
                    ),
                    self.loop,
                )
                store.load()
                store.start()
                self.stores.append(store)
            for host, port in dfp.dns_cache.preresolve_hostnames:
                cache.preresolve(host, port)
        return cluster

    def _route(self, listener: ListenerSpec, spec: RouteSpec, cluster: DfpCluster | None) -> Route:
        filters: list[HttpFilter] = []
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

    def close(self) -> None:
        for _, listener in self.listeners:
            listener.close()
        for store in self.stores:
            store.close()
        for cluster in self.clusters.values():
            cluster.dns_cache.close()
            cluster.pool.close_idle()
        for resolver in self.resolvers:
            resolver.close()
