"""External authorization: Gloo ``options.extauth`` with an HTTP service, Envoy ext_authz
semantics (the request and answer mapping is ``dfproxy.auth.ext_authz_check``).

Gloo's rules for where it applies: the server settings are on the listener
(``httpGateway.options.extauth``); a virtual host or route turns checking on with
``extauth: {customAuth: {}}`` and off with ``{disable: true}`` (the route's wins). A route
with neither builds no filter; one with ``disable`` only counts ``ext_authz.disabled``.

The check goes through ``dfproxy.upstream.client.fetch`` on the listener's DFP cluster (DNS
cache, pool, circuit breakers), bounded by ``requestTimeout`` (200 ms as Gloo). A failure or
timeout answers ``statusOnError`` (403) unless ``failureModeAllow`` lets the request on.
Stats (Envoy's names) under ``http.<listener>.ext_authz.[<statPrefix>.]``: ok, denied, error,
failure_mode_allowed, disabled; plus dfproxy's cache_hit.

Decision cache (dfproxy extension ``decisionCache``, off by default): 2xx/4xx answers are
remembered for ``ttl`` by everything the check request carried (method, path, Host and the
sent headers), at most ``maxEntries``. An entry can outlive a revocation by ``ttl``: keep it
short.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dfproxy import tasks
from dfproxy.auth.ext_authz_check import CheckConfig, CheckRequest, Decision, build_check, decide
from dfproxy.auth.ttl_cache import TtlCache
from dfproxy.filters import CONTINUE, STOP, HttpFilter
from dfproxy.http import response_flags as rf
from dfproxy.stream import DONE
from dfproxy.upstream.client import ClientError, fetch

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.config.schema.extauth import Settings
    from dfproxy.policies import BuildContext, Levels, Report
    from dfproxy.stats import StatsStore
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.ext_authz")

ERROR_BODY = b"external authorization failed"
# The most of the service's answer that is read (its body goes to a denied client).
MAX_ANSWER = 64 * 1024

CacheKey = tuple[bytes, str, str, tuple[tuple[bytes, bytes], ...]]


class _Stats:
    def __init__(self, stats: StatsStore, prefix: str) -> None:
        self.ok = stats.counter(prefix + "ok")
        self.denied = stats.counter(prefix + "denied")
        self.error = stats.counter(prefix + "error")
        self.failure_mode_allowed = stats.counter(prefix + "failure_mode_allowed")
        self.disabled = stats.counter(prefix + "disabled")
        self.cache_hit = stats.counter(prefix + "cache_hit")


class ExtAuthzFilter(HttpFilter):
    name = "envoy.filters.http.ext_authz"

    def __init__(self, cfg: CheckConfig, cluster: DfpCluster, stats: _Stats) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.stats = stats
        self.cache: TtlCache[CacheKey, Decision] | None = (
            TtlCache(cfg.cache_ttl, cfg.cache_max) if cfg.cache_ttl > 0 else None
        )

    def on_request_headers(self, stream: Stream) -> int:
        cfg = self.cfg
        if cfg.user_id_header is not None:
            # Gloo: the header the service vouches for is never taken from the client.
            stream.remove_request_header(cfg.user_id_header)
        host = stream.target if stream.is_connect else stream.host_header
        check = build_check(
            cfg, stream.method, stream.path, host, stream.req.forward, stream.is_connect
        )
        if self.cache is not None:
            decision = self.cache.get(check.cache_key, stream.start)
            if decision is not None:
                self.stats.cache_hit.value += 1
                return self._apply(stream, decision)
        tasks.spawn(self._check(stream, check), name="ext_authz")
        return STOP

    async def _check(self, stream: Stream, check: CheckRequest) -> None:
        cfg = self.cfg
        try:
            resp = await fetch(
                self.cluster,
                check.url,
                method=check.method,
                headers=list(check.headers),
                time_limit=cfg.timeout,
                max_body=MAX_ANSWER,
                host_header=check.host,
            )
        except ClientError as exc:
            self._error(stream, str(exc))
            return
        decision = decide(cfg, resp.status, resp.headers, resp.body)
        if self.cache is not None and decision.cacheable:
            self.cache.put(check.cache_key, decision, stream.start)
        if stream.state == DONE:
            return
        if self._apply(stream, decision) == CONTINUE:
            stream.resume_filters()

    def _apply(self, stream: Stream, decision: Decision) -> int:
        if decision.allowed:
            self.stats.ok.value += 1
            for name, value, append in decision.headers:
                stream.set_request_header(name, value, append)
            return CONTINUE
        self.stats.denied.value += 1
        self._refuse(stream, decision.status, "ext_authz_denied", str(decision.status))
        stream.send_local_reply(
            decision.status,
            decision.body,
            flag=rf.UNAUTHORIZED_EXTERNAL_SERVICE,
            content_type=decision.content_type,
            extra_headers=[(n, v) for n, v, _ in decision.headers] or None,
        )
        return STOP

    def _error(self, stream: Stream, reason: str) -> None:
        self.stats.error.value += 1
        if stream.state == DONE:
            return
        if self.cfg.failure_mode_allow:
            self.stats.failure_mode_allowed.value += 1
            log.info("ext_authz error (%s): allowed by failureModeAllow", reason)
            stream.resume_filters()
            return
        self._refuse(stream, self.cfg.status_on_error, "ext_authz_error", reason)
        stream.send_local_reply(
            self.cfg.status_on_error, ERROR_BODY, flag=rf.UNAUTHORIZED_EXTERNAL_SERVICE
        )

    @staticmethod
    def _refuse(stream: Stream, status: int, details: str, why: str) -> None:
        stream.details = details
        log.info(
            "%s %s -> %d (%s: %s)",
            stream.method.decode("latin-1"),
            stream.target.decode("latin-1"),
            status,
            details,
            why,
        )


class DisabledFilter(HttpFilter):
    """A route with ``extauth: {disable: true}``: Envoy counts ``ext_authz.disabled``."""

    name = "envoy.filters.http.ext_authz"

    def __init__(self, stats: _Stats) -> None:
        self.stats = stats

    def on_request_headers(self, stream: Stream) -> int:
        self.stats.disabled.value += 1
        return CONTINUE


# -- the policy -----------------------------------------------------------------------------

DISABLED = "disabled"


class ExtAuthzPolicy:
    name = "ext_authz"

    def __init__(self) -> None:
        # One compiled CheckConfig per listener options object (see proxy_auth).
        self._last: tuple[Any, CheckConfig | None] | None = None

    def compile(self, levels: Levels, report: Report) -> CheckConfig | str | None:
        ext = None
        where, path = "", ""
        for options, opt_path in (
            (levels.route, levels.route_path if levels.route_index >= 0 else ""),
            (levels.vhost, levels.vhost_path),
        ):
            ext = getattr(options, "extauth", None)
            if ext is not None:
                where, path = levels.vs_where, opt_path + ".extauth"
                break
        if ext is None:
            return None
        settings = getattr(levels.listener, "extauth", None)
        if settings is None:
            if ext.custom_auth is not None:
                report.add(
                    where,
                    path + ".customAuth",
                    "needs the server settings in the gateway's httpGateway.options.extauth",
                )
            return None
        if ext.disable:
            return DISABLED
        if self._last is None or self._last[0] is not levels.listener:
            self._last = (levels.listener, self._compile(settings, levels, report))
        return self._last[1]

    def _compile(self, s: Settings, levels: Levels, report: Report) -> CheckConfig | None:
        where, path = levels.gateway_where, levels.listener_path + ".extauth"
        dfp = getattr(levels.listener, "dynamic_forward_proxy", None)
        if dfp is None:
            report.add(
                where,
                path,
                "needs httpGateway.options.dynamicForwardProxy: the check goes through its cluster",
            )
            return None
        https = (s.server_uri or "").startswith("https://")
        if https != (dfp.ssl_config is not None):
            # The check uses the listener's DFP cluster, which either always originates TLS
            # (sslConfig) or never does.
            report.add(
                where,
                path + ".serverUri",
                f"{'https' if https else 'http'}:// needs a dynamicForwardProxy "
                f"{'with' if https else 'without'} sslConfig (the check goes through it)",
            )
            return None
        http = s.http_service
        req = http.request if http else None
        resp = http.response if http else None
        regexes = []
        for i, pattern in enumerate(req.allowed_headers_regex if req else []):
            try:
                regexes.append(re.compile(pattern.encode(), re.IGNORECASE))
            except re.error as exc:
                report.add(where, f"{path}.httpService.request.allowedHeadersRegex[{i}]", str(exc))
                return None

        def names(values: list[str]) -> frozenset[bytes]:
            return frozenset(v.lower().encode() for v in values)

        user_id = s.user_id_header.lower().encode() or None
        upstream = names(resp.allowed_upstream_headers if resp else [])
        if user_id is not None:
            upstream |= {user_id}
        return CheckConfig(
            server_uri=(s.server_uri or "").rstrip("/"),
            path_prefix=http.path_prefix if http else "",
            allowed_headers=names(req.allowed_headers if req else []) | {b"authorization"},
            allowed_regex=tuple(regexes),
            headers_to_add=tuple(
                (k.lower().encode(), v.encode())
                for k, v in (req.headers_to_add if req else {}).items()
            ),
            upstream_headers=upstream,
            upstream_append=names(resp.allowed_upstream_headers_to_append if resp else []),
            client_headers=names(resp.allowed_client_headers)
            if resp and resp.allowed_client_headers
            else None,
            user_id_header=user_id,
            timeout=s.request_timeout,
            failure_mode_allow=s.failure_mode_allow,
            status_on_error=s.status_on_error,
            cache_ttl=s.decision_cache.ttl,
            cache_max=s.decision_cache.max_entries,
            stat_prefix=s.stat_prefix,
        )

    def build(self, compiled: CheckConfig | str, ctx: BuildContext) -> Sequence[HttpFilter]:
        name = ctx.listener.name
        if isinstance(compiled, str):
            return [DisabledFilter(_Stats(ctx.runtime.stats, f"http.{name}.ext_authz."))]
        prefix = f"http.{name}.ext_authz."
        if compiled.stat_prefix:
            prefix += compiled.stat_prefix + "."
        if ctx.cluster is None:
            raise ValueError(f"route {ctx.route_name!r}: extauth needs the listener's DFP cluster")
        return [ExtAuthzFilter(compiled, ctx.cluster, _Stats(ctx.runtime.stats, prefix))]


POLICY = ExtAuthzPolicy()
