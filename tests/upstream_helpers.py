"""Helpers shared by the upstream-protection modules (circuit breakers, timeouts, retries, TLS
origination): Gloo config documents, cluster stats, requests held open on raw sockets.

Config documents are built as dicts and written as JSON (a YAML subset), one document per
``---``, so a test states exactly the fields it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dfproxy.cluster import DfpCluster
from dfproxy.dns.cache import DnsCache, DnsCacheConfig
from dfproxy.dns.resolver import Resolver, ResolverOptions
from dfproxy.stats import StatsStore
from dfproxy.upstream.circuit_breaker import Thresholds
from dfproxy.upstream.pool import UpstreamPool
from tests.helpers import admin_stats, assert_no_traceback, parse_log_line, wait_for_log_line
from tests.helpers import wait_until as wait_until  # re-exported for the upstream tests
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

CLUSTER_RX = r"cluster\.solo_io_generated_dfp:\d+\."
OVERFLOW_BODY = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
CONNECT_FAILURE_BODY = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers."
TIMEOUT_BODY = "upstream request timeout"


# ---------------------------------------------------------------------------- in process
def dfp_cluster(
    loop: asyncio.AbstractEventLoop,
    dns: DNSTestServer,
    name: str = "test",
    stats: StatsStore | None = None,
) -> DfpCluster:
    """A real DFP cluster (c-ares on the test DNS server, a plain-TCP pool) for tests that
    drive the proxy's own client in process; ``close()`` it at the end."""
    if stats is None:
        stats = StatsStore()
    resolver = Resolver(ResolverOptions(servers=(dns.address,)), loop)
    cache = DnsCache(DnsCacheConfig(name=name), resolver, stats, loop)
    pool = UpstreamPool(
        loop,
        stats,
        name,
        connect_timeout=2.0,
        idle_timeout=60.0,
        tls=None,
        breakers=Thresholds(16, 16, 16, 3, False),
    )
    return DfpCluster(name, cache, pool, resolver=resolver)


# ---------------------------------------------------------------------------- config
def gateway(dfp: dict[str, Any] | None = None, hcm: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Gateway on 127.0.0.1:0 with ``dynamicForwardProxy: dfp`` (``{}`` by default) and,
    if given, ``httpConnectionManagerSettings: hcm``."""
    options: dict[str, Any] = {"dynamicForwardProxy": dfp or {}}
    if hcm is not None:
        options["httpConnectionManagerSettings"] = hcm
    return {
        "apiVersion": "gateway.solo.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "gloo-system"},
        "spec": {
            "bindAddress": "127.0.0.1",
            "bindPort": 0,
            "httpGateway": {"options": options},
        },
    }


def dfp_route(
    prefix: str = "/", options: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    """A route through the DFP for ``prefix`` with route ``options``."""
    route: dict[str, Any] = {
        "matchers": [{"prefix": prefix}],
        "routeAction": {"dynamicForwardProxy": {}},
    }
    if options:
        route["options"] = options
    route.update(more)
    return route


def virtual_service(routes: Sequence[dict[str, Any]], name: str = "vs") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.solo.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "gloo-system"},
        "spec": {"virtualHost": {"domains": ["*"], "routes": list(routes)}},
    }


def write_config(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text("---\n".join(json.dumps(d, indent=1) + "\n" for d in docs))
    return path


def start_proxy(
    proxy_factory: Callable[..., ProxyProcess],
    tmp_path: Path,
    *docs: dict[str, Any],
    loop: str = "uvloop",
) -> ProxyProcess:
    """A proxy running the given Gloo documents (one file per proxy in ``tmp_path``)."""
    n = len(list(tmp_path.glob("config*.yaml"))) + 1
    path = write_config(tmp_path / f"config{n}.yaml", *docs)
    return proxy_factory("-c", str(path), loop=loop)


# ---------------------------------------------------------------------------- stats
def stats(p: ProxyProcess, regex: str) -> dict[str, int]:
    """``/stats?filter=regex`` (text format) as {name: value}."""
    return admin_stats(p, regex)


def cluster_stats(p: ProxyProcess, suffix_regex: str = ".*") -> dict[str, int]:
    """The DFP cluster's stats whose name after ``cluster.<name>.`` matches ``suffix_regex``,
    keyed by that suffix. There is exactly one DFP cluster in these configs."""
    found = stats(p, f"^{CLUSTER_RX}(?:{suffix_regex})$")
    names = {k.split(".", 2)[1] for k in found}
    assert len(names) <= 1, f"more than one DFP cluster: {names}"
    return {re.sub(rf"^{CLUSTER_RX}", "", k): v for k, v in found.items()}


def cluster_stat(p: ProxyProcess, suffix: str) -> int:
    """One stat of the DFP cluster (``upstream_rq_retry``, ``ssl.fail_verify_san``...);
    a counter that was never created reads 0."""
    return cluster_stats(p, re.escape(suffix)).get(suffix, 0)


def breaker_gauges(p: ProxyProcess) -> dict[str, int]:
    """``circuit_breakers.default.*`` of the DFP cluster, keyed by the last name part."""
    raw = cluster_stats(p, r"circuit_breakers\.default\.[a-z_]+")
    return {k.rsplit(".", 1)[1]: v for k, v in raw.items()}


# ---------------------------------------------------------------------------- waiting
def log_entry(p: ProxyProcess, pattern: str, timeout: float = 5.0) -> dict[str, str]:
    """The first Envoy-format access-log entry whose line matches ``pattern``."""
    return parse_log_line(wait_for_log_line(p, pattern, timeout))


def assert_clean(p: ProxyProcess) -> None:
    """The proxy is alive and never logged a traceback."""
    assert_no_traceback(p)
    assert p.running, f"proxy exited with {p.poll()}\n{p.stderr_tail(60)}"


# ---------------------------------------------------------------------------- requests
def get(p: ProxyProcess, url: str, timeout: float = 10.0, **kwargs: Any) -> RawResponse:
    """One request through the proxy on its own connection."""
    with RawClient("127.0.0.1", p.port, timeout=timeout) as c:
        return c.request(kwargs.pop("method", "GET"), url, **kwargs)


@contextlib.contextmanager
def held(
    p: ProxyProcess,
    urls: Sequence[str],
    timeout: float = 10.0,
    origin: OriginServer | None = None,
) -> Iterator[list[RawClient]]:
    """Send one request per URL, each on its own connection, without reading the answers;
    every client is closed on exit (the proxy then gives back what they held). With
    ``origin``, wait for it to receive each request before sending the next (so a request
    is not still pending on its connection when the next arrives)."""
    clients: list[RawClient] = []
    seen = len(origin.requests) if origin is not None else 0
    try:
        for url in urls:
            c = RawClient("127.0.0.1", p.port, timeout=timeout)
            clients.append(c)
            c.send_request("GET", url)
            if origin is not None:
                seen += 1
                origin.wait_for_requests(seen)
        yield clients
    finally:
        for c in clients:
            c.close()
