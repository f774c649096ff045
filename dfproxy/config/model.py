"""The internal configuration model: what a validated config means, independent of its YAML.

Loaders (the embedded default, Gloo Gateway/VirtualService YAML) produce a ProxyConfig; the
runtime is built from it. Everything here is plain data, compared and hashed as values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dfproxy.dns.cache import DnsCacheConfig
from dfproxy.dns.resolver import ResolverOptions
from dfproxy.router import Matcher, RetryPolicy
from dfproxy.upstream.tls import TlsSettings


@dataclass
class CircuitBreakers:
    """Gloo CircuitBreakerConfig / Envoy Thresholds defaults."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False


@dataclass
class DfpConfig:
    """Gloo ``httpGateway.options.dynamicForwardProxy``."""

    dns_cache: DnsCacheConfig = field(default_factory=DnsCacheConfig)
    resolver: ResolverOptions = field(default_factory=ResolverOptions)
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    save_upstream_address: bool = False
    connect_timeout: float = 5.0
    upstream_idle_timeout: float = 3600.0
    tls: TlsSettings | None = None  # sslConfig: TLS origination

    def digest(self) -> str:
        """A stable decimal hash, as Gloo names generated clusters and caches."""
        data = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return str(int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 1)

    @property
    def cluster_name(self) -> str:
        return f"solo_io_generated_dfp:{self.digest()}"


@dataclass
class RouteSpec:
    name: str
    matchers: list[Matcher]
    action: str = "dfp"  # "dfp" | "direct" | "redirect"
    host_rewrite: str | None = None
    host_rewrite_header: str | None = None
    direct_status: int = 200
    direct_body: str = ""
    redirect: dict[str, object] = field(default_factory=dict)
    connect_terminate: bool = False
    websocket: bool | None = None  # None: inherit the listener's setting
    timeout: float = 15.0
    prefix_rewrite: str | None = None
    retry: RetryPolicy | None = None
    forward_host_rewrite: str | None = None  # route options.hostRewrite: forwarded Host only
    request_headers_to_add: list[tuple[str, str, bool]] = field(default_factory=list)
    request_headers_to_remove: list[str] = field(default_factory=list)
    response_headers_to_add: list[tuple[str, str, bool]] = field(default_factory=list)
    response_headers_to_remove: list[str] = field(default_factory=list)
    # Compiled policies by name (dfproxy.policies): JWT, transformations, DLP, ...
    policies: dict[str, Any] = field(default_factory=dict)


@dataclass
class VirtualHostSpec:
    name: str
    domains: list[str]
    routes: list[RouteSpec]


@dataclass
class ListenerSpec:
    name: str
    host: str = "127.0.0.1"
    port: int = 8080
    dfp: DfpConfig | None = field(default_factory=DfpConfig)
    connect_enabled: bool = True  # HCM-level CONNECT upgrade
    websocket_enabled: bool = True  # Gloo adds a websocket upgrade by default
    use_proxy_protocol: bool = False
    stream_idle_timeout: float = 300.0
    idle_timeout: float = 3600.0
    request_headers_timeout: float = 30.0
    virtual_hosts: list[VirtualHostSpec] = field(default_factory=list)
    # Gateway spec.options.connectionLimit (config.schema.ratelimit.ConnectionLimit) or None.
    connection_limit: Any = None


@dataclass
class ProxyConfig:
    listeners: list[ListenerSpec]
    version: str = "embedded-default"
    source: str = "embedded default"


def default_virtual_host() -> VirtualHostSpec:
    """Gloo's forward-proxy recipe: CONNECT is terminated, everything else goes through DFP."""
    return VirtualHostSpec(
        name="default",
        domains=["*"],
        routes=[
            RouteSpec(name="connect", matchers=[Matcher(connect=True)], connect_terminate=True),
            RouteSpec(name="forward", matchers=[Matcher(prefix="/")]),
        ],
    )


def default_config(host: str = "127.0.0.1", port: int = 8080) -> ProxyConfig:
    """The embedded default: one listener, DFP with Gloo's defaults, CONNECT enabled."""
    return ProxyConfig(
        listeners=[
            ListenerSpec(
                name="gateway-proxy", host=host, port=port, virtual_hosts=[default_virtual_host()]
            )
        ]
    )
