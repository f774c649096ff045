"""The global (Redis) filter's decisions without Redis: which counters a request hits
(ratelimitBasic for users and anonymous clients), the failure mode, the 429."""

from __future__ import annotations

from typing import Any

from dfproxy import filters as F
from dfproxy.config.schema.ratelimit import IngressRateLimit, RateLimitServer
from dfproxy.ratelimit.compiled import CompiledGlobal
from dfproxy.ratelimit.global_filter import GlobalRateLimitFilter
from dfproxy.stats import StatsStore


class FakeConn:
    peer = "10.0.0.7:4444"


class FakeStream:
    def __init__(self, state: dict[str, object] | None = None) -> None:
        self.conn = FakeConn()
        self.target = b"http://x.test/"
        self.filter_state = state
        self.details = ""
        self.replies: list[tuple[int, bytes, str, Any]] = []
        self.resumed = 0

    def send_local_reply(
        self, status: int, body: bytes, *, flag: str = "", extra_headers: Any = None
    ) -> None:
        self.replies.append((status, body, flag, extra_headers))

    def resume_filters(self) -> None:
        self.resumed += 1

    def state_dict(self) -> dict[str, object]:
        if self.filter_state is None:
            self.filter_state = {}
        return self.filter_state


class FakeLimiter:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.calls: list[tuple[list[str], list[int], Any]] = []

    def submit(self, keys: list[str], args: list[int], done: Any) -> bool:
        self.calls.append((keys, args, done))
        return self.accept


def make(deny: bool = False, accept: bool = True) -> tuple[GlobalRateLimitFilter, FakeLimiter]:
    server = RateLimitServer.model_validate({"denyOnFail": deny, "enableXRatelimitHeaders": True})
    basic = IngressRateLimit.model_validate(
        {
            "authorizedLimits": {"unit": "MINUTE", "requestsPerUnit": 100},
            "anonymousLimits": {"unit": "SECOND", "requestsPerUnit": 2},
        }
    )
    limiter = FakeLimiter(accept)
    f = GlobalRateLimitFilter(
        CompiledGlobal(server, (), basic, "vhost:vs"),
        limiter,
        StatsStore(),
        "gw",  # type: ignore[arg-type]
    )
    return f, limiter


def test_basic_keys_users_then_clients() -> None:
    f, _ = make()
    keys, args, _ = f.collect(FakeStream({"proxy_user": "alice"}))  # type: ignore[arg-type]
    assert keys == ["dfproxy:basic:gw:vhost:vs:userid_alice"] and args == [0, 100, 60]
    keys, _, _ = f.collect(FakeStream({"jwt_payload": {"sub": "u-1"}}))  # type: ignore[arg-type]
    assert keys == ["dfproxy:basic:gw:vhost:vs:userid_u-1"]
    keys, args, _ = f.collect(FakeStream())  # type: ignore[arg-type]
    assert keys == ["dfproxy:basic:gw:vhost:vs:remote_address_10.0.0.7"] and args == [0, 2, 1]


def test_over_limit_is_a_429_with_the_draft_headers() -> None:
    f, limiter = make()
    s = FakeStream()
    assert f.on_request_headers(s) == F.STOP  # type: ignore[arg-type]
    done = limiter.calls[0][2]
    done([1, 0, 1], "")
    status, body, flag, headers = s.replies[0]
    assert (status, body, flag) == (429, b"rate limited\n", "RL")
    assert (b"x-ratelimit-limit", b"2, 2;w=1") in headers
    assert (b"x-envoy-ratelimited", b"true") in headers
    assert s.details == "request_rate_limited" and s.resumed == 0


def test_under_limit_resumes_and_keeps_headers_for_the_response() -> None:
    f, limiter = make()
    s = FakeStream()
    f.on_request_headers(s)  # type: ignore[arg-type]
    limiter.calls[0][2]([0, 1, 1], "")
    assert s.resumed == 1 and not s.replies
    assert (b"x-ratelimit-remaining", b"1") in s.state_dict()["ratelimit.global_headers"]  # type: ignore[operator]


def test_failure_mode_allow_and_deny() -> None:
    f, limiter = make()
    s = FakeStream()
    f.on_request_headers(s)  # type: ignore[arg-type]
    limiter.calls[0][2](None, "timeout")
    assert s.resumed == 1 and not s.replies
    assert f.st_allowed.value == 1 and f.st_error.value == 1
    deny, limiter = make(deny=True)
    s = FakeStream()
    deny.on_request_headers(s)  # type: ignore[arg-type]
    limiter.calls[0][2](None, "timeout")
    assert s.replies[0][:3] == (500, b"rate limit service unavailable\n", "RLSE")
    assert s.details == "rate_limiter_error"


def test_backing_off_decides_at_once() -> None:
    f, _ = make(accept=False)
    assert f.on_request_headers(FakeStream()) == F.CONTINUE  # type: ignore[arg-type]
    deny, _ = make(deny=True, accept=False)
    s = FakeStream()
    assert deny.on_request_headers(s) == F.STOP  # type: ignore[arg-type]
    assert s.replies[0][0] == 500
