"""Proxy authentication: ``Proxy-Authorization: Basic`` against htpasswd entries (RFC 9110
§11.7, RFC 7617), before every other policy.

Every request is authenticated on its own: nothing is remembered per connection or per client
address (a peer proxy that trusted an IP after one good login let anyone behind the same NAT
in). To keep keep-alive traffic from running bcrypt per request, a verified credential is
remembered for a few seconds keyed by its exact bytes, together with the stored hash it
matched: a changed password (reload) no longer matches the cached hash.

A bcrypt check costs milliseconds (``bench/authn.py``), so it runs in a small thread pool and
the request waits (STOP, then ``resume_filters``); at most ``maxPendingChecks`` wait, more get
503. SHA entries are checked inline (microseconds). An unknown user is checked against a
stand-in bcrypt hash as costly as the real ones, so timing does not tell which users exist.
Failures are counted per client address: past ``failureLimit.maxFailures`` in the window,
the address gets 429 without any check.

Answers: 407 with ``Proxy-Authenticate: Basic realm=...`` (a CONNECT is closed after it, as
every CONNECT local reply); the body wording is Envoy's basic_auth filter's. Stats under
``http.<listener>.proxy_auth.``: allowed, denied, rate_limited, cache_hit, overloaded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfproxy.auth.basic import challenge, credential_key, parse_basic
from dfproxy.auth.failure_limiter import FailureLimiter, client_address
from dfproxy.auth.htpasswd import (
    PasswordHash,
    decoy_hash,
    parse_hash,
    parse_htpasswd,
    verify,
)
from dfproxy.auth.ttl_cache import TtlCache
from dfproxy.filters import CONTINUE, STOP, HttpFilter
from dfproxy.stream import DONE

if TYPE_CHECKING:
    from dfproxy.config.schema.proxy_auth import ProxyAuthSettings
    from dfproxy.policies import BuildContext, Levels, Report
    from dfproxy.stats import StatsStore
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.proxy_auth")

# bcrypt releases the GIL: two threads use both cores of a small machine without letting
# password checks take every core from the event loop.
CHECK_THREADS = 2
MISSING = b"User authentication failed. Missing username and password."
INVALID = b"User authentication failed. Invalid username/password combination."
LIMITED = b"too many failed proxy authentication attempts from this address; try later"
BUSY = b"proxy authentication is overloaded; try again"


@dataclass(frozen=True)
class ProxyAuthConfig:
    """A listener's proxy authentication, compiled at config load."""

    realm: str
    users: dict[str, PasswordHash]
    max_failures: int
    window: float
    max_tracked: int
    cache_ttl: float
    cache_max: int
    max_pending: int
    source_files: tuple[str, ...] = ()  # in the config version: SIGHUP reloads an edit

    def __hash__(self) -> int:
        return id(self)


class _Shared:
    """What one listener's routes share and keep across reloads: the failure table and the
    verified-credentials cache (entries carry the hash they matched, so they stay safe
    across a password change)."""

    def __init__(self, config: ProxyAuthConfig) -> None:
        self.failures = FailureLimiter(config.max_failures, config.window, config.max_tracked)
        self.verified: TtlCache[bytes, tuple[str, PasswordHash]] = TtlCache(
            config.cache_ttl, config.cache_max
        )
        self.pending = 0  # bcrypt checks queued or running
        # Credential bytes -> the requests waiting for its check: a burst of connections
        # with the same credential (a browser opens six) costs one bcrypt run.
        self.inflight: dict[bytes, tuple[PasswordHash, list[tuple[Stream, str]]]] = {}

    def configure(self, config: ProxyAuthConfig) -> None:
        self.failures.configure(config.max_failures, config.window, config.max_tracked)
        self.verified.ttl, self.verified.max_entries = config.cache_ttl, config.cache_max


