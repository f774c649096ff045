"""Cost of proxy authentication and external authorization per request.

Two parts, both on this machine (loopback only):

1. In-process (no sockets): the proxy_auth filter's cached path (a verified credential seen
   again, as on keep-alive traffic), and what a check costs uncached: SHA inline, bcrypt
   cost 5 and 10 (these run in the thread pool, off the event loop).
2. End to end: one ``dfproxy run`` (uvloop) with four listeners (plain DFP, proxyAuth,
   extauth, extauth with the decision cache), an origin and an authorization service from
   tests/support (threaded, blocking), and one keep-alive client sending requests one after
   another; the cost is the median latency difference from the plain listener.

    .venv/bin/python bench/authn.py [--requests 2000] [--filter-calls 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import gloo  # noqa: E402

from dfproxy.auth.htpasswd import parse_hash, verify  # noqa: E402
from dfproxy.filters.proxy_auth import ProxyAuthConfig, ProxyAuthFilter, _Executor, _Shared  # noqa: E402
from dfproxy.stats import StatsStore  # noqa: E402
from tests.support.origin import OriginServer  # noqa: E402
from tests.support.proxy import ProxyProcess  # noqa: E402

CREDENTIAL = b"Basic " + base64.b64encode(b"alice:wonderland")


class _Req:
    proxy_authorization = CREDENTIAL


class _Conn:
    peer = "127.0.0.1:40000"


class _Stream:
    """What the filter reads and writes on a Stream."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.conn = _Conn()
        self.req = _Req()
        self.filter_state: dict[str, object] | None = None
        self.details = ""

    def state_dict(self) -> dict[str, object]:
        if self.filter_state is None:
            self.filter_state = {}
        return self.filter_state


def bench_filter(calls: int) -> dict[str, float]:
    stored = parse_hash(bcrypt.hashpw(b"wonderland", bcrypt.gensalt(5)).decode())
    config = ProxyAuthConfig("bench", {"alice": stored}, 10, 60.0, 1000, 3600.0, 1024, 256)
    shared = _Shared(config)
    executor = _Executor()
    f = ProxyAuthFilter(config, shared, executor, StatsStore(), "bench.")
    stream = _Stream()
    shared.verified.put(CREDENTIAL, ("alice", stored), stream.start)
    s: Any = stream
    t0 = time.perf_counter()
    for _ in range(calls):
        s.filter_state = None
        f.on_request_headers(s)
    cached_us = (time.perf_counter() - t0) / calls * 1e6
    assert stream.filter_state == {"proxy_user": "alice"}
    executor.close()

    out = {"cached_check_us": cached_us}
    sha = parse_hash("{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode())
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        verify(sha, b"pw")
    out["sha_check_us"] = (time.perf_counter() - t0) / n * 1e6
    for cost in (5, 10):
        h = parse_hash(bcrypt.hashpw(b"pw", bcrypt.gensalt(cost)).decode())
        reps = 20 if cost == 5 else 3
        t0 = time.perf_counter()
        for _ in range(reps):
            verify(h, b"pw")
        out[f"bcrypt{cost}_check_ms"] = (time.perf_counter() - t0) / reps * 1e3
    return out


# -- end to end ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(htpasswd: Path, auth_port: int) -> str:
    ext = f"serverUri: 'http://127.0.0.1:{auth_port}'\n  httpService: {{pathPrefix: /status/200}}"

    def gateway(name: str, port: int, options: str) -> str:
        served = ("authz",) if "extauth" in options else ("open",)
        return gloo.gateway(options, name=name, port=port, virtual_services=served)

    return gloo.config(
        gateway("plain", 8080, ""),
        gateway("proxyauth", free_port(), f"proxyAuth: {{htpasswdFile: {htpasswd}}}\n"),
        gateway("extauth", free_port(), f"extauth:\n  {ext}\n"),
        gateway(
            "extauth-cached", free_port(), f"extauth:\n  {ext}\n  decisionCache: {{ttl: 3600s}}\n"
        ),
        gloo.catch_all("open"),
        gloo.catch_all("authz", "extauth: {customAuth: {}}"),
    )


def latencies(port: int, origin_port: int, n: int, auth: bool) -> list[float]:
    """Sequential keep-alive GETs through the proxy; seconds per request."""
    authority = f"127.0.0.1:{origin_port}"
    head = f"GET http://{authority}/status/200 HTTP/1.1\r\nHost: {authority}\r\n"
    if auth:
        head += "Proxy-Authorization: " + CREDENTIAL.decode() + "\r\n"
    request = (head + "\r\n").encode()
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(request)
            data = b""
            while not data.endswith(b"status 200\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError(f"connection closed: {data!r}")
                data += chunk
            out.append(time.perf_counter() - t0)
    return out


def bench_end_to_end(requests: int) -> dict[str, float]:
    origin = OriginServer().start()
    auth = OriginServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="dfproxy-bench-authn-"))
    htpasswd = tmp / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(5)).decode())
    cfg = tmp / "gw.yaml"
    cfg.write_text(config(htpasswd, auth.port))
    p = ProxyProcess.launch(tmp, "-c", str(cfg), dns_resolver=None, log_level="warning")
    out: dict[str, float] = {}
    try:
        ports = p.listener_ports
        ports["plain"] = p.port
        for name in ("plain", "proxyauth", "extauth", "extauth-cached"):
            latencies(ports[name], origin.port, 200, name == "proxyauth")  # warm-up
        rounds: dict[str, list[float]] = {n: [] for n in ports}
        for _ in range(3):  # interleaved, so machine noise hits every listener alike
            for name in ("plain", "proxyauth", "extauth", "extauth-cached"):
                rounds[name] += latencies(ports[name], origin.port, requests, name == "proxyauth")
        for name, values in rounds.items():
            out[f"{name}_p50_us"] = statistics.median(values) * 1e6
    finally:
        p.stop()
        origin.stop()
        auth.stop()
    base = out["plain_p50_us"]
    for name in ("proxyauth", "extauth", "extauth-cached"):
        out[f"{name}_added_us"] = out[f"{name}_p50_us"] - base
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="per listener and round")
    ap.add_argument("--filter-calls", type=int, default=200000)
    args = ap.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    print("in-process:")
    for k, v in bench_filter(args.filter_calls).items():
        print(f"  {k:24} {v:10.2f}")
    print("end to end (median latency, keep-alive, one client):")
    for k, v in bench_end_to_end(args.requests).items():
        print(f"  {k:24} {v:10.1f}")


if __name__ == "__main__":
    main()
