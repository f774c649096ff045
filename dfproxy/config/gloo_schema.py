"""The Gloo Gateway v1 resources dfproxy reads (``gateway.solo.io/v1`` Gateway, VirtualService).

Field names and shapes follow Gloo's protos (reference §8); every model forbids unknown fields
so a typo is an error with a "did you mean", never silently ignored. Fields Gloo has that
dfproxy does not implement yet are listed in NOT_SUPPORTED and get a message saying so.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dfproxy.config.schema import jwt as jwt_schema
from dfproxy.config.schema.extauth import ExtAuthExtension
from dfproxy.config.schema.extauth import Settings as ExtAuthSettings
from dfproxy.config.schema.proxy_auth import ProxyAuthOverride, ProxyAuthSettings
from dfproxy.config.schema_base import Duration, Model, parse_duration

__all__ = ["Duration", "Model", "parse_duration"]

# -- DynamicForwardProxy -----------------------------------------------------------------------


class SocketAddress(Model):
    address: str
    port_value: int = Field(default=0, ge=0, le=65535)  # 0: the field's default (53 / 80)
    protocol: Literal["TCP", "UDP"] | None = None
    named_port: str | None = None


class Address(Model):
    socket_address: SocketAddress


class DnsResolverOptions(Model):
    use_tcp_for_dns_lookups: bool = False
    no_default_search_domain: bool = False


class CaresDns(Model):
    resolvers: list[Address] = Field(min_length=1)
    dns_resolver_options: DnsResolverOptions | None = None


class RefreshRate(Model):
    base_interval: Duration = Field(gt=0.001)
    max_interval: Duration | None = Field(default=None, gt=0.001)

    @model_validator(mode="after")
    def _max_ge_base(self) -> RefreshRate:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise ValueError(
                "dns_failure_refresh_rate must have max_interval greater than or equal to "
                "the base_interval"
            )
        return self


class DnsCacheCircuitBreakers(Model):
    max_pending_requests: int = Field(default=1024, ge=0)


class KeyValueStore(Model):
    """dfproxy extension: Envoy's file-based key_value_config, flattened."""

    filename: str = Field(min_length=1)
    flush_interval: Duration = Field(default=60.0, gt=0)
    max_entries: int = Field(default=1000, ge=0)


class DnsCacheConfig(Model):
    dns_lookup_family: Literal["V4_PREFERRED", "V4_ONLY", "V6_ONLY", "AUTO", "ALL"] = "V4_PREFERRED"
    dns_refresh_rate: Duration = Field(default=60.0, gt=0.0009)
    # Envoy's dns_min_refresh_rate (Gloo does not expose it; dfproxy does).
    dns_min_refresh_rate: Duration = Field(default=5.0, gt=0)
    host_ttl: Duration = Field(default=300.0, gt=0)
    max_hosts: int = Field(default=1024, gt=0)
    dns_failure_refresh_rate: RefreshRate | None = None
    dns_cache_circuit_breaker: DnsCacheCircuitBreakers | None = None
    cares_dns: CaresDns | None = None
    apple_dns: dict[str, Any] | None = None
    preresolve_hostnames: list[SocketAddress] = Field(default_factory=list)
    dns_query_timeout: Duration = Field(default=5.0, gt=0)
    # Envoy's disable_dns_refresh_on_failure (not in Gloo; dfproxy exposes it).
    disable_dns_refresh_on_failure: bool = False
    key_value_store: KeyValueStore | None = None

    @model_validator(mode="after")
    def _check(self) -> DnsCacheConfig:
        if self.apple_dns is not None:
            raise ValueError("appleDns: the Apple resolver exists only on macOS; use caresDns")
        if len(self.preresolve_hostnames) > self.max_hosts:
            raise ValueError(
                f"DNS Cache configured with preresolve_hostnames={len(self.preresolve_hostnames)}"
                f" larger than max_hosts={self.max_hosts}"
            )
        return self


class CircuitBreakerConfig(Model):
    max_connections: int = Field(default=1024, ge=0)
    max_pending_requests: int = Field(default=1024, ge=0)
    max_requests: int = Field(default=1024, ge=0)
    max_retries: int = Field(default=3, ge=0)
    track_remaining: bool = False


class SslFiles(Model):
    tls_cert: str | None = None
    tls_key: str | None = None
    root_ca: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> SslFiles:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tlsCert and tlsKey go together (a client certificate and its key)")
        return self


class SslParameters(Model):
    minimum_protocol_version: (
        Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"] | None
    ) = None
    maximum_protocol_version: (
        Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"] | None
    ) = None


