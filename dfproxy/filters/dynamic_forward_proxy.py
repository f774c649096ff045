"""The dynamic forward proxy filter: host rewrite, then the DNS cache lookup for the request.

Envoy ``proxy_filter.cc`` decodeHeaders (reference §4.1): rewrite Host from the route
(literal first, then header), refuse an empty host, then load the cache entry: a hit
continues, a miss pauses this request only, and the failures answer 503 with Envoy's texts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfproxy.dns import cache as dns_cache
from dfproxy.filters import CONTINUE, STOP, HttpFilter
from dfproxy.http import errors
from dfproxy.http.authority import (
    Authority,
    AuthorityError,
    numeric_ipv4,
    parse_authority,
    parse_authority_cached,
)

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.stream import Stream


class DynamicForwardProxyFilter(HttpFilter):
    """Resolves the destination of a request routed to a dynamic forward proxy cluster."""

    name = "envoy.filters.http.dynamic_forward_proxy"

    def __init__(
        self,
        cluster: DfpCluster,
        host_rewrite: str | None = None,
        host_rewrite_header: bytes | None = None,
    ) -> None:
        self.cluster = cluster
        self.cache = cluster.dns_cache
        self.host_rewrite = host_rewrite
        self.host_rewrite_header = host_rewrite_header.lower() if host_rewrite_header else None
        self.rewrites = host_rewrite is not None or host_rewrite_header is not None

    def on_request_headers(self, stream: Stream) -> int:
        if self.rewrites and not self._rewrite(stream):
            return STOP
        authority = stream.authority
        if authority is None:
            stream.local_error(errors.EmptyHost())
            return STOP
        default_port = self.cluster.default_port
        if stream.https_target and self.cluster.pool.tls is None:
            stream.local_error(
                errors.BadRequest(
                    "https:// absolute-form needs upstream TLS (dynamicForwardProxy.sslConfig); "
                    "use CONNECT (curl -p / --proxytunnel) for end-to-end HTTPS"
                )
            )
            return STOP
        if default_port != 80 and not stream.is_connect and stream.host_header:
            # Envoy: a TLS cluster's default port is 443 (the codec assumed 80).
            authority = parse_authority_cached(stream.host_header, default_port)
            stream.authority = authority
        if authority.is_ip:
            stream.host = self.cluster.ip_host(authority)
            return CONTINUE
        info = self.cache.lookup(authority.key)
        if info is not None:  # a hit, as load() would answer it
            if not info.addresses:
                stream.local_error(errors.DnsResolutionFailure(info.last_status))
                return STOP
            stream.host = info
            return CONTINUE
        # A numeric spelling never enters the cache (it is caught here on its first request),
        # so checking it after the hit path costs cached names nothing.
        numeric = numeric_ipv4(authority.host)
        if numeric is not None:
            # 2130706433, 0177.0.0.1, 127.1: the address inet_aton reads, never a DNS name
            # (access rules check the address, not a spelling of it).
            authority = stream.authority = Authority(numeric, authority.port, True)
            stream.host = self.cluster.ip_host(authority)
            return CONTINUE
        status, info = self.cache.load(
            authority.key, authority.host, authority.port, stream.on_dns_complete
        )
        if status == dns_cache.IN_CACHE:
            assert info is not None
            if not info.addresses:
                stream.local_error(errors.DnsResolutionFailure(info.last_status))
                return STOP
            stream.host = info
            return CONTINUE
        if status == dns_cache.LOADING:
            stream.dns_wait = info
            return STOP
        if status == dns_cache.OVERFLOW:
            stream.local_error(errors.DnsCacheOverflow())
        else:
            stream.local_error(errors.PendingRequestOverflow())
        return STOP

    def _rewrite(self, stream: Stream) -> bool:
        """Envoy PerRouteConfig: the literal, else the first value of the named header."""
        value: bytes | None = None
        if self.host_rewrite is not None:
            value = self.host_rewrite.encode()
        elif self.host_rewrite_header is not None:
            value = stream.request_header(self.host_rewrite_header)
            if value is None:
                return True  # header absent: nothing happens
        if value is not None:
            try:
                text = value.decode("ascii").strip()
                stream.authority = (
                    parse_authority(text, self.cluster.default_port) if text else None
                )
            except (UnicodeDecodeError, AuthorityError) as exc:
                stream.local_error(errors.BadRequest(f"invalid host in rewrite: {exc}"))
                return False
            stream.host_header = value.strip()
        return True
