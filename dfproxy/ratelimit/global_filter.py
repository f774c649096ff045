"""Envoy's ratelimit filter, with the ratelimit service's counting done in Redis.

The request's descriptors are matched against the rules at request time (pure, no I/O); the
counters they reach go to Redis in one script call (``redis_limiter``), and the answer comes
back through a callback: over a limit, 429 ``rate limited`` with ``x-envoy-ratelimited``;
Redis failing, the request continues or, with ``denyOnFail``, gets 500 (Envoy's
failure_mode_deny, response flag RLSE).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from dfproxy import filters as F
from dfproxy.config.schema import ratelimit as rs
from dfproxy.ratelimit import descriptors as D
from dfproxy.ratelimit.compiled import CompiledGlobal
from dfproxy.ratelimit.local_filter import (
    RATE_LIMITED,
    RATELIMITED_HEADER,
    add_response_headers,
    draft_headers,
)
from dfproxy.ratelimit.redis_limiter import FIXED_WINDOW, TOKEN_BUCKET, RedisLimiter

if TYPE_CHECKING:
    from dfproxy.stats import Counter, StatsStore
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.ratelimit")

RATELIMIT_SERVICE_ERROR = "RLSE"  # Envoy response flag RateLimitServiceError
GLOBAL_BODY = b"rate limited\n"
ERROR_BODY = b"rate limit service unavailable\n"
GLOBAL_HEADERS_KEY = "ratelimit.global_headers"


def _basic_limit(name: str, r: rs.RateLimit) -> D.Limit:
    return D.Limit(
        name, r.requests_per_unit, rs.UNIT_SECONDS[r.unit], r.algorithm == "TOKEN_BUCKET"
    )


class GlobalRateLimitFilter(F.HttpFilter):
    """Envoy's ratelimit filter with the ratelimit service's counting done in Redis."""

    name = "ratelimit"

    def __init__(
        self, c: CompiledGlobal, limiter: RedisLimiter, stats: StatsStore, listener: str
    ) -> None:
        self.limiter = limiter
        self.deny_on_fail = c.server.deny_on_fail
        self.headers = c.server.enable_x_ratelimit_headers
        self.retry_after = c.server.retry_after_header
        prefix = c.server.redis.key_prefix
        self.rules = tuple((f"{prefix}:{r.config}:", r.config, r.builder, r.tree) for r in c.rules)
        self.basic = c.basic
        self.basic_prefix = f"{prefix}:basic:{listener}:{c.basic_scope}:"
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
        self.stats = stats
        p = f"ratelimit.{listener}."
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
        for prefix, config, builder, tree in self.rules:
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
            limits.append((limit, self._rule_counters(config, limit)))
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
            draft_headers(chosen[0].requests, chosen[1], chosen[2], chosen[0].unit_seconds)
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
        add_response_headers(stream, GLOBAL_HEADERS_KEY)
        return F.CONTINUE
