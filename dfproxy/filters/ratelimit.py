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

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dfproxy import filters as F
from dfproxy.config.schema import ratelimit as rs
from dfproxy.ratelimit import descriptors as D
from dfproxy.ratelimit.compiled import (
    BucketSpec,
    Compiled,
    CompiledGlobal,
    CompiledLocal,
    GlobalRule,
    LocalDescriptor,
)
from dfproxy.ratelimit.global_filter import GlobalRateLimitFilter, GlobalRateLimitHeadersFilter
from dfproxy.ratelimit.local_filter import LocalRateLimitFilter, LocalRateLimitHeadersFilter
from dfproxy.ratelimit.redis_limiter import RedisLimiter, parse_address
from dfproxy.ratelimit.token_bucket import BucketMap, TokenBucket

if TYPE_CHECKING:
    from dfproxy.policies import BuildContext, Levels, Report

_VS_NAME = re.compile(r"\(VirtualService (.+)\)$")


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
        included: set[str] = set()
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
                    if doc.where not in included:  # referenced twice: enforced once
                        included.add(doc.where)
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


# -- build --------------------------------------------------------------------------------------


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
    return cls(default, tuple(descs), c.headers, c.retry_after, ctx.runtime.stats, prefix)


def _limiter(ctx: BuildContext, server: rs.RateLimitServer) -> RedisLimiter:
    key = "ratelimit.redis:" + server.model_dump_json()
    limiter = ctx.runtime.shared.get(key)
    if limiter is None:
        limiter = ctx.runtime.shared[key] = RedisLimiter(server)
    assert isinstance(limiter, RedisLimiter)
    return limiter


def _build_global(c: CompiledGlobal, ctx: BuildContext) -> F.HttpFilter:
    cls = (
        GlobalRateLimitHeadersFilter
        if c.server.enable_x_ratelimit_headers
        else GlobalRateLimitFilter
    )
    return cls(c, _limiter(ctx, c.server), ctx.runtime.stats, ctx.listener.name)


POLICY = RateLimitPolicy()
