"""Timeouts between client, proxy and origin, end to end (Envoy semantics).

  * route timeout (VirtualService route ``options.timeout``): 504 ``upstream request timeout``,
    flag UT -- also for a request still waiting for a connection at ``maxConnections``;
  * connect timeout (``dynamicForwardProxy.connectTimeout``, dfproxy extension, default 5s):
    503 UF ``... reset reason: connection failure``, ``upstream_cx_connect_timeout``;
  * stream idle timeout (``httpConnectionManagerSettings.streamIdleTimeout``): no bytes either
    way on a stream -- a stalled response body is cut (connection closed), a request still
    waiting for its response head gets 504 ``stream timeout`` (Envoy: 504 once the request
    is complete, else 408; flag SI);
  * downstream idle timeout (``httpConnectionManagerSettings.idleTimeout``): a client
    connection without a stream is closed;
  * request headers timeout (``httpConnectionManagerSettings.requestHeadersTimeout``): a head
    that does not complete gets 408 and the connection closes;
  * upstream idle timeout (``dynamicForwardProxy.upstreamIdleTimeout``, dfproxy extension):
    an idle pooled connection to the origin is closed.

Black-holed connects use ``blackhole`` from test_dns_cache_proxy (a loopback listener whose
accept queue is full, so SYNs are dropped).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import IncompleteResponseError, RawClient
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import ProxyProcess
from tests.test_dns_cache_proxy import blackhole
from tests.upstream_helpers import (
    CONNECT_FAILURE_BODY,
    TIMEOUT_BODY,
    assert_clean,
    breaker_gauges,
    cluster_stat,
    dfp_route,
    gateway,
    get,
    held,
    log_entry,
    start_proxy,
    virtual_service,
    wait_until,
)

ProxyFactory = Callable[..., ProxyProcess]


def routes_with_timeout(timeout: str) -> dict[str, Any]:
    """``/hold/S`` -> the origin's ``/slow-headers/S`` with the default route timeout (15s);
    everything else with route ``timeout``."""
    return virtual_service(
        [
            dfp_route("/hold", {"prefixRewrite": "/slow-headers"}),
            dfp_route("/", {"timeout": timeout}),
        ]
    )


# ---------------------------------------------------------------------------- route timeout
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_route_timeout_is_504_ut(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer, loop: str
) -> None:
    p = start_proxy(proxy_factory, tmp_path, gateway(), routes_with_timeout("0.5s"), loop=loop)
    start = time.monotonic()
    r = get(p, f"http://rt.test:{origin.port}/slow-headers/5")
    elapsed = time.monotonic() - start
    assert r.status == 504, r.text
    assert r.text == TIMEOUT_BODY
    assert 0.4 <= elapsed < 2.5, f"{elapsed:.2f}s"
    assert log_entry(p, r" 504 ")["flags"] == "UT"
    # A fast answer on the same route is not affected.
    assert get(p, f"http://rt.test:{origin.port}/echo").status == 200
    assert_clean(p)


def test_request_waiting_at_the_connection_limit_times_out_with_504(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    dfp = {"circuitBreakers": {"maxConnections": 1, "trackRemaining": True}}
    p = start_proxy(proxy_factory, tmp_path, gateway(dfp), routes_with_timeout("0.5s"))
    base = f"http://wait.test:{origin.port}"
    with held(p, [base + "/hold/30"], origin=origin):
        start = time.monotonic()
        r = get(p, base + "/echo")
        elapsed = time.monotonic() - start
        assert r.status == 504, r.text
        assert r.text == TIMEOUT_BODY
        assert 0.4 <= elapsed < 2.5, f"{elapsed:.2f}s"
        assert cluster_stat(p, "upstream_cx_overflow") == 1
        assert len(origin.requests) == 1  # the waiter never reached the origin
        # It gave its pending slot back.
        g = breaker_gauges(p)
        assert (g["rq_pending_open"], g["remaining_pending"]) == (0, 1024), g
    assert log_entry(p, r" 504 ")["flags"] == "UT"
    wait_until(lambda: breaker_gauges(p)["cx_open"] == 0, what="the held connection closed")
    assert get(p, base + "/echo").status == 200
    assert_clean(p)


# ---------------------------------------------------------------------------- connect timeout
def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_connect_timeout_is_503_uf(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """LATER: ``dynamicForwardProxy.connectTimeout``."""
    p = start_proxy(proxy_factory, tmp_path, gateway({"connectTimeout": "1s"}))
    host = "127.0.0.10"
    port = _free_port(host)
    with blackhole(host, port):
        start = time.monotonic()
        r = get(p, f"http://{host}:{port}/echo")
        elapsed = time.monotonic() - start
    assert r.status == 503, r.text
    assert r.text == CONNECT_FAILURE_BODY
    assert 0.9 <= elapsed < 3.0, f"{elapsed:.2f}s"
    assert log_entry(p, r" 503 ")["flags"] == "UF"
    assert cluster_stat(p, "upstream_cx_connect_timeout") == 1
    assert_clean(p)


# ---------------------------------------------------------------------------- stream idle
def test_stream_idle_timeout_cuts_a_stalled_response_body(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """LATER: ``httpConnectionManagerSettings.streamIdleTimeout``."""
    p = start_proxy(proxy_factory, tmp_path, gateway(hcm={"streamIdleTimeout": "1s"}))
    with RawClient("127.0.0.1", p.port, timeout=10) as c:
        c.send_request("GET", f"http://si.test:{origin.port}/stall-body/20000")
        origin.wait_for_requests(1)
        start = time.monotonic()
        with pytest.raises(IncompleteResponseError) as info:
            c.recv_response()
        elapsed = time.monotonic() - start
    partial = info.value.partial
    assert partial is not None and partial.status == 200
    assert partial.body_length == 10000  # what the origin sent before stalling
    assert 0.8 <= elapsed < 3.0, f"{elapsed:.2f}s"
    # The stalled upstream connection is closed too.
    wait_until(lambda: origin.open_connections == 0, what="origin connection closed")
    assert log_entry(p, r" 200 ")["flags"] == "SI"
    assert_clean(p)


def test_stream_idle_timeout_before_the_response_is_504(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """LATER. Envoy ``onIdleTimeout``: ``stream timeout`` with flag SI, status 504 once the
    request is complete, 408 while it is not (``maybeRequestTimeoutCode``)."""
    p = start_proxy(proxy_factory, tmp_path, gateway(hcm={"streamIdleTimeout": "1s"}))
    start = time.monotonic()
    r = get(p, f"http://si.test:{origin.port}/slow-headers/5")
    elapsed = time.monotonic() - start
    assert r.status == 504, r.text
    assert r.text == "stream timeout"
    assert 0.8 <= elapsed < 3.0, f"{elapsed:.2f}s"
    assert log_entry(p, r" 504 ")["flags"] == "SI"
    # A response that keeps its stream busy is not affected.
    assert get(p, f"http://si.test:{origin.port}/bytes/100000").status == 200

    # A request whose body stalls is not complete: 408 (Envoy maybeRequestTimeoutCode).
    with RawClient("127.0.0.1", p.port, timeout=10) as c:
        c.send_request(
            "POST",
            f"http://si.test:{origin.port}/upload",
            {"Content-Length": "1000"},
        )
        c.send(b"x" * 10)
        start = time.monotonic()
        r = c.recv_response()
        elapsed = time.monotonic() - start
        assert r.status == 408, r.text
        assert r.text == "stream timeout"
        assert 0.8 <= elapsed < 3.0, f"{elapsed:.2f}s"
        assert c.is_closed_by_peer(timeout=2.0)
    assert log_entry(p, r" 408 ")["flags"] == "SI"
    assert_clean(p)


def test_stream_idle_timeout_applies_to_connect_tunnels(
    proxy_factory: ProxyFactory, tmp_path: Path, tcp_echo_server: TcpEchoServer
) -> None:
    """LATER. Envoy: a CONNECT tunnel is a stream; bytes either way keep it alive."""
    hcm = {"streamIdleTimeout": "1s", "upgrades": [{"connect": {"enabled": True}}]}
    p = start_proxy(proxy_factory, tmp_path, gateway(hcm=hcm))
    target = f"tunnel.test:{tcp_echo_server.port}"
    with RawClient("127.0.0.1", p.port) as busy, RawClient("127.0.0.1", p.port) as quiet:
        assert busy.request("CONNECT", target).status == 200
        assert quiet.request("CONNECT", target).status == 200
        opened = time.monotonic()
        for i in range(4):  # 1.6 s of traffic, never 1 s apart
            busy.send(b"ping%d" % i)
            assert busy.recv_exact(5) == b"ping%d" % i
            if i == 1:
                assert not quiet.is_closed_by_peer(timeout=0.01)
            time.sleep(0.4)
        assert quiet.is_closed_by_peer(timeout=0.01), "the idle tunnel is still open"
        assert time.monotonic() - opened < 3.0
        busy.send(b"still")
        assert busy.recv_exact(5) == b"still"
    assert_clean(p)


# ---------------------------------------------------------------------------- downstream idle
def test_downstream_idle_timeout_closes_idle_client_connections_only(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """LATER: ``httpConnectionManagerSettings.idleTimeout``."""
    p = start_proxy(proxy_factory, tmp_path, gateway(hcm={"idleTimeout": "1s"}))
    url = f"http://idle.test:{origin.port}"
    with (
        RawClient("127.0.0.1", p.port) as silent,
        RawClient("127.0.0.1", p.port) as after_request,
        RawClient("127.0.0.1", p.port) as busy,
    ):
        opened = time.monotonic()
        r = after_request.request("GET", url + "/echo")
        assert r.status == 200 and r.keep_alive
        answered = time.monotonic()
        busy.send_request("GET", url + "/slow-headers/1.6")
        time.sleep(0.4)
        assert not silent.is_closed_by_peer(timeout=0.01)
        assert not after_request.is_closed_by_peer(timeout=0.01)

        assert after_request.is_closed_by_peer(timeout=3.0)
        closed_after = time.monotonic() - answered
        assert 0.8 <= closed_after < 3.0, f"{closed_after:.2f}s"
        assert silent.is_closed_by_peer(timeout=3.0)
        assert time.monotonic() - opened < 3.5
        # A connection with a stream in progress is not idle: its slow answer arrives.
        resp = busy.recv_response()
        assert resp.status == 200, resp.text
    assert_clean(p)


# ---------------------------------------------------------------------------- request headers
def test_request_headers_timeout_is_408_and_close(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """LATER: ``httpConnectionManagerSettings.requestHeadersTimeout``."""
    p = start_proxy(proxy_factory, tmp_path, gateway(hcm={"requestHeadersTimeout": "1s"}))
    authority = f"rh.test:{origin.port}"
    with RawClient("127.0.0.1", p.port, timeout=10) as c:
        start = time.monotonic()
        c.send(f"GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n".encode())
        r = c.recv_response()
        elapsed = time.monotonic() - start
        assert r.status == 408, r.text
        assert 0.8 <= elapsed < 3.0, f"{elapsed:.2f}s"
        assert c.is_closed_by_peer(timeout=2.0)
    assert origin.requests == []
    # A complete head in time is served.
    assert get(p, f"http://{authority}/echo").status == 200
    assert_clean(p)


# ---------------------------------------------------------------------------- upstream idle
def test_upstream_idle_timeout_closes_pooled_connections(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """LATER: ``dynamicForwardProxy.upstreamIdleTimeout``."""
    p = start_proxy(proxy_factory, tmp_path, gateway({"upstreamIdleTimeout": "1s"}))
    url = f"http://ui.test:{origin.port}/echo"
    assert get(p, url).json()["connection_id"] == 1
    assert get(p, url).json()["connection_id"] == 1  # pooled while not idle for long
    idle_from = time.monotonic()
    assert origin.open_connections == 1
    wait_until(lambda: origin.open_connections == 0, timeout=4.0, what="idle connection closed")
    closed_after = time.monotonic() - idle_from
    assert 0.7 <= closed_after < 3.5, f"{closed_after:.2f}s"
    assert cluster_stat(p, "upstream_cx_active") == 0
    assert get(p, url).json()["connection_id"] == 2
    assert_clean(p)
