"""Cluster circuit breakers on the DFP cluster, end to end (reference §4.6, §5.3, §8.5).

The limits apply to the generated DFP cluster as a whole (every host counts against them):
  * over ``maxRequests``: 503 ``... reset reason: overflow``, flag UO,
    ``upstream_rq_pending_overflow`` (Envoy counts a max_requests overflow there too);
  * at ``maxConnections``: no new connection (``upstream_cx_overflow``); the request waits as
    pending, and an idle connection to another address is closed to make room;
  * past ``maxPendingRequests``: 503 UO, ``upstream_rq_pending_overflow``;
  * gauges ``circuit_breakers.default.{cx_open, cx_pool_open, rq_pending_open, rq_open,
    rq_retry_open}`` and, with ``trackRemaining``, ``remaining_{cx, pending, rq, retries}``
    (absent without it: Envoy's null gauges).
Each breaker is tripped, then the load goes away and the gauges come back.

Requests are held open with the origin's ``/slow-headers/30`` on raw sockets; closing the
client gives back what it held (the origin's waiting threads end when it stops).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support.clients import RawClient
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess
from tests.upstream_helpers import (
    OVERFLOW_BODY,
    assert_clean,
    breaker_gauges,
    cluster_stat,
    gateway,
    get,
    held,
    log_entry,
    start_proxy,
    wait_until,
)

ProxyFactory = Callable[..., ProxyProcess]

HOLD = "/slow-headers/30"
OPEN_GAUGES = ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open")
REMAINING_GAUGES = ("remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries")


def breakers(**cb: object) -> dict[str, object]:
    return {"circuitBreakers": cb}


def assert_overflow(p: ProxyProcess, url: str) -> None:
    r = get(p, url)
    assert r.status == 503, (r.status, r.text)
    assert r.text == OVERFLOW_BODY
    path = url.split("/", 3)[3]
    entry = log_entry(p, rf'"GET \S*/{path} HTTP/1.1" 503 ')
    assert entry["flags"] == "UO", entry


def subset(gauges: dict[str, int], names: tuple[str, ...]) -> dict[str, int | None]:
    return {n: gauges.get(n) for n in names}


# ---------------------------------------------------------------------------- max_requests
def test_max_requests_overflow_is_cluster_wide_and_recovers(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    p = start_proxy(proxy_factory, tmp_path, gateway(breakers(maxRequests=3)))
    at_rest = breaker_gauges(p)
    assert subset(at_rest, OPEN_GAUGES) == dict.fromkeys(OPEN_GAUGES, 0)
    # Without trackRemaining the remaining_* gauges are null gauges: not published at all.
    assert not [n for n in at_rest if n.startswith("remaining_")], at_rest

    # Three different hosts: the limit belongs to the cluster, not to a host.
    urls = [f"http://h{i}.test:{origin.port}{HOLD}" for i in range(3)]
    with held(p, urls):
        origin.wait_for_requests(3)
        g = breaker_gauges(p)
        assert (g["rq_open"], g["cx_open"], g["rq_pending_open"]) == (1, 0, 0), g
        assert_overflow(p, f"http://h3.test:{origin.port}/echo/over-max-requests")
        assert cluster_stat(p, "upstream_rq_pending_overflow") == 1
        assert len(origin.requests) == 3  # the refused request never reached the origin

    wait_until(lambda: breaker_gauges(p)["rq_open"] == 0, what="rq_open back to 0")
    assert subset(breaker_gauges(p), OPEN_GAUGES) == dict.fromkeys(OPEN_GAUGES, 0)
    for i in range(4):  # all four slots usable again
        r = get(p, f"http://h{i}.test:{origin.port}/echo")
        assert r.status == 200, r.text
    assert cluster_stat(p, "upstream_rq_pending_overflow") == 1
    assert_clean(p)


# ---------------------------------------------------------------------------- connections
def test_max_connections_queues_then_pending_overflows_then_recovers(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    cb = breakers(
        maxConnections=2, maxPendingRequests=1, maxRequests=100, maxRetries=1, trackRemaining=True
    )
    p = start_proxy(proxy_factory, tmp_path, gateway(cb))
    full = {"remaining_cx": 2, "remaining_pending": 1, "remaining_rq": 100, "remaining_retries": 1}
    at_rest = breaker_gauges(p)
    assert subset(at_rest, OPEN_GAUGES) == dict.fromkeys(OPEN_GAUGES, 0)
    assert subset(at_rest, REMAINING_GAUGES) == full

    base = f"http://cx.test:{origin.port}"
    with held(p, [base + HOLD, base + HOLD], origin=origin) as holders:
        origin.wait_for_requests(2)
        assert origin.connections_accepted == 2
        g = breaker_gauges(p)
        assert (g["cx_open"], g["remaining_cx"], g["rq_pending_open"]) == (1, 0, 0), g
        assert (g["rq_open"], g["remaining_rq"]) == (0, 98), g

        # A third request waits for a connection slot instead of opening a connection.
        with RawClient("127.0.0.1", p.port) as waiter:
            waiter.send_request("GET", base + "/echo")
            wait_until(
                lambda: cluster_stat(p, "upstream_cx_overflow") == 1, what="upstream_cx_overflow"
            )
            g = breaker_gauges(p)
            assert (g["rq_pending_open"], g["remaining_pending"]) == (1, 0), g
            assert g["remaining_rq"] == 97, g
            time.sleep(0.2)
            assert origin.connections_accepted == 2 and len(origin.requests) == 2

            # A fourth finds the pending queue full.
            assert_overflow(p, f"http://other.test:{origin.port}/echo/over-pending")
            assert cluster_stat(p, "upstream_rq_pending_overflow") == 1

            # One holder goes away: its connection closes and the waiter gets the slot.
            holders[0].close()
            r = waiter.recv_response()
            assert r.status == 200, r.text
            assert r.json()["connection_id"] == 3
        assert len(origin.requests) == 3

    def at_rest_again() -> bool:
        # The waiter's connection stays idle in the pool and still holds a connection slot.
        g = breaker_gauges(p)
        idle = cluster_stat(p, "upstream_cx_active")
        return subset(g, OPEN_GAUGES) == dict.fromkeys(OPEN_GAUGES, 0) and (
            subset(g, REMAINING_GAUGES) == {**full, "remaining_cx": 2 - idle}
        )

    wait_until(at_rest_again, what=f"gauges back at rest: {breaker_gauges(p)}")
    assert cluster_stat(p, "upstream_cx_active") == 1  # only the waiter's, idle
    for _ in range(3):
        assert get(p, base + "/echo").status == 200
    assert cluster_stat(p, "upstream_rq_pending_overflow") == 1
    assert_clean(p)


def test_idle_connection_to_another_address_is_closed_to_make_room(
    proxy_factory: ProxyFactory,
    tmp_path: Path,
    origin_factory: Callable[..., OriginServer],
) -> None:
    held_origin, other = origin_factory(), origin_factory()
    p = start_proxy(proxy_factory, tmp_path, gateway(breakers(maxConnections=2)))
    # An idle keep-alive connection to the other origin takes one of the two slots...
    assert get(p, f"http://other.test:{other.port}/echo").status == 200
    wait_until(lambda: other.open_connections == 1, what="the idle connection")
    # ...and is reused while there is room.
    assert get(p, f"http://other.test:{other.port}/echo").json()["connection_id"] == 1

    base = f"http://busy.test:{held_origin.port}"
    with held(p, [base + HOLD]):
        held_origin.wait_for_requests(1)
        assert breaker_gauges(p)["cx_open"] == 1
        start = time.monotonic()
        r = get(p, base + "/echo")
        assert r.status == 200, r.text
        assert time.monotonic() - start < 2.0
        assert r.json()["connection_id"] == 2  # a new connection, in the freed slot
        wait_until(lambda: other.open_connections == 0, what="the idle connection closed")
        assert cluster_stat(p, "upstream_cx_overflow") == 1
    # The other origin is served again afterwards, on a new connection.
    r = get(p, f"http://other.test:{other.port}/echo")
    assert r.status == 200 and r.json()["connection_id"] == 2
    assert_clean(p)


def test_sequential_requests_reuse_the_single_allowed_connection(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    p = start_proxy(
        proxy_factory, tmp_path, gateway(breakers(maxConnections=1, trackRemaining=True))
    )
    for _ in range(5):
        r = get(p, f"http://reuse.test:{origin.port}/echo")
        assert r.status == 200, r.text
        assert r.json()["connection_id"] == 1
    assert cluster_stat(p, "upstream_cx_overflow") == 0
    g = breaker_gauges(p)
    # The idle connection still holds the only slot; nothing is pending.
    assert (g["cx_open"], g["remaining_cx"], g["rq_pending_open"]) == (1, 0, 0), g
    assert_clean(p)


def test_max_pending_zero_refuses_every_request_that_needs_a_connection(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """Envoy: a request is pending while its connection opens, so with maxPendingRequests 0
    a request that finds no ready connection overflows (even with connection slots free)."""
    p = start_proxy(proxy_factory, tmp_path, gateway(breakers(maxPendingRequests=0)))
    assert_overflow(p, f"http://zero.test:{origin.port}/echo/no-pending-slot")
    assert cluster_stat(p, "upstream_rq_pending_overflow") == 1
    assert cluster_stat(p, "upstream_cx_total") == 0
    assert origin.connections_accepted == 0
    assert_clean(p)
