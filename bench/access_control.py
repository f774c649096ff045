"""Cost of access control per request, in-process (no sockets, no event-loop I/O).

Two measurements:
1. The whole request path of bench/hotpath.py (listener, codec, stream, filters, DFP, pool,
   upstream codec on in-memory transports) with and without access policies on the route:
   plain DFP; the embedded default's destination rules (with --allow-destination for the
   loopback origin); the same with a source rule and a Gloo RBAC policy too. The
   difference is what the checks add to a request.
2. The decisions alone: the destination check after DNS for a host already checked (the
   pinned host is reused), the full rule walk for a new address list (a DNS answer not
   seen before), the check before DNS for a name, and the source + RBAC check.

    .venv/bin/python bench/access_control.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hotpath  # noqa: E402

from dfproxy.access import cli as access_cli  # noqa: E402
from dfproxy.access import compile as comp  # noqa: E402
from dfproxy.access.addresses import CidrSet  # noqa: E402
from dfproxy.access.filter import AccessStats, DestinationFilter, SourceFilter  # noqa: E402
from dfproxy.access.policy import NAME  # noqa: E402
from dfproxy.access.rules import (  # noqa: E402
    AccessPolicy,
    RbacPolicies,
    RbacPolicy,
    SourceRule,
    SourceRules,
)
from dfproxy.config.model import ProxyConfig, default_config  # noqa: E402
from dfproxy.dns.cache import DnsHostInfo  # noqa: E402
from dfproxy.http.authority import Authority  # noqa: E402
from dfproxy.runtime import Runtime  # noqa: E402
from dfproxy.stats import StatsStore  # noqa: E402


def _source_and_rbac() -> tuple[SourceRules, RbacPolicies]:
    source = SourceRules(
        [SourceRule("lab", True, client_cidrs=CidrSet(["127.0.0.0/8"]))],
        SourceRule("default", False),
    )
    rbac = RbacPolicies([RbacPolicy("readers", [], methods=frozenset({b"GET"}))])
    return source, rbac


def configs() -> dict[str, ProxyConfig]:
    plain = default_config()
    embedded = default_config()
    access_cli.apply(embedded, True, ["127.0.0.0/8"], [])
    full = default_config()
    access_cli.apply(full, True, ["127.0.0.0/8"], [])
    source, rbac = _source_and_rbac()
    for route in full.listeners[0].virtual_hosts[0].routes:
        p = route.policies[NAME]
        route.policies[NAME] = AccessPolicy(source, rbac, p.destination)
    return {
        "plain DFP": plain,
        "embedded default rules": embedded,
        "source + RBAC + destination": full,
    }


def pipeline(
    config: ProxyConfig, loop: asyncio.AbstractEventLoop
) -> tuple[Callable[[], None], Any]:
    """One request through the real objects (hotpath.py's set-up): ``one()`` and a check."""
    runtime = Runtime(config, loop, StatsStore(), None)
    down, down_t, up, _, pending = hotpath.wire(runtime)
    statuses: set[bytes] = set()
    down_t.on_write = lambda data: statuses.add(data[9:12]) if data[:5] == b"HTTP/" else None

    def one() -> None:
        down.data_received(hotpath.REQUEST)
        up.data_received(pending.pop())

    return one, (runtime, statuses)


class _Conn:
    peer = "127.0.0.1:50000"


class _Stream:
    def __init__(self, host: DnsHostInfo) -> None:
        self.conn = _Conn()
        self.filter_state: dict[str, object] | None = None
        self.authority = Authority("api.example.com", 443, False)
        self.is_connect = True
        self.method = b"GET"
        self.path = b"/"
        self.host = host
        self.original = host

    def path_only(self) -> str:
        return "/"


def decisions() -> dict[str, Callable[[], None]]:
    stats = AccessStats(StatsStore(), "bench.rbac.")
    rules = comp.embedded_default().destination
    assert rules is not None
    dest = DestinationFilter(rules, stats, pre_dns=True)
    host = DnsHostInfo("api.example.com:443", 443)
    host.addresses = [("192.0.2.10", 2), ("2001:db8::10", 10)]  # documentation ranges
    stream = _Stream(host)

    def after_dns_hit() -> None:
        stream.host = host
        dest.on_upstream_host(stream)  # type: ignore[arg-type]

    def after_dns_new_answer() -> None:
        stream.host = host
        host.addresses = list(host.addresses)  # a new list: a DNS answer not seen before
        dest.on_upstream_host(stream)  # type: ignore[arg-type]

    def before_dns() -> None:
        dest.on_request_headers(stream)  # type: ignore[arg-type]

    source, rbac = _source_and_rbac()
    src = SourceFilter(source, rbac, stats, count_allowed=True)

    def source_rbac() -> None:
        src.on_request_headers(stream)  # type: ignore[arg-type]

    return {
        "destination after DNS, host seen before": after_dns_hit,
        "destination after DNS, new answer (2 addresses, full rule walk)": after_dns_new_answer,
        "destination before DNS (name, CONNECT :443)": before_dns,
        "source CIDR + Gloo RBAC": source_rbac,
    }


# The machine is shared: the configurations run in small interleaved batches, and each
# figure is its best batch (the least disturbed), as timeit recommends.
BATCH = 2000


def best_batches(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(max(1, n // BATCH)):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(BATCH):
                fn()
            us = (time.perf_counter() - t0) / BATCH * 1e6
            best[label] = min(us, best.get(label, us))
    return best


async def main_async(n: int) -> None:
    loop = asyncio.get_running_loop()
    made = {label: pipeline(config, loop) for label, config in configs().items()}
    fns = {label: one for label, (one, _) in made.items()}
    for fn in fns.values():
        for _ in range(BATCH):
            fn()
    gc.collect()
    best = best_batches(fns, n)
    print(f"whole request path (best {BATCH:,}-request batch of {n:,}, µs per request):")
    base = best["plain DFP"]
    for label, us in best.items():
        extra = "" if label == "plain DFP" else f"  (+{us - base:.2f} µs)"
        print(f"  {label:32s} {us:6.2f}{extra}")
    for _, (runtime, statuses) in made.values():
        assert statuses == {b"200"}, statuses  # every request passed the checks
        runtime.close()
    calls = best_batches(decisions(), n)
    print(f"decisions alone (best {BATCH:,}-call batch of {n:,}, µs per call):")
    for label, us in calls.items():
        print(f"  {label:66s} {us:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    uvloop.run(main_async(args.requests))


if __name__ == "__main__":
    main()
