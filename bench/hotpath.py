"""Microbenchmark of dfproxy's own per-request work, without sockets or the event loop's I/O.

The real objects (listener, downstream codec, stream, route table, DFP filter, DNS cache,
upstream pool, upstream codec) run on in-memory transports: writing a request upstream feeds
a canned origin response straight back. What is left is the Python the proxy spends per
request, which wrk cannot isolate on a busy machine. Use it to compare changes; the real
figures come from bench/run.py.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any, NamedTuple

import uvloop

from dfproxy.config.model import default_config
from dfproxy.downstream import HttpConnection
from dfproxy.http.authority import parse_authority
from dfproxy.recent import RecentRequests
from dfproxy.runtime import Runtime
from dfproxy.stats import StatsStore
from dfproxy.upstream.connection import UpstreamConnection

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 02:27:48 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)
REQUEST = b"GET http://127.0.0.1:18090/ HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"


def named_requests(n: int) -> list[bytes]:
    """Requests for n names (resolved through the DNS cache, seeded like a warm cache)."""
    return [
        b"GET http://h%d.bench.test:18090/ HTTP/1.1\r\nHost: h%d.bench.test:18090\r\n\r\n" % (i, i)
        for i in range(n)
    ]


class FakeTransport:
    """Enough of asyncio.Transport for the proxy's protocols."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.on_write: Any = None
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.on_write is not None:
            self.on_write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


class Wire(NamedTuple):
    """A downstream connection of the runtime's first listener and one idle pooled upstream
    connection to 127.0.0.1:18090, both on FakeTransports. Every request written upstream
    queues RESPONSE in ``pending``: ``down.data_received(REQUEST)`` then
    ``up.data_received(pending.pop())`` is one request through the proxy."""

    down: HttpConnection
    down_transport: FakeTransport
    up: UpstreamConnection
    up_transport: FakeTransport
    pending: list[bytes]


def wire(runtime: Runtime) -> Wire:
    _, listener = runtime.listeners[0]
    cluster = next(iter(runtime.clusters.values()))
    host = cluster.ip_host(parse_authority("127.0.0.1:18090", 80))
    up = UpstreamConnection(cluster.pool, host)
    up_t = FakeTransport(("127.0.0.1", 18090))
    up.connection_made(up_t)  # type: ignore[arg-type]
    # The origin "answers" each request written to it; the caller delivers the answer.
    pending: list[bytes] = []
    up_t.on_write = lambda data: pending.append(RESPONSE)
    up.request_done = True
    up.mark_idle()
    cluster.pool.idle[up.key] = [up]  # filed as the pool files it: (peer ip, port, TLS name)
    down = HttpConnection(listener)
    down_t = FakeTransport(("127.0.0.1", 50000))
    down.connection_made(down_t)  # type: ignore[arg-type]
    return Wire(down, down_t, up, up_t, pending)


async def run(n: int, profile: bool, hosts: int, recent: bool = False) -> None:
    loop = asyncio.get_running_loop()
    config = default_config()
    dfp = config.listeners[0].dfp
    assert dfp is not None
    dfp.dns_cache.max_hosts = max(dfp.dns_cache.max_hosts, hosts)
    runtime = Runtime(config, loop, StatsStore(), None)
    _, listener = runtime.listeners[0]
    cluster = next(iter(runtime.clusters.values()))
    if recent:  # what a watched dashboard costs: an access-log entry per request, in a ring
        listener.access_log = RecentRequests()  # type: ignore[assignment]
    down, down_t, up, up_t, pending = wire(runtime)

    requests = [REQUEST]
    if hosts:
        requests = named_requests(hosts)
        for i in range(hosts):
            name = f"h{i}.bench.test"
            cluster.dns_cache.load_from_store(f"{name}:18090", name, 18090, [("127.0.0.1", 2)], 300)
    count = len(requests)
    index = [0]

    def one() -> None:
        i = index[0]
        index[0] = i + 1
        down.data_received(requests[i % count])
        up.data_received(pending.pop())

    # Every name once before measuring: --hosts measures cache hits (memoised authorities
    # included), not the first request per name.
    for _ in range(max(1000, count)):
        one()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    for _ in range(n):
        one()
    elapsed = time.perf_counter() - t0
    if prof:
        prof.disable()
    print(
        f"{n:,} requests: {elapsed / n * 1e6:.2f} µs per request of dfproxy Python "
        f"({n / elapsed:,.0f} req/s if that were all)"
    )
    assert down_t.written > 0 and up_t.written > 0
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--hosts", type=int, default=0, help="rotate over N names (DNS cache)")
    parser.add_argument(
        "--recent", action="store_true", help="feed the dashboard's recent-requests ring"
    )
    args = parser.parse_args()
    uvloop.run(run(args.requests, args.profile, args.hosts, args.recent))


if __name__ == "__main__":
    main()
