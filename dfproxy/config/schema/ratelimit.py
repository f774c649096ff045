"""Rate-limit config shapes: Gloo's where Gloo has one, dfproxy extensions in the same style.

Gloo (solo-io/gloo ``options/local_ratelimit/local_ratelimit.proto``,
``enterprise/options/ratelimit/ratelimit.proto``; solo-apis ``rate-limiter/v1alpha1``):
``TokenBucket``, local ``Settings`` (``httpGateway.options.httpLocalRatelimit``),
``RateLimitVhostExtension`` / ``RateLimitRouteExtension`` (``options.ratelimit``),
``IngressRateLimit`` (``options.ratelimitBasic``), ``RateLimitConfigRefs``
(``options.rateLimitConfigs`` / ``rateLimitRegularConfigs``) and the ``RateLimitConfig``
resource with Envoy's descriptor/action model. ListenerOptions ``connectionLimit``.

dfproxy extensions (marked below): ``rateLimitServer`` on the listener (Redis), descriptor
actions for the destination host, the path and a JWT claim, ``localRatelimitDescriptors``
(Envoy local_ratelimit descriptors: a token bucket per distinct descriptor value), the rate
limit ``algorithm``, ``retryAfterHeader`` and ``maxActiveConnectionsPerClient``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dfproxy.config.schema_base import Duration, Model

UNIT_SECONDS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}


class TokenBucket(Model):
    """Gloo local_ratelimit TokenBucket (Envoy envoy.type.v3.TokenBucket)."""

    max_tokens: int = Field(ge=1, le=2**32 - 1)
    tokens_per_fill: int = Field(default=1, ge=1, le=2**32 - 1)
    # Gloo: "The fill_interval must be >= 50ms and defaults to 1 second."
    fill_interval: Duration = Field(default=1.0, ge=0.05)


class LocalRateLimitSettings(Model):
    """Gloo local_ratelimit Settings (``httpGateway.options.httpLocalRatelimit``)."""

    default_limit: TokenBucket | None = None
    local_rate_limit_per_downstream_connection: bool = False
    enable_x_ratelimit_headers: bool = False
    retry_after_header: bool = False  # dfproxy extension: Retry-After on a 429

    @model_validator(mode="after")
    def _check(self) -> LocalRateLimitSettings:
        if self.local_rate_limit_per_downstream_connection:
            raise ValueError(
                "localRateLimitPerDownstreamConnection: true is not supported (buckets are "
                "per dfproxy process, as Envoy's default)"
            )
        return self


# -- Envoy's rate limit actions (solo-apis ratelimit.api.solo.io.Action) ------------------------


class Empty(Model):
    pass


class RequestHeadersAction(Model):
    header_name: str = Field(min_length=1)
    descriptor_key: str = Field(min_length=1)
    skip_if_absent: bool = False


class GenericKeyAction(Model):
    descriptor_value: str = Field(min_length=1)
    descriptor_key: str = Field(default="generic_key", min_length=1)


class KeyAction(Model):
    """dfproxy extension: the destination host (``destinationHost``) or the path (``path``)."""

    descriptor_key: str | None = None


class JwtClaimAction(Model):
    """dfproxy extension: a claim of the payload the JWT filter verified (dotted for nested
    claims: ``org.id``)."""

    claim: str = Field(min_length=1)
    descriptor_key: str = Field(min_length=1)
    skip_if_absent: bool = False


class HeaderMatcher(Model):
    name: str = Field(min_length=1)
    exact_match: str | None = None
    regex_match: str | None = None
    present_match: bool | None = None
    prefix_match: str | None = None
    suffix_match: str | None = None
    invert_match: bool = False

    @model_validator(mode="after")
    def _one(self) -> HeaderMatcher:
        given = [
            v
            for v in (
                self.exact_match,
                self.regex_match,
                self.present_match,
                self.prefix_match,
                self.suffix_match,
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(
                "a header matcher sets at most one of exactMatch, regexMatch, "
                "presentMatch, prefixMatch, suffixMatch"
            )
        return self


class HeaderValueMatchAction(Model):
    descriptor_value: str = Field(min_length=1)
    expect_match: bool = True
    headers: list[HeaderMatcher] = Field(min_length=1)


ACTION_FIELDS = (
    "sourceCluster",
    "destinationCluster",
    "requestHeaders",
    "remoteAddress",
    "genericKey",
    "headerValueMatch",
    "destinationHost",
    "path",
    "jwtClaim",
)


class Action(Model):
    source_cluster: Empty | None = None
    destination_cluster: Empty | None = None
    request_headers: RequestHeadersAction | None = None
    remote_address: Empty | None = None
    generic_key: GenericKeyAction | None = None
    header_value_match: HeaderValueMatchAction | None = None
    metadata: dict[str, object] | None = None
    destination_host: KeyAction | None = None  # dfproxy extension
    path: KeyAction | None = None  # dfproxy extension
    jwt_claim: JwtClaimAction | None = None  # dfproxy extension

    @model_validator(mode="after")
    def _one(self) -> Action:
        if self.metadata is not None:
            raise ValueError("metadata actions are not supported (dfproxy has no dynamic metadata)")
        given = [n for n in self.model_fields_set if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"an action sets exactly one of {', '.join(ACTION_FIELDS)}")
        return self


class RateLimitActions(Model):
    actions: list[Action] = Field(default_factory=list)
    set_actions: list[Action] = Field(default_factory=list)
    limit: dict[str, object] | None = None

    @model_validator(mode="after")
    def _check(self) -> RateLimitActions:
        if self.set_actions:
            raise ValueError("setActions are not supported yet; use actions")
        if self.limit is not None:
            raise ValueError("limit (a dynamic metadata override) is not supported")
        if not self.actions:
            raise ValueError("a rate limit needs at least one action")
        return self


# -- the rate limit service's descriptors (lyft/ratelimit, solo-apis Descriptor) ----------------


class RateLimit(Model):
    unit: Literal["SECOND", "MINUTE", "HOUR", "DAY"]
    requests_per_unit: int = Field(ge=0, le=2**32 - 1)
    # dfproxy extension. FIXED_WINDOW: the ratelimit service's counter per unit window;
    # TOKEN_BUCKET: requestsPerUnit tokens, refilled continuously over one unit (no burst at
    # a window edge).
    algorithm: Literal["FIXED_WINDOW", "TOKEN_BUCKET"] = "FIXED_WINDOW"


class Descriptor(Model):
    key: str = Field(min_length=1)
    value: str = ""
    rate_limit: RateLimit | None = None
    descriptors: list[Descriptor] = Field(default_factory=list)
    weight: int = Field(default=0, ge=0)
    always_apply: bool = False

    @model_validator(mode="after")
    def _check(self) -> Descriptor:
        if self.weight or self.always_apply:
            raise ValueError("weight and alwaysApply are not supported yet")
        return self


class Raw(Model):
    descriptors: list[Descriptor] = Field(default_factory=list)
    rate_limits: list[RateLimitActions] = Field(default_factory=list)
    set_descriptors: list[dict[str, object]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Raw:
        if self.set_descriptors:
            raise ValueError("setDescriptors are not supported yet; use descriptors")
        return self


class RateLimitConfigSpec(Model):
    raw: Raw


class ResourceMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1)
    namespace: str = "gloo-system"


class RateLimitConfig(Model):
    """The ``ratelimit.solo.io/v1alpha1`` RateLimitConfig resource."""

    api_version: Literal["ratelimit.solo.io/v1alpha1"]
    kind: Literal["RateLimitConfig"]
    metadata: ResourceMetadata
    spec: RateLimitConfigSpec


class RateLimitConfigRef(Model):
    name: str = Field(min_length=1)
    namespace: str | None = None


class RateLimitConfigRefs(Model):
    refs: list[RateLimitConfigRef] = Field(min_length=1)


class IngressRateLimit(Model):
    """Gloo ``ratelimitBasic``: one limit for authenticated users (keyed by the user: the proxy
    user, else the JWT ``sub``), one for anonymous clients (keyed by the client address)."""

    authorized_limits: RateLimit | None = None
    anonymous_limits: RateLimit | None = None


class LocalDescriptorLimit(Model):
    """dfproxy extension (Envoy local_ratelimit ``descriptors``): the actions build a
    descriptor from the request; each distinct descriptor gets its own token bucket."""

    name: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    actions: list[Action] = Field(min_length=1)
    token_bucket: TokenBucket
    max_buckets: int = Field(default=10000, ge=1)  # least recently used buckets are dropped


class RateLimitExtension(Model):
    """Gloo RateLimitVhostExtension / RateLimitRouteExtension (``options.ratelimit``)."""

    rate_limits: list[RateLimitActions] = Field(default_factory=list)
    local_ratelimit: TokenBucket | None = None
    include_vh_rate_limits: bool = False  # route only (Gloo)
    local_ratelimit_descriptors: list[LocalDescriptorLimit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> RateLimitExtension:
        if self.rate_limits:
            raise ValueError(
                "inline rateLimits need a rate limit server's descriptors; put the actions and "
                "descriptors in a RateLimitConfig and reference it with rateLimitConfigs"
            )
        return self


# -- the listener's rate limit server (dfproxy extension) ---------------------------------------


class RedisSettings(Model):
    address: str = Field(default="127.0.0.1:6379", min_length=1)
    db: int = Field(default=0, ge=0)
    username: str | None = None
    password_file: str | None = None  # the password is read from this file at start
    key_prefix: str = Field(default="dfproxy", min_length=1)
    max_connections: int = Field(default=32, ge=1)


class RateLimitServer(Model):
    """dfproxy extension, ``httpGateway.options.rateLimitServer``: the Redis that global
    limits (rateLimitConfigs, ratelimitBasic) count in, shared by every dfproxy process.
    ``requestTimeout`` and ``denyOnFail`` are Gloo's rate limit Settings fields."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    request_timeout: Duration = Field(default=0.05, gt=0, le=5.0)
    deny_on_fail: bool = False
    # After a failure Redis is not asked again for this long (the failure mode applies).
    retry_interval: Duration = Field(default=0.5, ge=0)
    enable_x_ratelimit_headers: bool = False
    retry_after_header: bool = False


class ConnectionLimit(Model):
    """Gloo ListenerOptions ``connectionLimit`` (Envoy connection_limit), on the Gateway's
    ``spec.options``; ``maxActiveConnectionsPerClient`` is a dfproxy extension."""

    max_active_connections: int | None = Field(default=None, ge=1)
    delay_before_close: Duration = Field(default=0.0, ge=0, le=60)
    max_active_connections_per_client: int | None = Field(default=None, ge=1)


class ListenerOptions(Model):
    """Gloo ListenerOptions (the Gateway's ``spec.options``)."""

    connection_limit: ConnectionLimit | None = None