class UpstreamSslConfig(Model):
    """Gloo UpstreamSslConfig; certificates as file paths (sslFiles)."""

    ssl_files: SslFiles | None = None
    sni: str | None = None
    verify_subject_alt_name: list[str] = Field(default_factory=list)
    parameters: SslParameters | None = None
    alpn_protocols: list[str] = Field(default_factory=list)
    allow_renegotiation: bool = False
    secret_ref: dict[str, Any] | None = None
    sds: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> UpstreamSslConfig:
        if self.secret_ref is not None or self.sds is not None:
            raise ValueError(
                "secretRef and sds need Kubernetes/SDS; give the files with sslFiles "
                "(rootCa, tlsCert, tlsKey) instead"
            )
        if self.allow_renegotiation:
            raise ValueError("allowRenegotiation: true is not supported (renegotiation is off)")
        files = self.ssl_files
        for label, path in (
            ("rootCa", files.root_ca if files else None),
            ("tlsCert", files.tls_cert if files else None),
            ("tlsKey", files.tls_key if files else None),
        ):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"sslFiles.{label}: no such file {path!r}")
        return self


class DynamicForwardProxy(Model):
    dns_cache_config: DnsCacheConfig = Field(default_factory=DnsCacheConfig)
    save_upstream_address: bool = False
    circuit_breakers: CircuitBreakerConfig | None = None
    ssl_config: UpstreamSslConfig | None = None
    # dfproxy extensions (Gloo sets these on the generated cluster: connect_timeout 5 s).
    connect_timeout: Duration = Field(default=5.0, gt=0)
    upstream_idle_timeout: Duration = Field(default=3600.0, gt=0)


# -- Gateway -----------------------------------------------------------------------------------


class Enabled(Model):
    enabled: bool | None = None


class UpgradeConfig(Model):
    websocket: Enabled | None = None
    connect: Enabled | None = None
    connect_terminate: Enabled | None = None

    @model_validator(mode="after")
    def _one(self) -> UpgradeConfig:
        if sum(x is not None for x in (self.websocket, self.connect, self.connect_terminate)) != 1:
            raise ValueError("an upgrade sets exactly one of websocket, connect, connectTerminate")
        return self


class HttpConnectionManagerSettings(Model):
    upgrades: list[UpgradeConfig] = Field(default_factory=list)
    # Envoy's defaults: stream idle 5 min, connection idle 1 h. requestHeadersTimeout is off
    # in Envoy; dfproxy defaults it to 30 s against slow-head clients (408 and close).
    stream_idle_timeout: Duration = Field(default=300.0, ge=0)
    idle_timeout: Duration = Field(default=3600.0, ge=0)
    request_headers_timeout: Duration = Field(default=30.0, ge=0)


class HttpListenerOptions(Model):
    dynamic_forward_proxy: DynamicForwardProxy | None = None
    http_connection_manager_settings: HttpConnectionManagerSettings | None = None
    extauth: ExtAuthSettings | None = None
    proxy_auth: ProxyAuthSettings | None = None  # dfproxy extension


class ResourceRef(Model):
    name: str
    namespace: str | None = None


class HttpGateway(Model):
    virtual_services: list[ResourceRef] | None = None
    virtual_service_selector: dict[str, str] | None = None
    virtual_service_namespaces: list[str] | None = None
    options: HttpListenerOptions | None = None


class GatewaySpec(Model):
    bind_address: str = "::"
    bind_port: int = Field(default=8080, ge=0, le=65535)
    http_gateway: HttpGateway | None = None
    ssl: bool = False
    use_proxy_proto: bool = False
    proxy_names: list[str] | None = None

    @field_validator("ssl")
    @classmethod
    def _no_tls_listener(cls, value: bool) -> bool:
        if value:
            raise ValueError("ssl: true (a TLS listener) is not supported yet")
        return value


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1)
    namespace: str = "gloo-system"
    labels: dict[str, str] = Field(default_factory=dict)


class Gateway(Model):
    api_version: Literal["gateway.solo.io/v1"]
    kind: Literal["Gateway"]
    metadata: Metadata
    spec: GatewaySpec = Field(default_factory=GatewaySpec)


# -- VirtualService ----------------------------------------------------------------------------


class HeaderMatcher(Model):
    name: str = Field(min_length=1)
    value: str = ""
    regex: bool = False
    invert_match: bool = False


class QueryParameterMatcher(Model):
    name: str = Field(min_length=1)
    value: str = ""
    regex: bool = False


