"""Gloo's JWT verification as a filter (Envoy ``jwt_authn`` with Gloo's ``claimsToHeaders``
semantics), and the two policies that place it: before and after external authorization
(``jwtStaged.beforeExtAuth`` / ``afterExtAuth``; the deprecated ``virtualHost.options.jwt``
is the before stage).

Per request: headers a non-append ``claimsToHeaders`` fills are removed first (so a client
can never supply them, whatever the outcome); the requirement decides; on success the token
is removed (unless ``keepToken``), claims become headers and the payload is left in
``stream.state_dict()["jwt_payload"]``; on failure the reply is Envoy's (401/403, the status
text, ``www-authenticate``). A provider whose remote keys are being fetched pauses the
request until the fetch ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dfproxy import filters as F
from dfproxy.config.schema import jwt as schema
from dfproxy.jwt_authn import status as st
from dfproxy.jwt_authn.extract import (
    DEFAULT_LOCATIONS,
    HeaderLocation,
    Location,
    query_location,
    remove,
)
from dfproxy.jwt_authn.jwks_cache import RemoteJwks
from dfproxy.jwt_authn.keys import Key, parse_key_text
from dfproxy.jwt_authn.provider import (
    ALLOW_MISSING_OR_FAILED,
    WAIT,
    ClaimHeader,
    Decision,
    KeySource,
    LocalKeys,
    Provider,
    Requirement,
    claim_headers,
    payload_of,
)
from dfproxy.jwt_authn.status import JwksError
from dfproxy.jwt_authn.token import normalize_audience
from dfproxy.policies import BuildContext, Levels, Report
from dfproxy.stream import FILTERING

if TYPE_CHECKING:
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.jwt")

# Envoy filter.cc MaximumUriLength: the realm quotes at most this much of the path.
MAX_REALM_PATH = 256


# -- compiled config (config load) -------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSpec:
    url: str
    cache_duration: float
    async_fetch: bool
    fast_listener: bool


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    local_keys: tuple[Key, ...] | None
    remote: RemoteSpec | None
    issuer: str
    audiences: frozenset[str]
    locations: tuple[Location, ...]
    keep_token: bool
    claims: tuple[ClaimHeader, ...]
    clock_skew: int
    failed_status_key: str


@dataclass(frozen=True)
class JwtPolicy:
    """One stage's requirement for a route."""

    providers: tuple[ProviderSpec, ...]
    policy: str


def _provider(name: str, p: schema.Provider, where: str, path: str, report: Report) -> ProviderSpec:
    local_keys: tuple[Key, ...] | None = None
    remote = None
    if p.jwks.local is not None:
        try:
            local_keys = parse_key_text(p.jwks.local.key)
        except JwksError as exc:  # the schema checked it already; kept for direct callers
            report.add(where, f"{path}.jwks.local.key", str(exc))
            local_keys = ()
    elif p.jwks.remote is not None:
        r = p.jwks.remote
        remote = RemoteSpec(
            r.url,
            r.cache_duration,
            r.async_fetch is not None,
            bool(r.async_fetch and r.async_fetch.fast_listener),
        )
    source = p.token_source
    locations: tuple[Location, ...] = DEFAULT_LOCATIONS
    if source is not None and (source.headers or source.query_params):
        locations = tuple(
            HeaderLocation(h.header.lower().encode(), h.prefix.encode()) for h in source.headers
        ) + tuple(query_location(q) for q in source.query_params)
    return ProviderSpec(
        name=name,
        local_keys=local_keys,
        remote=remote,
        issuer=p.issuer,
        audiences=frozenset(normalize_audience(a) for a in p.audiences),
        locations=locations,
        keep_token=p.keep_token,
        claims=tuple(
            ClaimHeader(tuple(c.claim.split(".")), c.header.lower().encode(), c.append)
            for c in p.claims_to_headers
        ),
        clock_skew=p.clock_skew_seconds,
        failed_status_key=p.attach_failed_status_to_metadata,
    )


def compile_extension(
    ext: schema.VhostExtension, where: str, path: str, report: Report
) -> JwtPolicy:
    """A VhostExtension as the requirement it means (providers in name order, as Gloo)."""
    providers = tuple(
        _provider(name, ext.providers[name], where, f"{path}.providers.{name}", report)
        for name in sorted(ext.providers)
    )
    policy = ALLOW_MISSING_OR_FAILED if ext.allow_missing_or_failed_jwt else ext.validation_policy
    return JwtPolicy(providers, policy)


# -- the filter (per request) ------------------------------------------------------------------


class _Remote:
    """A provider's remote keys as a KeySource."""

    __slots__ = ("jwks",)

    def __init__(self, jwks: RemoteJwks) -> None:
        self.jwks = jwks

    def current(self) -> tuple[Key, ...] | None:
        return self.jwks.current()


