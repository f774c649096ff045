"""The persisted DNS cache (Envoy key_value_config format): encoding, and a warm restart."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from dfproxy.dns.persistence import decode, encode, entry_value, parse_value
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess


def test_encoding_round_trip_matches_envoy_layout() -> None:
    entries = [("a.test:80", "127.0.0.1:80|30|0"), ("[::1]:8080", "[::1]:8080|5|7")]
    data = encode(entries)
    assert data.startswith(b"9\na.test:8017\n127.0.0.1:80|30|0")
    assert decode(data) == entries


def test_decode_stops_at_a_malformed_entry_keeping_what_came_before() -> None:
    good = encode([("a.test:80", "127.0.0.1:80|30|0")])
    assert decode(good + b"99\ntruncated") == [("a.test:80", "127.0.0.1:80|30|0")]
    assert decode(b"x\n") == []


def test_value_lines_carry_address_ttl_and_time() -> None:
    value = entry_value([("127.0.0.2", socket.AF_INET), ("::1", socket.AF_INET6)], 8080, 42)
    lines = value.split("\n")
    assert lines[0].startswith("127.0.0.2:8080|42|") and lines[1].startswith("[::1]:8080|42|")
    addresses, ttl = parse_value(value)
    assert addresses == [("127.0.0.2", socket.AF_INET), ("::1", socket.AF_INET6)]
    assert ttl == 42


def _stat(p: ProxyProcess, name: str) -> int:
    status, body = p.admin_get(f"/stats?filter={name}")
    assert status == 200
    m = re.search(rf"{name}: (\d+)", body.decode())
    assert m, body
    return int(m.group(1))


def test_restart_starts_warm_without_a_dns_query(
    proxy_factory, dns_server: DNSTestServer, origin: OriginServer, tmp_path: Path
) -> None:
    store = tmp_path / "dns-cache.kv"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
        "spec:\n  bindAddress: 127.0.0.1\n  bindPort: 0\n  httpGateway:\n    options:\n"
        "      dynamicForwardProxy:\n        dnsCacheConfig:\n"
        f"          keyValueStore: {{filename: {store}, flushInterval: 60s}}\n"
    )
    dns_server.set("warm.test", a=["127.0.0.1"], ttl=300)
    url = f"http://warm.test:{origin.port}/echo"
    first = proxy_factory("-c", str(cfg))
    assert first.curl(url).http_code == 200
    assert first.stop() == 0  # the shutdown flush writes the file
    assert b"warm.test:" in store.read_bytes()
    dns_server.reset_log()
    second = proxy_factory("-c", str(cfg))
    assert _stat(second, r"dns_cache\..*\.cache_load") == 1
    assert second.curl(url).http_code == 200
    assert dns_server.count("warm.test") == 0
