"""Downstream connection limits (Gateway ``spec.options.connectionLimit``): per client address
and in total; the connection over a limit is closed before anything is read and counted."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from dfproxy.ratelimit.connection_limit import peer_ip
from tests.helpers import wait_until
from tests.support.proxy import ProxyProcess

CONFIG = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {name: gateway-proxy, namespace: gloo-system}
spec:
  bindAddress: 127.0.0.1
  bindPort: 8080
  options:
    connectionLimit: {maxActiveConnections: 4, maxActiveConnectionsPerClient: 2}
  httpGateway:
    options:
      dynamicForwardProxy: {}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: any, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - directResponseAction: {status: 200, body: hi}
"""


def connect(p: ProxyProcess, source: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5, source_address=(source, 0))
    return s


def served(s: socket.socket) -> bool:
    """One keep-alive request on ``s``: True if answered, False if the proxy closed it."""
    try:
        s.sendall(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return False
    return data.startswith(b"HTTP/1.1 200")


def counters(p: ProxyProcess) -> dict[str, int]:
    status, body = p.admin_get("/stats?format=json&filter=downstream_cx_overflow")
    assert status == 200
    return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "name" in s}


def test_per_client_and_total_limits(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(CONFIG)
    p = proxy_factory("-c", str(path))
    opened: list[socket.socket] = []
    try:
        a1, a2 = connect(p, "127.0.0.1"), connect(p, "127.0.0.1")
        opened += [a1, a2]
        assert served(a1) and served(a2)
        a3 = connect(p, "127.0.0.1")  # the kernel accepts; the proxy closes at once
        opened.append(a3)
        assert not served(a3)
        b1 = connect(p, "127.0.0.2")  # another client still gets in
        opened.append(b1)
        assert served(b1)
        c = counters(p)
        assert c["http.gateway-proxy.downstream_cx_overflow_per_client"] == 1
        assert c["http.gateway-proxy.downstream_cx_overflow"] == 0
        b2 = connect(p, "127.0.0.2")
        opened.append(b2)
        assert served(b2)
        d1 = connect(p, "127.0.0.3")  # 4 open: the listener's total is reached
        opened.append(d1)
        assert not served(d1)
        assert counters(p)["http.gateway-proxy.downstream_cx_overflow"] == 1
        # A closed connection gives its slot back.
        a1.close()

        def again() -> bool:
            s = connect(p, "127.0.0.1")
            opened.append(s)
            return served(s)

        wait_until(again, what="the freed slot")
        assert p.running
        assert "refused a connection from 127.0.0.1: per-client limit 2 reached" in p.stderr_text()
    finally:
        for s in opened:
            s.close()


def test_peer_ip() -> None:
    assert peer_ip("127.0.0.1:5000") == "127.0.0.1"
    assert peer_ip("[::1]:5000") == "::1"