class _Executor:
    """The bounded thread pool for bcrypt checks (one per process, closed at exit)."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(
            CHECK_THREADS, thread_name_prefix="dfproxy-auth"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class ProxyAuthFilter(HttpFilter):
    name = "dfproxy.filters.proxy_auth"

    def __init__(
        self,
        config: ProxyAuthConfig,
        shared: _Shared,
        executor: _Executor,
        stats: StatsStore,
        prefix: str,
    ) -> None:
        self.config = config
        self.shared = shared
        self.executor = executor
        self.challenge = [(b"proxy-authenticate", challenge(config.realm))]
        # What an unknown user is checked against (see htpasswd.decoy_hash); never a match.
        self.decoy = decoy_hash(config.users)
        self.st_allowed = stats.counter(prefix + "allowed")
        self.st_denied = stats.counter(prefix + "denied")
        self.st_rate_limited = stats.counter(prefix + "rate_limited")
        self.st_cache_hit = stats.counter(prefix + "cache_hit")
        self.st_overloaded = stats.counter(prefix + "overloaded")

    def on_request_headers(self, stream: Stream) -> int:
        shared = self.shared
        now = stream.start
        address = client_address(stream.conn.peer)
        wait = shared.failures.blocked_for(address, now)
        if wait:
            self.st_rate_limited.value += 1
            self._refuse(stream, 429, LIMITED, "proxy_auth_rate_limited", address, wait)
            return STOP
        value = stream.req.proxy_authorization
        if value is None:
            self.st_denied.value += 1  # not a failure: clients ask first, then send them
            self._refuse(stream, 407, MISSING, "proxy_auth_missing_credentials", address)
            return STOP
        key = credential_key(value)
        cached = shared.verified.get(key, now)
        if cached is not None and self.config.users.get(cached[0]) == cached[1]:
            self.st_cache_hit.value += 1
            return self._allow(stream, cached[0])
        creds = parse_basic(value)
        if creds is None:
            self._fail(stream, address, now)
            return STOP
        user, password = creds
        stored = self.config.users.get(user) or self.decoy
        if stored is None:
            self._fail(stream, address, now)
            return STOP
        if not stored.expensive:
            if verify(stored, password):
                shared.verified.put(key, (user, stored), now)
                return self._allow(stream, user)
            self._fail(stream, address, now)
            return STOP
        waiting = shared.inflight.get(key)
        if waiting is not None and waiting[0] == stored:
            waiting[1].append((stream, address))  # the same credential is being checked
            return STOP
        if not shared.failures.may_check(address, now):
            # This address has as many checks running as it may still fail: wait for them.
            self.st_rate_limited.value += 1
            self._refuse(stream, 429, LIMITED, "proxy_auth_rate_limited", address, 1.0)
            return STOP
        if shared.pending >= self.config.max_pending:
            self.st_overloaded.value += 1
            self._refuse(stream, 503, BUSY, "proxy_auth_overloaded", address)
            return STOP
        shared.pending += 1
        shared.failures.check_started(address)
        waiters = [(stream, address)]
        if waiting is None:  # else a reload changed the hash: this check answers its own
            shared.inflight[key] = (stored, waiters)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor.pool, verify, stored, password)
        future.add_done_callback(
            lambda f: self._checked(f, key, user, stored, now, address, waiters)
        )
        return STOP

    def _checked(
        self,
        future: asyncio.Future[bool],
        key: bytes,
        user: str,
        stored: PasswordHash,
        now: float,
        address: str,
        waiters: list[tuple[Stream, str]],
    ) -> None:
        """A bcrypt check (started for a request from ``address``) finished: answer every
        request that waited for it."""
        shared = self.shared
        shared.pending -= 1
        shared.failures.check_ended(address)
        entry = shared.inflight.get(key)
        if entry is not None and entry[1] is waiters:
            del shared.inflight[key]
        failed = future.cancelled() or future.exception() is not None
        if failed:
            log.error("password check failed: %r", future.cancelled() or future.exception())
        ok = not failed and future.result() and stored is not self.decoy
        if ok:
            shared.verified.put(key, (user, stored), now)
        for stream, address in waiters:
            if stream.state == DONE:
                continue  # the client went away meanwhile
            if failed:
                self._refuse(stream, 503, BUSY, "proxy_auth_check_failed", address)
            elif ok:
                self._allow(stream, user)
                stream.resume_filters()
            else:
                self._fail(stream, address, now)

    def _allow(self, stream: Stream, user: str) -> int:
        self.st_allowed.value += 1
        stream.state_dict()["proxy_user"] = user
        return CONTINUE

    def _fail(self, stream: Stream, address: str, now: float) -> None:
        self.st_denied.value += 1
        self.shared.failures.record_failure(address, now)
        self._refuse(stream, 407, INVALID, "proxy_auth_invalid_credentials", address)

    def _refuse(
        self,
        stream: Stream,
        status: int,
        body: bytes,
        details: str,
        address: str,
        retry_after: float = 0.0,
    ) -> None:
        stream.details = details
        log.info(
            "%s %s from %s -> %d (%s)",
            stream.method.decode("latin-1"),
            stream.target.decode("latin-1"),
            address,
            status,
            details,
        )
        headers = self.challenge if status == 407 else None
        if retry_after:
            headers = [(b"retry-after", b"%d" % max(1, int(retry_after + 0.999)))]
        stream.send_local_reply(status, body, extra_headers=headers)


# -- the policy -----------------------------------------------------------------------------


class ProxyAuthPolicy:
    name = "proxy_auth"

    def __init__(self) -> None:
        # The listener options of the config being loaded and what they compiled to: every
        # route of a listener shares one compiled value (and the file is read once per load).
        self._last: tuple[Any, ProxyAuthConfig | None] | None = None

    def compile(self, levels: Levels, report: Report) -> ProxyAuthConfig | None:
        settings = getattr(levels.listener, "proxy_auth", None)
        if settings is None:
            return None
        for options in (levels.route, levels.vhost):
            override = getattr(options, "proxy_auth", None)
            if override is not None:
                if override.disable:
                    return None
                break
        if self._last is None or self._last[0] is not levels.listener:
            self._last = (levels.listener, self._compile(settings, levels, report))
        return self._last[1]

    def _compile(
        self, settings: ProxyAuthSettings, levels: Levels, report: Report
    ) -> ProxyAuthConfig | None:
        where, path = levels.gateway_where, levels.listener_path + ".proxyAuth"
        ok = True
        users: dict[str, PasswordHash] = {}
        if settings.htpasswd_file is not None:
            filename = settings.htpasswd_file
            try:
                with open(filename, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                report.add(where, path + ".htpasswdFile", f"cannot read {filename!r}: {exc}")
                return None
            users, errors = parse_htpasswd(text)
            for err in errors:
                report.add(where, path + ".htpasswdFile", f"{os.path.basename(filename)} {err}")
            ok = not errors
        for i, user in enumerate(settings.users):
            try:
                stored = parse_hash(user.password_hash)
            except ValueError as exc:
                report.add(where, f"{path}.users[{i}].passwordHash", str(exc))
                ok = False
                continue
            if user.name in users:
                report.add(where, f"{path}.users[{i}].name", f"user {user.name!r} is listed twice")
                ok = False
                continue
            users[user.name] = stored
        if not ok:
            return None
        return ProxyAuthConfig(
            realm=settings.realm,
            users=users,
            max_failures=settings.failure_limit.max_failures,
            window=settings.failure_limit.window,
            max_tracked=settings.failure_limit.max_tracked_clients,
            cache_ttl=settings.cache.ttl,
            cache_max=settings.cache.max_entries,
            max_pending=settings.max_pending_checks,
            source_files=(settings.htpasswd_file,) if settings.htpasswd_file else (),
        )

    def build(self, compiled: ProxyAuthConfig, ctx: BuildContext) -> Sequence[HttpFilter]:
        shared_objects = ctx.runtime.shared
        key = f"proxy_auth/{ctx.listener.name}"
        shared = shared_objects.get(key)
        if not isinstance(shared, _Shared):
            shared = shared_objects[key] = _Shared(compiled)
        else:
            shared.configure(compiled)
        executor = shared_objects.get("proxy_auth/executor")
        if not isinstance(executor, _Executor):
            executor = shared_objects["proxy_auth/executor"] = _Executor()
        prefix = f"http.{ctx.listener.name}.proxy_auth."
        return [ProxyAuthFilter(compiled, shared, executor, ctx.runtime.stats, prefix)]


POLICY = ProxyAuthPolicy()