class Matcher(Model):
    prefix: str | None = None
    exact: str | None = None
    regex: str | None = None
    connect_matcher: dict[str, Any] | None = None
    case_sensitive: bool | None = None
    headers: list[HeaderMatcher] = Field(default_factory=list)
    query_parameters: list[QueryParameterMatcher] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_path(self) -> Matcher:
        given = [
            n
            for n, v in (
                ("prefix", self.prefix),
                ("exact", self.exact),
                ("regex", self.regex),
                ("connectMatcher", self.connect_matcher),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"a matcher sets one path specifier, got {', '.join(given)}")
        return self


class DfpRouteConfig(Model):
    host_rewrite: str | None = None
    auto_host_rewrite_header: str | None = None

    @model_validator(mode="after")
    def _oneof(self) -> DfpRouteConfig:
        if self.host_rewrite is not None and self.auto_host_rewrite_header is not None:
            raise ValueError("set hostRewrite or autoHostRewriteHeader, not both")
        return self


class RouteAction(Model):
    dynamic_forward_proxy: DfpRouteConfig | None = None

    @model_validator(mode="after")
    def _dfp_only(self) -> RouteAction:
        if self.dynamic_forward_proxy is None:
            raise ValueError("routeAction needs a destination: dynamicForwardProxy")
        return self


class DirectResponseAction(Model):
    status: int = Field(ge=100, le=599)
    body: str = ""


class RedirectAction(Model):
    host_redirect: str | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    https_redirect: bool = False
    strip_query: bool = False
    port_redirect: int | None = Field(default=None, ge=1, le=65535)
    response_code: Literal[
        "MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"
    ] = "MOVED_PERMANENTLY"


class HeaderValue(Model):
    key: str = Field(min_length=1)
    value: str


class HeaderValueOption(Model):
    header: HeaderValue
    append: bool | None = None


class HeaderManipulation(Model):
    request_headers_to_add: list[HeaderValueOption] = Field(default_factory=list)
    request_headers_to_remove: list[str] = Field(default_factory=list)
    response_headers_to_add: list[HeaderValueOption] = Field(default_factory=list)
    response_headers_to_remove: list[str] = Field(default_factory=list)


class RetryBackOff(Model):
    base_interval: Duration = Field(gt=0)
    max_interval: Duration | None = Field(default=None, gt=0)


class RetryPolicy(Model):
    retry_on: str = "5xx"
    num_retries: int = Field(default=1, ge=0)
    per_try_timeout: Duration | None = Field(default=None, gt=0)
    retry_back_off: RetryBackOff | None = None

    @field_validator("retry_on")
    @classmethod
    def _known(cls, value: str) -> str:
        from dfproxy.router import RETRY_ON

        unknown = [v for v in (x.strip() for x in value.split(",")) if v and v not in RETRY_ON]
        if unknown:
            raise ValueError(
                f"unknown retryOn value {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(RETRY_ON))}"
            )
        return value


class RouteOptions(Model):
    upgrades: list[UpgradeConfig] = Field(default_factory=list)
    timeout: Duration | None = Field(default=None, gt=0)
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None
    header_manipulation: HeaderManipulation | None = None
    retries: RetryPolicy | None = None
    extauth: ExtAuthExtension | None = None
    proxy_auth: ProxyAuthOverride | None = None
    jwt: jwt_schema.RouteExtension | None = None
    jwt_staged: jwt_schema.JwtStagedRouteExtension | None = None
    jwt_providers_staged: jwt_schema.JwtStagedRouteProvidersExtension | None = None

    @field_validator("upgrades")
    @classmethod
    def _route_upgrades(cls, value: list[UpgradeConfig]) -> list[UpgradeConfig]:
        for u in value:
            if u.connect is not None:
                raise ValueError(
                    "connect (proxying CONNECT as HTTP) is not supported on a route; "
                    "use connectTerminate"
                )
        return value


class Route(Model):
    name: str | None = None
    matchers: list[Matcher] = Field(default_factory=list)
    route_action: RouteAction | None = None
    direct_response_action: DirectResponseAction | None = None
    redirect_action: RedirectAction | None = None
    options: RouteOptions | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        actions = [
            a
            for a in (self.route_action, self.direct_response_action, self.redirect_action)
            if a is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "a route has exactly one action: routeAction, directResponseAction or "
                "redirectAction"
            )
        return self


class VirtualHostOptions(Model):
    header_manipulation: HeaderManipulation | None = None
    extauth: ExtAuthExtension | None = None
    proxy_auth: ProxyAuthOverride | None = None
    jwt: jwt_schema.VhostExtension | None = None
    jwt_staged: jwt_schema.JwtStagedVhostExtension | None = None


class VirtualHost(Model):
    domains: list[str] = Field(default_factory=lambda: ["*"])
    routes: list[Route] = Field(default_factory=list)
    options: VirtualHostOptions | None = None


class VirtualServiceSpec(Model):
    virtual_host: VirtualHost
    display_name: str | None = None


class VirtualService(Model):
    api_version: Literal["gateway.solo.io/v1"]
    kind: Literal["VirtualService"]
    metadata: Metadata
    spec: VirtualServiceSpec


# Gloo fields dfproxy knows but has not built yet: a clear error instead of "unknown field".
NOT_SUPPORTED: dict[str, str] = {
    "dlp": "data loss prevention (options.dlp) is not supported yet",
    "stagedTransformations": "transformations (stagedTransformations) are not supported yet",
    "transformations": "transformations are not supported yet",
    "ratelimitBasic": "rate limiting (ratelimitBasic) is not supported yet",
    "rateLimitConfigs": "rate limiting (rateLimitConfigs) is not supported yet",
    "rbac": "RBAC (options.rbac) is not supported yet",
    "delegateAction": "delegateAction (route delegation) is not supported yet",
}
