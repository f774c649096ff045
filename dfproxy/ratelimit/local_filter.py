"""Envoy's local_ratelimit filter: a token per request from every bucket that applies.

Limited: 429 ``local_rate_limited`` (Envoy's body) with ``x-envoy-ratelimited: true``; the draft
RFC headers (``x-ratelimit-limit``, ``-remaining``, ``-reset``) on the 429 and, with
``enableXRatelimitHeaders``, on every forwarded response.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from dfproxy import filters as F
from dfproxy.ratelimit import descriptors as D
from dfproxy.ratelimit.token_bucket import BucketMap, TokenBucket

if TYPE_CHECKING:
    from dfproxy.stats import Counter, StatsStore
    from dfproxy.stream import Stream

log = logging.getLogger("dfproxy.ratelimit")

RATE_LIMITED = "RL"  # Envoy response flag RateLimited
LOCAL_BODY = b"local_rate_limited"  # Envoy's local_ratelimit body
RATELIMITED_HEADER = (b"x-envoy-ratelimited", b"true")
LOCAL_HEADERS_KEY = "ratelimit.local_headers"


def draft_headers(
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
        stats: StatsStore,
        prefix: str,
    ) -> None:
        self.default = default
        self.descriptors = descriptors
        self.headers = headers
        self.retry_after = retry_after
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
                extra += draft_headers(limited.max_tokens, 0, limited.reset_after())
            if self.retry_after:
                extra.append((b"retry-after", b"%d" % max(1, math.ceil(limited.reset_after()))))
            stream.details = "local_rate_limited"
            log.debug("%s %s -> 429 local_rate_limited", stream.conn.peer, stream.target)
            stream.send_local_reply(429, LOCAL_BODY, flag=RATE_LIMITED, extra_headers=extra)
            return F.STOP
        self.st_ok.value += 1
        if self.headers and tightest is not None:
            stream.state_dict()[LOCAL_HEADERS_KEY] = draft_headers(
                tightest.max_tokens, tightest.tokens, tightest.reset_after()
            )
        return F.CONTINUE


class LocalRateLimitHeadersFilter(LocalRateLimitFilter):
    """With ``enableXRatelimitHeaders``: the draft headers on forwarded responses too."""

    def on_response_headers(self, stream: Stream) -> int:
        add_response_headers(stream, LOCAL_HEADERS_KEY)
        return F.CONTINUE


def add_response_headers(stream: Stream, key: str) -> None:
    state = stream.filter_state
    extra = state.get(key) if state else None
    if extra and stream.resp_headers is not None:
        stream.resp_headers = list(stream.resp_headers) + extra  # type: ignore[operator]
