"""The rate limit policy: local token buckets and Redis-backed global limits, as filters.

Configuration (Gloo shapes, dfproxy extensions noted in ``config/schema/ratelimit.py``):

* ``httpGateway.options.httpLocalRatelimit.defaultLimit``: one bucket for the listener, used by
  every route whose virtual host or route sets no ``options.ratelimit.localRatelimit``
  (Gloo: "This default limit can be overridden in the vHost or route"). A vhost's bucket is
  shared by its routes, a route's is its own. ``localRatelimitDescriptors`` add a bucket per
  distinct descriptor (Envoy local_ratelimit ``descriptors``); the default bucket is consumed
  too (Envoy ``always_consume_default_token_bucket``, default true).
* ``options.rateLimitConfigs`` / ``rateLimitRegularConfigs`` (RateLimitConfig references) and
  ``options.ratelimitBasic``: counted in the listener's ``rateLimitServer`` Redis. The
  virtual host's and the route's policies all apply ("each resource represents a rate limit
  policy that will be independently enforced").

Replies follow Envoy: 429 with ``x-envoy-ratelimited: true`` (body ``local_rate_limited`` for
a local bucket, Envoy's text), the draft RFC headers when enabled (DRAFT_VERSION_03:
``x-ratelimit-limit: 10, 10;w=60``, ``-remaining``, ``-reset`` in seconds), ``Retry-After``
when asked for. A Redis failure lets the request through unless ``denyOnFail`` (then 500,
response flag RLSE, as Envoy's failure_mode_deny).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from dfproxy import filters as F
from dfproxy.config.schema import ratelimit as rs
from dfproxy.ratelimit import descriptors as D
from dfproxy.ratelimit.redis_limiter import (
    FIXED_WINDOW,
    TOKEN_BUCKET,
    RedisLimiter,
    parse_address,
)
from dfproxy.ratelimit.token_bucket import BucketMap, TokenBucket

if TYPE_CHECKING:
    from dfproxy.policies import BuildContext, Levels, Report
    from dfproxy.stats import Counter
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.ratelimit")

RATE_LIMITED = "RL"  # Envoy response flag RateLimited
RATELIMIT_SERVICE_ERROR = "RLSE"  # Envoy response flag RateLimitServiceError
LOCAL_BODY = b"local_rate_limited"  # Envoy's local_ratelimit body
GLOBAL_BODY = b"rate limited\n"
ERROR_BODY = b"rate limit service unavailable\n"
RATELIMITED_HEADER = (b"x-envoy-ratelimited", b"true")
LOCAL_HEADERS_KEY = "ratelimit.local_headers"
GLOBAL_HEADERS_KEY = "ratelimit.global_headers"
_VS_NAME = re.compile(r"\(VirtualService (.+)\)$")


# -- compiled (config load) ---------------------------------------------------------------------


@dataclass(frozen=True)
class BucketSpec:
    scope: str  # which routes share it: "listener", "vhost:<where>", "route:<where>:<i>"
    label: str  # the stat prefix part: "", "<vs>", "<vs>.<route>"
    bucket: rs.TokenBucket


@dataclass(frozen=True)
class LocalDescriptor:
    name: str
    builder: D.DescriptorBuilder
    bucket: rs.TokenBucket
    max_buckets: int


@dataclass(frozen=True)
class CompiledLocal:
    default: BucketSpec | None
    descriptors: tuple[LocalDescriptor, ...]
    descriptor_scope: str
    descriptor_label: str
    headers: bool
    retry_after: bool


@dataclass(frozen=True)
class GlobalRule:
    config: str  # "<namespace>.<name>" of the RateLimitConfig, or "basic"
    builder: D.DescriptorBuilder
    tree: dict[str, D.Node]


@dataclass(frozen=True)
class CompiledGlobal:
    server: rs.RateLimitServer
    rules: tuple[GlobalRule, ...]
    basic: rs.IngressRateLimit | None
    basic_scope: str


@dataclass(frozen=True)
class Compiled:
    local: CompiledLocal | None
    global_: CompiledGlobal | None


def _vs_label(levels: Levels) -> str:
    m = _VS_NAME.search(levels.vs_where)
    return m.group(1) if m else "default"


def _compile_config(ref: rs.RateLimitConfigRef, doc: Any, report: Report) -> list[GlobalRule]:
    cfg: rs.RateLimitConfig = doc.resource
    name = f"{cfg.metadata.namespace}.{cfg.metadata.name}"
    tree = D.compile_tree(cfg.spec.raw.descriptors)
    rules = []
    for i, rl in enumerate(cfg.spec.raw.rate_limits):
        try:
            builder = D.compile_actions(rl.actions)
        except re.error as exc:
            report.add(doc.where, f"spec.raw.rateLimits[{i}].actions", f"invalid regex: {exc}")
            continue
        rules.append(GlobalRule(name, builder, tree))
    return rules


class RateLimitPolicy:
    """``POLICY``: see the module docstring."""

    name = "ratelimit"

    def compile(self, levels: Levels, report: Report) -> Compiled | None:
        listener = levels.listener
        settings: rs.LocalRateLimitSettings | None = getattr(listener, "http_local_ratelimit", None)
        server: rs.RateLimitServer | None = getattr(listener, "rate_limit_server", None)
        vh_rl: rs.RateLimitExtension | None = getattr(levels.vhost, "ratelimit", None)
        rt_rl: rs.RateLimitExtension | None = getattr(levels.route, "ratelimit", None)
        vs = _vs_label(levels)
        vh_scope = f"vhost:{levels.vs_where}"
        rt_scope = f"route:{levels.vs_where}:{levels.route_index}"
        # Local: the most specific bucket wins (route, then vhost, then the listener default).
        default = None
        if rt_rl is not None and rt_rl.local_ratelimit is not None:
            default = BucketSpec(rt_scope, f"{vs}.{levels.route_name}", rt_rl.local_ratelimit)
        elif vh_rl is not None and vh_rl.local_ratelimit is not None:
            default = BucketSpec(vh_scope, vs, vh_rl.local_ratelimit)
        elif settings is not None and settings.default_limit is not None:
            default = BucketSpec("listener", "", settings.default_limit)
        descs: list[LocalDescriptor] = []
        d_scope, d_label, d_where, d_path = "", "", "", ""
        if rt_rl is not None and rt_rl.local_ratelimit_descriptors:
            src = rt_rl.local_ratelimit_descriptors
            d_scope, d_label = rt_scope, f"{vs}.{levels.route_name}"
            d_where, d_path = levels.vs_where, levels.route_path
        elif vh_rl is not None and vh_rl.local_ratelimit_descriptors:
            src = vh_rl.local_ratelimit_descriptors
            d_scope, d_label = vh_scope, vs
            d_where, d_path = levels.vs_where, levels.vhost_path
        else:
            src = []
        for i, d in enumerate(src):
            try:
                builder = D.compile_actions(d.actions)
            except re.error as exc:
                report.add(
                    d_where,
                    f"{d_path}.ratelimit.localRatelimitDescriptors[{i}].actions",
                    f"invalid regex: {exc}",
                )
                continue
            descs.append(LocalDescriptor(d.name or f"d{i}", builder, d.token_bucket, d.max_buckets))
        local = None
        if default is not None or descs:
            local = CompiledLocal(
                default,
                tuple(descs),
                d_scope,
                d_label,
                bool(settings and settings.enable_x_ratelimit_headers),
                bool(settings and settings.retry_after_header),
            )
        return self._compile_global(levels, report, server, local)

    def _compile_global(
        self,
        levels: Levels,
        report: Report,
        server: rs.RateLimitServer | None,
        local: CompiledLocal | None,
    ) -> Compiled | None:
        rules: list[GlobalRule] = []
        basic = None
        basic_scope = ""
        for opts, where, path, scope in (
            (levels.vhost, levels.vs_where, levels.vhost_path, f"vhost:{levels.vs_where}"),
            (
                levels.route,
                levels.vs_where,
                levels.route_path,
                f"route:{levels.vs_where}:{levels.route_index}",
            ),
        ):
            if opts is None:
                continue
            for field_name, alias in (
                ("rate_limit_configs", "rateLimitConfigs"),
                ("rate_limit_regular_configs", "rateLimitRegularConfigs"),
            ):
                refs: rs.RateLimitConfigRefs | None = getattr(opts, field_name, None)
                if refs is None:
                    continue
                if server is None:
                    report.add(where, f"{path}.{alias}", _NEEDS_SERVER)
                    continue
                for j, ref in enumerate(refs.refs):
                    ns = ref.namespace or "gloo-system"
                    doc = levels.resources.get(f"RateLimitConfig/{ns}/{ref.name}")
                    if doc is None:
                        report.add(
                            where,
                            f"{path}.{alias}.refs[{j}]",
                            f"no RateLimitConfig named {ref.name!r} in namespace {ns!r} was given",
                        )
                        continue
                    rules.extend(_compile_config(ref, doc, report))
            b: rs.IngressRateLimit | None = getattr(opts, "ratelimit_basic", None)
            if b is not None:
                if server is None:
                    report.add(where, f"{path}.ratelimitBasic", _NEEDS_SERVER)
                    continue
                basic, basic_scope = b, scope  # the route's replaces the virtual host's
        if server is not None:
            try:
                parse_address(server.redis.address)
            except ValueError as exc:
                report.add(
                    levels.gateway_where, f"{levels.listener_path}.rateLimitServer", str(exc)
                )
                return None
        glob = None
        if (rules or basic is not None) and server is not None:
            glob = CompiledGlobal(server, tuple(rules), basic, basic_scope)
        if local is None and glob is None:
            return None
        return Compiled(local, glob)

    def build(self, compiled: Compiled, ctx: BuildContext) -> Sequence[F.HttpFilter]:
        out: list[F.HttpFilter] = []
        if compiled.local is not None:
            out.append(_build_local(compiled.local, ctx))
        if compiled.global_ is not None:
            out.append(_build_global(compiled.global_, ctx))
        return out


_NEEDS_SERVER = (
    "global rate limits need httpGateway.options.rateLimitServer (the Redis they are counted in)"
)


# -- local --------------------------------------------------------------------------------------


def _shared_bucket(ctx: BuildContext, scope: str, spec: rs.TokenBucket, make: Any) -> Any:
    """One bucket object per listener and scope, kept across reloads while unchanged."""
    registry: dict[tuple[str, str], tuple[object, Any]] = ctx.runtime.shared.setdefault(
        "ratelimit.local", {}
    )
    key = (ctx.listener.name, scope)
    found = registry.get(key)
    if found is None or found[0] != spec:
        found = registry[key] = (spec, make())
    return found[1]


def _local_stats(ctx: BuildContext, label: str) -> str:
    base = f"local_rate_limit.{ctx.listener.name}"
    return f"{base}.{label}.http_local_rate_limit." if label else f"{base}.http_local_rate_limit."


def _build_local(c: CompiledLocal, ctx: BuildContext) -> F.HttpFilter:
    stats = ctx.runtime.stats
    default = None
    prefix = _local_stats(ctx, c.default.label if c.default else c.descriptor_label)
    if c.default is not None:
        tb = c.default.bucket
        default = _shared_bucket(
            ctx,
            c.default.scope,
            tb,
            lambda: TokenBucket(tb.max_tokens, tb.tokens_per_fill, tb.fill_interval),
        )
    descs = []
    for d in c.descriptors:
        tb = d.bucket
        buckets = _shared_bucket(
            ctx,
            f"{c.descriptor_scope}:{d.name}",
            (tb, d.max_buckets),  # type: ignore[arg-type]
            lambda tb=tb, d=d: BucketMap(
                tb.max_tokens, tb.tokens_per_fill, tb.fill_interval, d.max_buckets
            ),
        )
        p = _local_stats(ctx, c.descriptor_label) + f"descriptor.{d.name}."
        descs.append(
            (d.builder, buckets, stats.counter(p + "ok"), stats.counter(p + "rate_limited"))
        )
    cls = LocalRateLimitHeadersFilter if c.headers else LocalRateLimitFilter
    return cls(default, tuple(descs), c.headers, c.retry_after, ctx, prefix)


def _draft_headers(
    limit: int, remaining: int, reset: float, window: int = 0
) -> list[tuple[bytes, bytes]]:
    reset_s = max(0, math.ceil(reset))
    value = b"%d, %d;w=%d" % (limit, limit, window) if window else b"%d" % limit
    return [
        (b"x-ratelimit-limit", value),
        (b"x-ratelimit-remaining", b"%d" % remaining),
        (b"x-ratelimit-reset", b"%d" % reset_s),
    ]


class LocalRateLimitFilter(F.HttpFilter):
    """Envoy's local_ratelimit: a token per request from every bucket that applies."""

    name = "local_ratelimit"

    def __init__(
        self,
        default: TokenBucket | None,
        descriptors: tuple[tuple[D.DescriptorBuilder, BucketMap, Counter, Counter], ...],
        headers: bool,
        retry_after: bool,
        ctx: BuildContext,
        prefix: str,
    ) -> None:
        self.default = default
        self.descriptors = descriptors
        self.headers = headers
        self.retry_after = retry_after
        stats = ctx.runtime.stats
        self.st_enabled = stats.counter(prefix + "enabled")
        self.st_enforced = stats.counter(prefix + "enforced")
        self.st_limited = stats.counter(prefix + "rate_limited")
        self.st_ok = stats.counter(prefix + "ok")

    def on_request_headers(self, stream: Stream) -> int:
        self.st_enabled.value += 1
        limited: TokenBucket | None = None
        tightest = self.default
        for builder, buckets, st_ok, st_limited in self.descriptors:
            d = builder.build(stream)
            if d is None:
                continue
            bucket = buckets.get(d)
            if not bucket.consume():
                st_limited.value += 1
                limited = bucket
                break
            st_ok.value += 1
            if tightest is None or bucket.tokens < tightest.tokens:
                tightest = bucket
        if limited is None and self.default is not None and not self.default.consume():
            limited = self.default
        if limited is not None:
            self.st_enforced.value += 1
            self.st_limited.value += 1
            extra = [RATELIMITED_HEADER]
            if self.headers:
                extra += _draft_headers(limited.max_tokens, 0, limited.reset_after())
            if self.retry_after:
                extra.append((b"retry-after", b"%d" % max(1, math.ceil(limited.reset_after()))))
            stream.details = "local_rate_limited"
            log.debug("%s %s -> 429 local_rate_limited", stream.conn.peer, stream.target)
            stream.send_local_reply(429, LOCAL_BODY, flag=RATE_LIMITED, extra_headers=extra)
            return F.STOP
        self.st_ok.value += 1
        if self.headers and tightest is not None:
            stream.state_dict()[LOCAL_HEADERS_KEY] = _draft_headers(
                tightest.max_tokens, tightest.tokens, tightest.reset_after()
            )
        return F.CONTINUE


