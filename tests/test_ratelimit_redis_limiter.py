"""Global limits in a real Redis (``redis-server`` started on a free loopback port).

In process: the Lua script's fixed window and token bucket, several descriptors in one call,
NOSCRIPT recovery, an unreachable Redis. Through proxies: RateLimitConfig descriptors, a
limit shared by two dfproxy processes under load (over-admission under 1 %), Redis down
(fail open, ``denyOnFail``), a hung Redis (answered within the timeout), Redis coming back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfproxy.config.schema.ratelimit import RateLimitServer
from dfproxy.ratelimit.redis_limiter import (
    FIXED_WINDOW,
    TOKEN_BUCKET,
    RedisLimiter,
    RedisUnavailable,
)
from tests.helpers import admin_stats, wait_until
from tests.support.clients import RawClient
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess
from tests.support.redis_server import RedisServer, redis_available

pytestmark = pytest.mark.skipif(
    not redis_available(), reason="redis-server is not installed (make deps installs it)"
)

LOAD_SECONDS = 3.0
LOAD_RATE = 2000  # requests per second, both proxies together
LOAD_CONNECTIONS = 16  # keep-alive connections per proxy
SHARED_LIMIT = 2000


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def _server(address: str, **kw: object) -> RateLimitServer:
    return RateLimitServer.model_validate(
        {"redis": {"address": address, "keyPrefix": f"t{uuid.uuid4().hex[:8]}"}, **kw}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- in process
def test_fixed_window_counts_every_key_in_one_call(redis_server: RedisServer) -> None:
    async def run() -> list[list[int]]:
        limiter = RedisLimiter(_server(redis_server.address, requestTimeout="1s"))
        try:
            keys = [f"{uuid.uuid4().hex}:a", f"{uuid.uuid4().hex}:b"]
            args = [FIXED_WINDOW, 2, 3600, FIXED_WINDOW, 3, 3600]
            return [await limiter.check(keys, args) for _ in range(4)]
        finally:
            await limiter.aclose()

    results = asyncio.run(run())
    overs = [(r[0], r[3]) for r in results]
    assert overs == [(0, 0), (0, 0), (1, 0), (1, 1)]
    assert [r[1] for r in results] == [1, 0, 0, 0]  # remaining of the first key
    assert [r[4] for r in results] == [2, 1, 0, 0]
    assert all(0 < r[2] <= 3600 for r in results)  # seconds to the window's end


def test_token_bucket_refills_continuously(redis_server: RedisServer) -> None:
    async def run() -> tuple[list[int], int]:
        limiter = RedisLimiter(_server(redis_server.address, requestTimeout="1s"))
        try:
            key = [uuid.uuid4().hex]
            # 20 per second: a token every 50 ms.
            first = [(await limiter.check(key, [TOKEN_BUCKET, 20, 1]))[0] for _ in range(21)]
            await asyncio.sleep(0.12)
            again = (await limiter.check(key, [TOKEN_BUCKET, 20, 1]))[0]
            return first, again
        finally:
            await limiter.aclose()

    first, again = asyncio.run(run())
    assert first[:20] == [0] * 20 and first[20] == 1
    assert again == 0


def test_script_is_loaded_again_after_a_flush(redis_server: RedisServer) -> None:
    async def run() -> list[int]:
        limiter = RedisLimiter(_server(redis_server.address, requestTimeout="1s"))
        try:
            await limiter.check([uuid.uuid4().hex], [FIXED_WINDOW, 5, 60])
            assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
            return await limiter.check([uuid.uuid4().hex], [FIXED_WINDOW, 5, 60])
        finally:
            await limiter.aclose()

    assert asyncio.run(run())[:2] == [0, 4]


def test_concurrent_requests_share_one_pipeline(redis_server: RedisServer) -> None:
    async def run() -> tuple[list[list[int]], int]:
        limiter = RedisLimiter(_server(redis_server.address, requestTimeout="1s"))
        try:
            key = [uuid.uuid4().hex]
            await limiter.check(key, [FIXED_WINDOW, 30, 3600])
            # An empty script cache makes the pipeline fail with NOSCRIPT: loaded, retried.
            assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
            results = await asyncio.gather(
                *(limiter.check(key, [FIXED_WINDOW, 30, 3600]) for _ in range(40))
            )
            return results, limiter.batches
        finally:
            await limiter.aclose()

    results, batches = asyncio.run(run())
    assert batches == 2  # the first call, then all 40 in one pipeline
    assert sum(r[0] for r in results) == 11  # 1 + 40 hits on a limit of 30
    assert sorted(r[1] for r in results)[-1] == 28


def test_unreachable_redis_fails_then_backs_off() -> None:
    async def run() -> tuple[int, str]:
        limiter = RedisLimiter(_server(f"127.0.0.1:{_free_port()}", retryInterval="10s"))
        try:
            with pytest.raises(RedisUnavailable):
                await limiter.check(["k"], [FIXED_WINDOW, 1, 1])
            with pytest.raises(RedisUnavailable) as second:
                await limiter.check(["k"], [FIXED_WINDOW, 1, 1])
            return limiter.failures, str(second.value)
        finally:
            await limiter.aclose()

    failures, message = asyncio.run(run())
    assert failures == 1  # the second call did not try: backing off
    assert "backing off" in message


# ---------------------------------------------------------------------------- proxies
def gateway(name: str, redis_address: str, prefix: str, **server: object) -> str:
    extra = "".join(f"\n        {k}: {json.dumps(v)}" for k, v in server.items())
    return f"""\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: gloo-system}}
