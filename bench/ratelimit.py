"""Cost per request of the rate limit filter, in process: plain DFP, a local token bucket, a
local bucket per descriptor (remote address + header), and a Redis-backed limit.

The real proxy objects run on in-memory transports (as bench/hotpath.py): each request is
parsed, routed, filtered, forwarded to a canned origin answer and written back. For the
Redis variant the filter really calls a ``redis-server`` on loopback (started here on a free
port, no persistence), so its wall time includes one Redis round trip per request; the CPU
column is this process's CPU only (time.process_time), i.e. what the limit costs the proxy.
Each variant runs with one request in flight, then with ``--concurrency`` (requests of one
round arrive together, as under load: the Redis variant then sends them as one pipeline).
Nothing is ever limited (huge limits): this is the cost of checking.

    .venv/bin/python bench/ratelimit.py [--requests 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import gloo  # noqa: E402
from hotpath import REQUEST, RESPONSE, FakeTransport  # noqa: E402

from dfproxy.config.gloo import load_paths  # noqa: E402
from dfproxy.downstream import HttpConnection  # noqa: E402
from dfproxy.http.authority import parse_authority  # noqa: E402
from dfproxy.runtime import Runtime  # noqa: E402
from dfproxy.stats import StatsStore  # noqa: E402
from dfproxy.upstream.connection import UpstreamConnection  # noqa: E402

HUGE = "{maxTokens: 4000000000, tokensPerFill: 4000000000, fillInterval: 1s}"
# name -> (listener options, virtual-host options)
VARIANTS = {
    "plain DFP": ("", ""),
    "local bucket": ("", f"ratelimit: {{localRatelimit: {HUGE}}}"),
    "local per descriptor": (
        "",
        "ratelimit:\n  localRatelimitDescriptors:\n"
        "  - actions: [{remoteAddress: {}}, {requestHeaders: {headerName: host, "
        f"descriptorKey: host}}}}]\n    tokenBucket: {HUGE}",
    ),
    "redis fixed window": (
        "rateLimitServer: {redis: {address: '%(redis)s'}, requestTimeout: 1s}",
        "rateLimitConfigs: {refs: [{name: huge}]}",
    ),
}
RATE_LIMIT_CONFIG = """\
---
apiVersion: ratelimit.solo.io/v1alpha1
kind: RateLimitConfig
metadata: {name: huge, namespace: gloo-system}
spec:
  raw:
    descriptors:
    - {key: generic_key, value: all, rateLimit: {unit: HOUR, requestsPerUnit: 4000000000}}
    rateLimits:
    - actions: [{genericKey: {descriptorValue: all}}]
"""


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def measure(
    name: str, config_text: str, workdir: Path, n: int, concurrency: int
) -> tuple[float, float]:
    """(wall, CPU) µs per request, with ``concurrency`` client connections each keeping one
    request in flight (requests of one round go out together)."""
    path = workdir / f"{abs(hash(name))}.yaml"
    path.write_text(config_text)
    config = load_paths([str(path)])
    loop = asyncio.get_running_loop()
    runtime = Runtime(config, loop, StatsStore(), None)
    _, listener = runtime.listeners[0]
    cluster = next(iter(runtime.clusters.values()))
    host = cluster.ip_host(parse_authority("127.0.0.1:18090", 80))
    pending: list[UpstreamConnection] = []
    sent = asyncio.Event()
    ups: list[UpstreamConnection] = []
    for _ in range(concurrency):
        up = UpstreamConnection(cluster.pool, host)
        up_t = FakeTransport(("127.0.0.1", 18090))
        up.connection_made(up_t)  # type: ignore[arg-type]

        def on_write(data: bytes, up: UpstreamConnection = up) -> None:
            pending.append(up)
            if len(pending) >= concurrency:
                sent.set()

        up_t.on_write = on_write
        up.request_done = True
        up.mark_idle()
        ups.append(up)
    cluster.pool.idle[ups[0].key] = list(ups)
    downs = []
    for i in range(concurrency):
        down = HttpConnection(listener)
        down_t = FakeTransport(("127.0.0.1", 50000 + i))
        down.connection_made(down_t)  # type: ignore[arg-type]
        downs.append((down, down_t))

    async def round_() -> None:
        for down, _ in downs:
            down.data_received(REQUEST)
        if len(pending) < concurrency:  # the Redis-backed filter forwards from a task, later
            await asyncio.wait_for(sent.wait(), 10)
        sent.clear()
        for up in pending[:]:
            up.data_received(RESPONSE)
        pending.clear()

    rounds = max(1, n // concurrency)
    for _ in range(max(1, 500 // concurrency)):
        await round_()
    written = sum(t.written for _, t in downs)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await round_()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert sum(t.written for _, t in downs) > written
    runtime.close()
    await asyncio.sleep(0.01)  # let the Redis client close
    done = rounds * concurrency
    return wall / done * 1e6, cpu / done * 1e6


async def run(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_proc, address = (None, "")
        if shutil.which("redis-server"):
            redis_proc, address = start_redis(workdir)
        try:
            rows = []
            for name, (listener, vhost) in VARIANTS.items():
                if "redis" in name and redis_proc is None:
                    print(f"{name}: skipped (no redis-server)")
                    continue
                text = gloo.config(
                    gloo.gateway(listener % {"redis": address}), gloo.catch_all("all", vhost)
                )
                if "redis" in name:
                    text += RATE_LIMIT_CONFIG
                for c in (1, concurrency):
                    wall, cpu = await measure(name, text, workdir, n, c)
                    rows.append((name, c, wall, cpu))
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(5)
    base = {c: cpu for name, c, _, cpu in rows if name == "plain DFP"}
    print(f"{n:,} requests per variant and concurrency, in process (uvloop)\n")
    print("| variant | in flight | wall µs/request | CPU µs/request | CPU over plain DFP |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, c, wall, cpu in rows:
        print(f"| {name} | {c} | {wall:.1f} | {cpu:.1f} | {cpu - base[c]:+.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    args = parser.parse_args()
    uvloop.run(run(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