def _keys_or_wait(provider: Provider) -> tuple[Key, ...] | str:
    keys = provider.keys.current()
    if keys is not None:
        return keys
    src = provider.keys
    if isinstance(src, _Remote) and src.jwks.join():
        return WAIT
    return st.JWKS_FETCH_FAIL


def _keys_now(provider: Provider) -> tuple[Key, ...] | str:
    keys = provider.keys.current()
    return st.JWKS_FETCH_FAIL if keys is None else keys


class JwtFilter(F.HttpFilter):
    """One route's JWT stage."""

    name = "jwt"

    __slots__ = ("requirement", "sanitize", "failed_keys", "st_allowed", "st_denied")

    def __init__(self, requirement: Requirement, st_allowed: Any, st_denied: Any) -> None:
        self.requirement = requirement
        # Gloo claimsToHeaders without append: the client's own value never reaches the
        # upstream, not even when the token is missing or fails under a lenient policy.
        self.sanitize = tuple(
            dict.fromkeys(c.header for p in requirement.providers for c in p.claims if not c.append)
        )
        self.failed_keys = tuple(
            p.failed_status_key for p in requirement.providers if p.failed_status_key
        )
        self.st_allowed = st_allowed
        self.st_denied = st_denied

    def on_request_headers(self, stream: Stream) -> int:
        for header in self.sanitize:
            stream.remove_request_header(header)
        decision = self.requirement.evaluate(stream, int(time.time()), _keys_or_wait)
        if decision.status == WAIT:
            self._wait(stream)
            return F.STOP
        return self._finish(stream, decision)

    def _wait(self, stream: Stream) -> None:
        pending = [
            p.keys.jwks
            for p in self.requirement.providers
            if isinstance(p.keys, _Remote) and p.keys.jwks.keys is None and p.keys.jwks.task
        ]
        left = [len(pending)]

        def done() -> None:
            left[0] -= 1
            if left[0] > 0 or stream.state != FILTERING:
                return  # still fetching, or the client went away meanwhile
            decision = self.requirement.evaluate(stream, int(time.time()), _keys_now)
            if self._finish(stream, decision) == F.CONTINUE:
                stream.resume_filters()

        if not pending:  # the fetch ended between evaluate and here
            left[0] = 1
            stream.conn.listener.loop.call_soon(done)
            return
        for jwks in pending:
            jwks.add_waiter(done)

    def _finish(self, stream: Stream, decision: Decision) -> int:
        if decision.allowed:
            self.st_allowed.value += 1
            accepted = decision.accepted
            if accepted is not None:
                if not accepted.provider.keep_token:
                    for token, _ in accepted.tokens:
                        remove(stream, token)
                for header, value in claim_headers(accepted):
                    stream.set_request_header(header, value, append=True)
                stream.state_dict()["jwt_payload"] = payload_of(accepted)
            elif decision.status != st.OK and self.failed_keys:
                state = stream.state_dict()
                for key in self.failed_keys:
                    state[key] = {"message": decision.status}
            return F.CONTINUE
        self.st_denied.value += 1
        status = decision.status
        realm = b'Bearer realm="http://' + stream.host_header + stream.path[:MAX_REALM_PATH] + b'"'
        if status != st.MISSING:
            realm += b', error="invalid_token"'
        code = st.http_status(status)
        log.info(
            "%s %s -> %d %s (jwt)",
            stream.method.decode("latin-1"),
            stream.target.decode("latin-1")[:MAX_REALM_PATH],
            code,
            status,
        )
        stream.details = st.details(status)
        stream.send_local_reply(code, status.encode(), extra_headers=[(b"www-authenticate", realm)])
        return F.STOP


# -- the policies (config load and runtime build) ----------------------------------------------