spec:
  bindAddress: 127.0.0.1
  bindPort: 0
  httpGateway:
    options:
      dynamicForwardProxy: {{}}
      rateLimitServer:
        redis: {{address: '{redis_address}', keyPrefix: {prefix}}}
        requestTimeout: 50ms
        retryInterval: 100ms
        enableXRatelimitHeaders: true{extra}
"""


RESOURCES = """\
apiVersion: ratelimit.solo.io/v1alpha1
kind: RateLimitConfig
metadata: {name: shared, namespace: gloo-system}
spec:
  raw:
    descriptors:
    - key: generic_key
      value: shared
      rateLimit: {unit: HOUR, requestsPerUnit: %(limit)d}
    rateLimits:
    - actions: [{genericKey: {descriptorValue: shared}}]
---
apiVersion: ratelimit.solo.io/v1alpha1
kind: RateLimitConfig
metadata: {name: plans, namespace: gloo-system}
spec:
  raw:
    descriptors:
    - key: account
      descriptors:
      - key: plan
        value: BASIC
        rateLimit: {unit: MINUTE, requestsPerUnit: 1}
    - key: header_match
      value: bucket
      rateLimit: {unit: HOUR, requestsPerUnit: 2, algorithm: TOKEN_BUCKET}
    - key: once
      rateLimit: {unit: HOUR, requestsPerUnit: 1}
    rateLimits:
    - actions:
      - requestHeaders: {headerName: x-account, descriptorKey: account}
      - requestHeaders: {headerName: x-plan, descriptorKey: plan}
    - actions:
      - headerValueMatch: {descriptorValue: bucket, headers: [{name: x-bucket, exactMatch: 'on'}]}
    - actions:
      - requestHeaders: {headerName: x-once, descriptorKey: once}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: limited, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    options:
      rateLimitConfigs: {refs: [{name: shared}]}
    routes:
    - matchers: [{prefix: /plans}]
      directResponseAction: {status: 200, body: plans}
      options:
        rateLimitRegularConfigs: {refs: [{name: plans}]}
    - matchers: [{prefix: /basic}]
      directResponseAction: {status: 200, body: basic}
      options:
        ratelimitBasic: {anonymousLimits: {unit: MINUTE, requestsPerUnit: 2}}
    - matchers: [{prefix: /echo}]
      routeAction: {dynamicForwardProxy: {}}
      options:  # the virtual host's policy again: enforced once, not twice
        rateLimitConfigs: {refs: [{name: shared}]}
    - matchers: [{prefix: /}]
      directResponseAction: {status: 200, body: ok}
