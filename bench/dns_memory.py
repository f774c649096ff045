"""Memory per cached host in the DNS cache, with N hosts (default 100,000; maxHosts raised).

Builds the real DnsCache (c-ares resolver, refresh timers) on uvloop and fills it through the
persisted-cache path (load_from_store), which creates the same entry a successful resolution
does: a DnsHostInfo with its address list and its refresh timer. Reports bytes per host from
tracemalloc (Python allocations) and from the process RSS.

    .venv/bin/python bench/dns_memory.py [--hosts 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import tracemalloc

import uvloop

from dfproxy.dns.cache import DnsCache, DnsCacheConfig
from dfproxy.dns.resolver import Resolver, ResolverOptions
from dfproxy.stats import StatsStore


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fill(cache: DnsCache, n: int) -> None:
    for i in range(n):
        host = f"host-{i}.tenant-{i % 97}.bench.test"
        ip = f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        cache.load_from_store(f"{host}:80", host, 80, [(ip, int(socket.AF_INET))], 300)
    assert len(cache.hosts) == n


async def measure(n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    resolver = Resolver(ResolverOptions(servers=("127.0.0.1:9",)), loop)
    config = DnsCacheConfig(max_hosts=n, host_ttl=3600.0)
    # Pass 1: RSS growth, without tracemalloc (whose bookkeeping would inflate it).
    cache = DnsCache(config, resolver, StatsStore(), loop)
    gc.collect()
    rss0 = rss_bytes()
    fill(cache, n)
    gc.collect()
    rss1 = rss_bytes()
    cache.close()
    del cache
    gc.collect()
    # Pass 2: Python allocations, with tracemalloc.
    cache = DnsCache(config, resolver, StatsStore(), loop)
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    fill(cache, n)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    traced = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    tracemalloc.stop()
    cache.close()
    resolver.close()
    return {
        "hosts": n,
        "python_bytes_per_host": round(traced / n, 1),
        "rss_bytes_per_host": round((rss1 - rss0) / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=100_000)
    args = parser.parse_args()
    result = uvloop.run(measure(args.hosts))
    print(json.dumps(result))
    print(
        f"DNS cache, {result['hosts']:,} hosts: {result['python_bytes_per_host']:.0f} B/host "
        f"(Python allocations), {result['rss_bytes_per_host']:.0f} B/host (process RSS growth)"
    )


if __name__ == "__main__":
    main()