class LocalRateLimitHeadersFilter(LocalRateLimitFilter):
    """With ``enableXRatelimitHeaders``: the draft headers on forwarded responses too."""

    def on_response_headers(self, stream: Stream) -> int:
        _add_response_headers(stream, LOCAL_HEADERS_KEY)
        return F.CONTINUE


def _add_response_headers(stream: Stream, key: str) -> None:
    state = stream.filter_state
    extra = state.get(key) if state else None
    if extra and stream.resp_headers is not None:
        stream.resp_headers = list(stream.resp_headers) + extra  # type: ignore[operator]


# -- global (Redis) -----------------------------------------------------------------------------


def _limiter(ctx: BuildContext, server: rs.RateLimitServer) -> RedisLimiter:
    key = "ratelimit.redis:" + server.model_dump_json()
    limiter = ctx.runtime.shared.get(key)
    if limiter is None:
        limiter = ctx.runtime.shared[key] = RedisLimiter(server)
    assert isinstance(limiter, RedisLimiter)
    return limiter


def _basic_limit(name: str, r: rs.RateLimit) -> D.Limit:
    return D.Limit(
        name, r.requests_per_unit, rs.UNIT_SECONDS[r.unit], r.algorithm == "TOKEN_BUCKET"
    )


def _build_global(c: CompiledGlobal, ctx: BuildContext) -> F.HttpFilter:
    cls = (
        GlobalRateLimitHeadersFilter
        if c.server.enable_x_ratelimit_headers
        else GlobalRateLimitFilter
    )
    return cls(c, _limiter(ctx, c.server), ctx)