"""


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"rl-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    return str(path)


def one(p: ProxyProcess, path: str, headers: dict[str, str] | None = None, port: int = 0) -> int:
    with RawClient("127.0.0.1", port or p.port) as c:
        return c.request("GET", f"http://rl.test{path}", headers).status


stats = admin_stats


async def _load(ports: list[int], deadline: float, rate: float, max_requests: int) -> list[int]:
    """Keep-alive connections to each port, paced to ``rate`` in total; counts per status
    (index 0: 200, 1: 429, 2: other)."""
    counts = [0, 0, 0]
    sent = 0
    conns = LOAD_CONNECTIONS * len(ports)
    interval = conns / rate
    request = b"GET http://rl.test/load HTTP/1.1\r\nHost: rl.test\r\n\r\n"

    async def worker(port: int, offset: float) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        next_at = loop.time() + offset
        try:
            while loop.time() < deadline and sent < max_requests:
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
                sent += 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                counts[0 if status == 200 else 1 if status == 429 else 2] += 1
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(
        *(worker(port, i * interval / conns) for port in ports for i in range(LOAD_CONNECTIONS))
    )
    return counts


def test_limit_shared_by_two_processes_under_load(
    proxy_factory: object, tmp_path: Path, redis_server: RedisServer
) -> None:
    # A fixed window per hour: keep the run inside one window.
    into_hour = time.time() % 3600
    if into_hour > 3600 - 2 * LOAD_SECONDS - 5:
        time.sleep(3600 - into_hour + 1)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path,
        gateway("gateway-proxy", redis_server.address, prefix, requestTimeout="1s")
        + "---\n"
        + RESOURCES % {"limit": SHARED_LIMIT},
    )
    make = proxy_factory  # type: ignore[assignment]
    p1 = make("-c", config, log_level="info")  # type: ignore[operator]
    p2 = make("-c", config, log_level="info")  # type: ignore[operator]
    deadline = time.monotonic() + LOAD_SECONDS

    async def run() -> list[int]:
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        return await _load([p1.port, p2.port], loop_deadline, LOAD_RATE, 3 * SHARED_LIMIT)

    ok, limited, other = asyncio.run(run())
    sent = ok + limited + other
    print(f"sent {sent} in {LOAD_SECONDS}s: {ok} allowed, {limited} limited, limit {SHARED_LIMIT}")
    assert other == 0
    assert sent > SHARED_LIMIT, f"the load did not pass the limit ({sent} requests)"
    over = (ok - SHARED_LIMIT) / SHARED_LIMIT
    assert ok >= SHARED_LIMIT and over < 0.01, (ok, SHARED_LIMIT)
    s1, s2 = (stats(p, r"^ratelimit\.gateway-proxy\.") for p in (p1, p2))
    key = "ratelimit.gateway-proxy.gloo-system.shared.generic_key_shared.total_hits"
    assert s1[key] + s2[key] == sent
    assert s1["ratelimit.gateway-proxy.over_limit"] + s2["ratelimit.gateway-proxy.over_limit"] == (
        limited
    )
    assert s1["ratelimit.gateway-proxy.error"] == 0


def test_descriptors_headers_and_algorithms(
    proxy_factory: object, tmp_path: Path, redis_server: RedisServer, origin: OriginServer
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path,
        gateway("gateway-proxy", redis_server.address, prefix, retryAfterHeader=True)
        + "---\n"
        + RESOURCES % {"limit": 1000},
    )
    p = proxy_factory("-c", config)  # type: ignore[operator]
    basic = {"x-account": "a", "x-plan": "BASIC"}
    assert one(p, "/plans", basic) == 200
    with RawClient("127.0.0.1", p.port) as c:
        r = c.request("GET", "http://rl.test/plans", basic)
    assert r.status == 429 and r.body == b"rate limited\n"
    assert r.header("x-envoy-ratelimited") == "true"
    assert r.header("x-ratelimit-limit") == "1, 1;w=60"
    assert r.header("x-ratelimit-remaining") == "0"
    assert 0 < int(r.header("x-ratelimit-reset") or "0") <= 60
    assert 0 < int(r.header("retry-after") or "0") <= 60
    assert one(p, "/plans", {"x-account": "b", "x-plan": "BASIC"}) == 200  # a per-value counter
    assert one(p, "/plans", {"x-account": "a", "x-plan": "PLUS"}) == 200  # no rule: no limit
    assert one(p, "/plans", {"x-account": "a", "x-plan": "PLUS"}) == 200
    # Token bucket: two tokens, then limited; headerValueMatch must match for the descriptor.
    assert [one(p, "/plans", {"x-bucket": "on"}) for _ in range(3)] == [200, 200, 429]
    assert one(p, "/plans", {"x-bucket": "off"}) == 200
    # A key without a value counts each value apart.
    assert [one(p, "/plans", {"x-once": v}) for v in ("a", "a", "b")] == [200, 429, 200]
    # A forwarded answer carries the draft headers of the tightest limit.
    with RawClient("127.0.0.1", p.port) as c:
        ok = c.request("GET", f"http://rl.test:{origin.port}/echo")
    assert ok.status == 200 and ok.header("x-ratelimit-limit") == "1000, 1000;w=3600"
    assert ok.header("x-ratelimit-remaining") == "987"  # the vhost limit counted 13 so far
    # ratelimitBasic: anonymous clients are counted per address.
    assert [one(p, "/basic") for _ in range(3)] == [200, 200, 429]
    s = stats(p, r"^ratelimit\.gateway-proxy\.")
    assert s["ratelimit.gateway-proxy.gloo-system.plans.account.plan_BASIC.over_limit"] == 1
    assert s["ratelimit.gateway-proxy.basic.anonymous.total_hits"] == 3


def test_redis_down_hung_and_back(
    proxy_factory: object, tmp_path: Path, redis_server: RedisServer
) -> None:
    flaky = RedisServer(tmp_path / "flaky").start()
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        config = write_config(
            tmp_path,
            gateway("open", flaky.address, prefix)
            + "---\n"
            + gateway("closed", flaky.address, prefix, denyOnFail=True)
            + "---\n"
            + RESOURCES % {"limit": 1000},
        )
        p = proxy_factory("-c", config)  # type: ignore[operator]
        open_port, closed_port = p.listener_ports["open"], p.listener_ports["closed"]
        once = {"x-once": "back"}
        assert one(p, "/plans", port=open_port) == 200
        flaky.stop()
        # Down: fail open (default) and closed (denyOnFail: Envoy's 500, flag RLSE).
        assert one(p, "/plans", port=open_port) == 200
        with RawClient("127.0.0.1", closed_port) as c:
            r = c.request("GET", "http://rl.test/plans")
        assert r.status == 500 and r.body == b"rate limit service unavailable\n"
        s = stats(p, r"^ratelimit\.(open|closed)\.")
        assert s["ratelimit.open.failure_mode_allowed"] >= 1
        assert s["ratelimit.closed.error"] >= 1
        # Back on the same port: counted again once the retry interval has passed.
        flaky.start()
        wait_until(lambda: one(p, "/plans", port=closed_port) == 200, what="redis back")
        assert one(p, "/plans", once, port=open_port) == 200
        assert one(p, "/plans", once, port=open_port) == 429
        # Hung (SIGSTOP): every request is still answered, after the 50 ms timeout.
        flaky.pause()
        try:
            time.sleep(0.15)  # past the retry interval
            assert one(p, "/plans", port=open_port) == 200
            time.sleep(0.15)
            assert one(p, "/plans", port=closed_port) == 500
        finally:
            flaky.resume()
        resumed = {"x-once": "resumed"}
        wait_until(lambda: one(p, "/plans", resumed, port=open_port) == 429, what="redis resumed")
        assert "rate limit redis failed" in p.stderr_text()
    finally:
        flaky.stop()


def test_reload_keeps_buckets_and_the_redis_client(
    proxy_factory: object, tmp_path: Path, redis_server: RedisServer
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    local = "      httpLocalRatelimit: {defaultLimit: {maxTokens: 3, fillInterval: 100s}}\n"
    text = (
        gateway("gateway-proxy", redis_server.address, prefix)
        + local
        + "---\n"
        + RESOURCES % {"limit": 1000}
    )
    path = tmp_path / "reload.yaml"
    path.write_text(text)
    p = proxy_factory("-c", str(path))  # type: ignore[operator]

    def body(headers: dict[str, str]) -> bytes:
        with RawClient("127.0.0.1", p.port) as c:
            return c.request("GET", "http://rl.test/plans", headers).body

    def clients() -> int:
        info = redis_server.command("INFO", "clients").decode()
        return int(info.split("connected_clients:")[1].split()[0])

    assert body({"x-once": "r"}) == b"plans"
    assert body({"x-once": "r"}) == b"rate limited\n"  # Redis: 1 per hour
    before = clients()
    path.write_text(text + "# a change\n")
    p.send_signal(signal.SIGHUP)
    wait_until(lambda: " active (was " in p.stderr_text(), what="the reload")
    # The same Redis client serves the new routes (no new connection), and the listener's
    # bucket kept its state: one token was left of three.
    assert body({"x-once": "r"}) == b"rate limited\n"
    assert clients() == before
    assert body({"x-account": "a", "x-plan": "PLUS"}) == b"local_rate_limited"