class JwtStage:
    """The JWT policy of one stage (``before``: the deprecated ``jwt`` and
    ``jwtStaged.beforeExtAuth``; ``after``: ``jwtStaged.afterExtAuth``)."""

    def __init__(self, name: str, before: bool) -> None:
        self.name = name
        self.before = before
        self.stage = "beforeExtAuth" if before else "afterExtAuth"
        self._last: tuple[object, JwtPolicy] | None = None  # routes of one vhost share it
        self._checked: tuple[JwtPolicy, object] | None = None  # the last scheme check

    def _vhost(self, levels: Levels, report: Report) -> tuple[schema.VhostExtension | None, str]:
        opts = levels.vhost
        if opts is None:
            return None, ""
        base = levels.vhost_path
        jwt = getattr(opts, "jwt", None)
        staged = getattr(opts, "jwt_staged", None)
        if jwt is not None and staged is not None:
            report.add(
                levels.vs_where,
                base,
                "jwt and jwtStaged are exclusive (one jwt_config in Gloo); use jwtStaged",
            )
            return None, ""
        if self.before and jwt is not None:
            return jwt, f"{base}.jwt"
        if staged is not None:
            ext = staged.before_ext_auth if self.before else staged.after_ext_auth
            return ext, f"{base}.jwtStaged.{self.stage}"
        return None, ""

    def compile(self, levels: Levels, report: Report) -> JwtPolicy | None:
        ext, path = self._vhost(levels, report)
        route = levels.route
        if route is not None:
            set_ = [
                n
                for n in ("jwt", "jwt_staged", "jwt_providers_staged")
                if getattr(route, n, None) is not None
            ]
            if len(set_) > 1:
                report.add(
                    levels.vs_where,
                    levels.route_path,
                    "jwt, jwtStaged and jwtProvidersStaged are exclusive (one jwt_config in Gloo)",
                )
                return None
            if self.before and route.jwt is not None and route.jwt.disable:
                return None
            if route.jwt_staged is not None:
                r = (
                    route.jwt_staged.before_ext_auth
                    if self.before
                    else route.jwt_staged.after_ext_auth
                )
                if r is not None and r.disable:
                    return None
            if route.jwt_providers_staged is not None:
                own = (
                    route.jwt_providers_staged.before_ext_auth
                    if self.before
                    else route.jwt_providers_staged.after_ext_auth
                )
                if own is not None:
                    path = f"{levels.route_path}.jwtProvidersStaged.{self.stage}"
                    compiled = compile_extension(own, levels.vs_where, path, report)
                    self._check_schemes(compiled, levels, path, report)
                    return compiled
        if ext is None:
            return None
        last = self._last
        if last is not None and last[0] is ext:
            compiled = last[1]
        else:
            compiled = compile_extension(ext, levels.vs_where, path, report)
            self._last = (ext, compiled)
        self._check_schemes(compiled, levels, path, report)
        return compiled

    def _check_schemes(
        self, compiled: JwtPolicy, levels: Levels, path: str, report: Report
    ) -> None:
        """A remote JWKS is fetched through the gateway's DFP cluster, which either always
        originates TLS (sslConfig) or never does: a URL it cannot speak is a config error,
        not a fetch (and so every request with the provider) failing at run time. Checked
        once per policy and gateway (the routes of a virtual host share the policy)."""
        dfp = getattr(levels.listener, "dynamic_forward_proxy", None)
        if dfp is None or self._checked == (compiled, levels.listener):
            return  # no DFP here: the fetch borrows another gateway's cluster
        self._checked = (compiled, levels.listener)
        tls = dfp.ssl_config is not None
        for p in compiled.providers:
            if p.remote is None:
                continue
            https = urlsplit(p.remote.url).scheme == "https"
            if https != tls:
                report.add(
                    levels.vs_where,
                    f"{path}.providers.{p.name}.jwks.remote.url",
                    f"{'https' if https else 'http'}:// needs the gateway's dynamicForwardProxy"
                    f" {'with' if https else 'without'} sslConfig (the JWKS is fetched"
                    " through it)",
                )

    def build(self, compiled: JwtPolicy, ctx: BuildContext) -> Sequence[F.HttpFilter]:
        runtime = ctx.runtime
        prefix = f"http.{ctx.listener.name}.jwt_authn."
        providers = []
        for spec in compiled.providers:
            keys: KeySource
            if spec.remote is not None:
                keys = _Remote(_remote_jwks(spec.remote, ctx, prefix))
            else:
                keys = LocalKeys(spec.local_keys or ())
            providers.append(
                Provider(
                    spec.name,
                    keys,
                    issuer=spec.issuer,
                    audiences=spec.audiences,
                    locations=spec.locations,
                    keep_token=spec.keep_token,
                    claims=spec.claims,
                    clock_skew=spec.clock_skew,
                    failed_status_key=spec.failed_status_key,
                )
            )
        stats = runtime.stats
        return [
            JwtFilter(
                Requirement(tuple(providers), compiled.policy),
                stats.counter(prefix + "allowed"),
                stats.counter(prefix + "denied"),
            )
        ]


def _remote_jwks(spec: RemoteSpec, ctx: BuildContext, prefix: str) -> RemoteJwks:
    """The shared cache of one URL (kept in ``runtime.shared`` across reloads)."""
    runtime = ctx.runtime
    key = f"jwt.jwks:{spec.url}"
    jwks = runtime.shared.get(key)
    if not isinstance(jwks, RemoteJwks):
        jwks = runtime.shared[key] = RemoteJwks(spec.url, runtime.loop, runtime.stats, prefix)
    own = ctx.cluster

    def cluster_for() -> Any:
        # The route's DFP cluster; a route without one (a direct response) borrows another.
        if own is not None:
            return own
        return next(iter(runtime.clusters.values()), None)

    jwks.configure(runtime, spec.cache_duration, spec.async_fetch, spec.fast_listener, cluster_for)
    return jwks


POLICY = JwtStage("jwt", before=True)
AFTER_EXT_AUTH = JwtStage("jwt_after_ext_auth", before=False)