class GlobalRateLimitFilter(F.HttpFilter):
    """Envoy's ratelimit filter with the ratelimit service's counting done in Redis."""

    name = "ratelimit"

    def __init__(self, c: CompiledGlobal, limiter: RedisLimiter, ctx: BuildContext) -> None:
        self.limiter = limiter
        self.deny_on_fail = c.server.deny_on_fail
        self.headers = c.server.enable_x_ratelimit_headers
        self.retry_after = c.server.retry_after_header
        prefix = c.server.redis.key_prefix
        self.rules = tuple((f"{prefix}:{r.config}:", r.builder, r.tree) for r in c.rules)
        self.basic = c.basic
        self.basic_prefix = f"{prefix}:basic:{ctx.listener.name}:{c.basic_scope}:"
        self.basic_auth = (
            _basic_limit("authorized", c.basic.authorized_limits)
            if c.basic and c.basic.authorized_limits
            else None
        )
        self.basic_anon = (
            _basic_limit("anonymous", c.basic.anonymous_limits)
            if c.basic and c.basic.anonymous_limits
            else None
        )
        self.stats = stats = ctx.runtime.stats
        p = f"ratelimit.{ctx.listener.name}."
        self.stat_prefix = p
        self.st_ok = stats.counter(p + "ok")
        self.st_over = stats.counter(p + "over_limit")
        self.st_error = stats.counter(p + "error")
        self.st_allowed = stats.counter(p + "failure_mode_allowed")
        self._rule_stats: dict[tuple[str, str], tuple[Counter, Counter]] = {}

    def _rule_counters(self, config: str, limit: D.Limit) -> tuple[Counter, Counter]:
        key = (config, limit.name)
        found = self._rule_stats.get(key)
        if found is None:
            p = f"{self.stat_prefix}{config}.{limit.name}."
            found = self._rule_stats[key] = (
                self.stats.counter(p + "total_hits"),
                self.stats.counter(p + "over_limit"),
            )
        return found

    def collect(
        self, stream: Stream
    ) -> tuple[list[str], list[int], list[tuple[D.Limit, tuple[Counter, Counter]]]]:
        """The counters this request hits: Redis keys, script arguments, limits."""
        keys: list[str] = []
        args: list[int] = []
        limits: list[tuple[D.Limit, tuple[Counter, Counter]]] = []
        for prefix, builder, tree in self.rules:
            d = builder.build(stream)
            if d is None:
                continue
            limit = D.find_limit(tree, d)
            if limit is None:
                continue
            keys.append(prefix + D.cache_key(d))
            args += (
                TOKEN_BUCKET if limit.token_bucket else FIXED_WINDOW,
                limit.requests,
                limit.unit_seconds,
            )
            limits.append((limit, self._rule_counters(prefix.split(":")[1], limit)))
        if self.basic is not None:
            state = stream.filter_state or {}
            user = state.get("proxy_user")
            if user is None:
                payload = state.get("jwt_payload")
                user = payload.get("sub") if isinstance(payload, dict) else None
            if user is not None and self.basic_auth is not None:
                limit, key = self.basic_auth, f"userid_{str(user)[: D.MAX_VALUE]}"
            elif user is None and self.basic_anon is not None:
                limit, key = self.basic_anon, f"remote_address_{D.client_ip(stream)}"
            else:
                limit = None
            if limit is not None:
                keys.append(self.basic_prefix + key)
                args += (
                    TOKEN_BUCKET if limit.token_bucket else FIXED_WINDOW,
                    limit.requests,
                    limit.unit_seconds,
                )
                limits.append((limit, self._rule_counters("basic", limit)))
        return keys, args, limits

    def on_request_headers(self, stream: Stream) -> int:
        keys, args, limits = self.collect(stream)
        if not keys:
            return F.CONTINUE
        if self.limiter.submit(keys, args, partial(self._decided, stream, limits)):
            return F.STOP
        return self._failed(stream, "redis is backing off after a failure", resume=False)

    def _failed(self, stream: Stream, reason: str, resume: bool) -> int:
        """Redis did not answer: Envoy's failure mode (allow, or 500 with denyOnFail)."""
        self.st_error.value += 1
        if self.deny_on_fail:
            stream.details = "rate_limiter_error"
            log.info(
                "%s %s -> 500 rate limit service error: %s", stream.conn.peer, stream.target, reason
            )
            stream.send_local_reply(500, ERROR_BODY, flag=RATELIMIT_SERVICE_ERROR)
            return F.STOP
        self.st_allowed.value += 1
        if resume:
            stream.resume_filters()
        return F.CONTINUE

    def _decided(
        self,
        stream: Stream,
        limits: list[tuple[D.Limit, tuple[Counter, Counter]]],
        result: list[int] | None,
        reason: str,
    ) -> None:
        if result is None:
            self._failed(stream, reason, resume=True)
            return
        over = None
        tight: tuple[D.Limit, int, int] | None = None
        for i, (limit, (st_hits, st_over)) in enumerate(limits):
            is_over, remaining, reset = result[3 * i], result[3 * i + 1], result[3 * i + 2]
            st_hits.value += 1
            if is_over:
                st_over.value += 1
                if over is None:
                    over = (limit, 0, reset)
            if tight is None or remaining < tight[1]:
                tight = (limit, remaining, reset)
        chosen = over or tight
        assert chosen is not None
        headers = (
            _draft_headers(chosen[0].requests, chosen[1], chosen[2], chosen[0].unit_seconds)
            if self.headers
            else []
        )
        if over is not None:
            self.st_over.value += 1
            extra = [RATELIMITED_HEADER, *headers]
            if self.retry_after:
                extra.append((b"retry-after", b"%d" % max(1, over[2])))
            stream.details = "request_rate_limited"
            log.debug("%s %s -> 429 over limit %s", stream.conn.peer, stream.target, over[0].name)
            stream.send_local_reply(429, GLOBAL_BODY, flag=RATE_LIMITED, extra_headers=extra)
            return
        self.st_ok.value += 1
        if headers:
            stream.state_dict()[GLOBAL_HEADERS_KEY] = headers
        stream.resume_filters()


class GlobalRateLimitHeadersFilter(GlobalRateLimitFilter):
    def on_response_headers(self, stream: Stream) -> int:
        _add_response_headers(stream, GLOBAL_HEADERS_KEY)
        return F.CONTINUE


POLICY = RateLimitPolicy()
