"""The dynamic forward proxy cluster: the DNS cache and the upstream pool it feeds.

Gloo generates one cluster per distinct DFP configuration, named
``solo_io_generated_dfp:<hash>``; so do we. Hosts are the DNS cache entries; IP literals
bypass the cache and get a static host of their own.
"""

from __future__ import annotations

import socket

from dfproxy.dns.cache import DnsCache, DnsHostInfo
from dfproxy.dns.persistence import CacheStore
from dfproxy.dns.resolver import Resolver
from dfproxy.http.authority import Authority
from dfproxy.upstream.pool import UpstreamPool

MAX_IP_HOSTS = 4096


class DfpCluster:
    """One DFP cluster in one worker."""

    def __init__(
        self,
        name: str,
        dns_cache: DnsCache,
        pool: UpstreamPool,
        default_port: int = 80,
        resolver: Resolver | None = None,
    ) -> None:
        self.name = name
        self.dns_cache = dns_cache
        self.pool = pool
        self.default_port = default_port
        self.resolver = resolver
        self.store: CacheStore | None = None
        self.created_by: object = None  # the Runtime that built it (a reload may discard it)
        self._ip_hosts: dict[str, DnsHostInfo] = {}

    def ip_host(self, authority: Authority) -> DnsHostInfo:
        """A host for an IP literal: no DNS, its own address (Envoy still keys it host:port)."""
        key = authority.key
        info = self._ip_hosts.get(key)
        if info is None:
            if len(self._ip_hosts) >= MAX_IP_HOSTS:
                self._ip_hosts.clear()
            info = DnsHostInfo(key, authority.port)
            family = socket.AF_INET6 if ":" in authority.host else socket.AF_INET
            info.addresses = [(authority.host, int(family))]
            info.resolved = True
            info.last_status = "success"
            self._ip_hosts[key] = info
        return info

    def close(self) -> None:
        """Stop refreshing, persist, close idle connections (busy ones finish on their own)."""
        if self.store is not None:
            self.store.close()
            self.store = None
        self.dns_cache.close()
        self.pool.close_idle()
        if self.resolver is not None:
            self.resolver.close()
            self.resolver = None
