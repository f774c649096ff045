"""Route retries through the DFP cluster, end to end (Envoy retry policy, Gloo route
``options.retries``; reference §5.3 for ``maxRetries``).

  * ``retryOn``: ``5xx`` (any 5xx and every reset), ``gateway-error`` (502/503/504), ``reset``,
    ``connect-failure``, ``retriable-4xx`` (409); ``numRetries`` further attempts at most;
  * stats ``cluster.<name>.upstream_rq_retry``, ``upstream_rq_retry_success``,
    ``upstream_rq_retry_overflow`` (the ``maxRetries`` breaker);
  * a request body is replayed on a retry only while it fits the 64 KiB replay buffer;
  * ``perTryTimeout`` ends one attempt; the last one gives 504 ``upstream request timeout``.

Most tests share one proxy (stats are compared as deltas); each test uses its own paths, so
its origin requests and access-log lines are its own.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import check_alive, module_dns_server, module_proxy, serving
from tests.support.clients import IncompleteResponseError, RawClient
from tests.support.origin import OriginServer, SeenRequest, _Close
from tests.support.proxy import ProxyProcess
from tests.upstream_helpers import (
    CONNECT_FAILURE_BODY,
    TIMEOUT_BODY,
    assert_clean,
    breaker_gauges,
    cluster_stat,
    dfp_route,
    gateway,
    get,
    log_entry,
    start_proxy,
    virtual_service,
    wait_until,
    write_config,
)

ProxyFactory = Callable[..., ProxyProcess]

RETRY_ON = "5xx,reset,connect-failure,gateway-error,retriable-4xx"
BACKOFF = {"baseInterval": "0.01s", "maxInterval": "0.05s"}
RESET_BODY = (
    "upstream connect error or disconnect/reset before headers. "
    "reset reason: connection termination"
)
KiB = 1024


def retries(retry_on: str = RETRY_ON, num: int = 2, per_try: str = "1s") -> dict[str, Any]:
    return {
        "retries": {
            "retryOn": retry_on,
            "numRetries": num,
            "perTryTimeout": per_try,
            "retryBackOff": BACKOFF,
        }
    }


class FlakyOrigin(OriginServer):
    """An origin that fails the first attempts of each ``/flaky/<id>`` path.

    ``/flaky/<id>?fail=reset|503&times=N&slow=S``: the first N requests for that path are
    reset before the response (``reset``) or answered 503; later ones wait S seconds (0 by
    default), then get 200 with JSON ``{attempt, length, sha256}`` of the request body.
    Other paths behave as OriginServer."""

    thread_name = "flaky-origin"

    def __init__(self) -> None:
        super().__init__()
        self.attempts: dict[str, int] = {}

    def _respond(self, conn: socket.socket, req: SeenRequest) -> None:
        if not req.path.startswith("/flaky/"):
            super()._respond(conn, req)
            return
        with self._lock:
            n = self.attempts.get(req.path, 0)
            self.attempts[req.path] = n + 1
        if n < int(req.query.get("times", "1")):
            if req.query.get("fail") == "reset":
                self.close_connection(conn, reset=True)
                raise _Close
            self._simple(conn, req, 503, b"flaky\n", close=False)
            return
        if self._stopping.wait(float(req.query.get("slow", "0"))):
            raise _Close
        body = {"attempt": n + 1, "length": req.body_length, "sha256": req.body_sha256}
        self._simple(conn, req, 200, json.dumps(body).encode(), close=False)

    def attempts_for(self, path: str) -> int:
        with self._lock:
            return self.attempts.get(path, 0)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shared_origin() -> Iterator[FlakyOrigin]:
    with serving(FlakyOrigin()) as server:
        yield server


@pytest.fixture(scope="module")
def retry_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """``/ptt/S`` -> ``/slow-headers/S`` with numRetries 1 and perTryTimeout 0.5s; ``/gto/S``
    the same with route timeout 1s, numRetries 5, perTryTimeout 0.4s; everything else retried
    twice on every retryOn condition (perTryTimeout 1s)."""
    path = tmp_path_factory.mktemp("retries") / "retries.yaml"
    write_config(
        path,
        gateway({"circuitBreakers": {"trackRemaining": True}}),
        virtual_service(
            [
                dfp_route(
                    "/ptt", {"prefixRewrite": "/slow-headers", **retries(num=1, per_try="0.5s")}
                ),
                dfp_route(
                    "/gto",
                    {
                        "prefixRewrite": "/slow-headers",
                        "timeout": "1s",
                        **retries(num=5, per_try="0.4s"),
                    },
                ),
                dfp_route("/", retries()),
            ]
        ),
    )
    with (
        module_dns_server() as dns,
        module_proxy(tmp_path_factory, dns, "uvloop", "-c", str(path)) as p,
    ):
        yield p


@pytest.fixture
def proxy(retry_proxy: ProxyProcess, shared_origin: FlakyOrigin) -> Iterator[ProxyProcess]:
    yield retry_proxy
    check_alive(retry_proxy)
    assert_clean(retry_proxy)


class Counters:
    """Retry-related cluster counters, as deltas since construction."""

    NAMES = (
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_cx_connect_fail",
    )

    def __init__(self, p: ProxyProcess) -> None:
        self.p = p
        self.start = self._read()

    def _read(self) -> dict[str, int]:
        return {n: cluster_stat(self.p, n) for n in self.NAMES}

    def delta(self) -> dict[str, int]:
        now = self._read()
        return {n: now[n] - self.start[n] for n in self.NAMES}


def attempts(origin: OriginServer, path: str, settle: float = 0.3) -> list[SeenRequest]:
    """The origin's requests for ``path`` (waiting ``settle`` for a late extra attempt)."""
    time.sleep(settle)
    return [r for r in origin.requests if r.path == path]


def unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------- retried
def test_reset_before_headers_is_retried_then_503(
    proxy: ProxyProcess, shared_origin: FlakyOrigin
) -> None:
    counters = Counters(proxy)
    shared_origin.reset_log()
    r = get(proxy, f"http://reset.test:{shared_origin.port}/reset-before-headers")
    assert r.status == 503, r.text
    assert r.text == RESET_BODY
    assert len(attempts(shared_origin, "/reset-before-headers")) == 3
    assert counters.delta() == {
        "upstream_rq_retry": 2,
        "upstream_rq_retry_success": 0,
        "upstream_rq_retry_overflow": 0,
        "upstream_cx_connect_fail": 0,
    }
    g = breaker_gauges(proxy)
    assert (g["rq_retry_open"], g["remaining_retries"]) == (0, 3), g


def test_503_is_retried_and_logged_once(proxy: ProxyProcess, shared_origin: FlakyOrigin) -> None:
    counters = Counters(proxy)
    tag = uuid.uuid4().hex[:8]
    r = get(proxy, f"http://s503.test:{shared_origin.port}/status/503?t={tag}")
    assert r.status == 503
    assert r.text == "status 503\n"  # the origin's last answer, passed through
    assert len([q for q in shared_origin.requests if q.target.endswith(tag)]) == 3
    delta = counters.delta()
    assert (delta["upstream_rq_retry"], delta["upstream_rq_retry_success"]) == (2, 0), delta
    # One access-log line for the downstream request, whatever the number of attempts.
    log_entry(proxy, rf"t={tag}")
    assert len([ln for ln in proxy.access_log_lines() if f"t={tag}" in ln]) == 1


@pytest.mark.parametrize(
    ("status", "expected_attempts"),
    [(500, 3), (502, 3), (504, 3), (409, 3), (404, 1), (429, 1), (200, 1)],
)
def test_which_statuses_are_retried(
    proxy: ProxyProcess, shared_origin: FlakyOrigin, status: int, expected_attempts: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    r = get(proxy, f"http://codes.test:{shared_origin.port}/status/{status}?t={tag}")
    assert r.status == status
    time.sleep(0.15)  # a wrong extra attempt would come within the 50 ms maximum backoff
    assert len([q for q in shared_origin.requests if q.target.endswith(tag)]) == expected_attempts


@pytest.mark.parametrize("fail", ["reset", "503"])
def test_failed_first_attempt_then_success_is_200(
    proxy: ProxyProcess, shared_origin: FlakyOrigin, fail: str
) -> None:
    counters = Counters(proxy)
    path = unique("/flaky")
    r = get(proxy, f"http://flaky.test:{shared_origin.port}{path}?fail={fail}&times=1")
    assert r.status == 200, r.text
    assert r.json()["attempt"] == 2
    assert len(attempts(shared_origin, path)) == 2
    delta = counters.delta()
    assert (delta["upstream_rq_retry"], delta["upstream_rq_retry_success"]) == (1, 1), delta


def test_small_post_body_is_replayed_on_retry(
    proxy: ProxyProcess, shared_origin: FlakyOrigin
) -> None:
    body = bytes(range(256)) * 40  # 10 KiB: fits the replay buffer
    path = unique("/flaky")
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request(
            "POST", f"http://post.test:{shared_origin.port}{path}?fail=reset&times=2", body=body
        )
    assert r.status == 200, r.text
    got = r.json()
    assert got == {"attempt": 3, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    seen = attempts(shared_origin, path)
    assert [q.body_length for q in seen] == [len(body)] * 3
    assert {q.body_sha256 for q in seen} == {hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("host", ["dns-miss", "ip-literal"])
def test_post_body_larger_than_the_replay_buffer_is_not_retried(
    proxy: ProxyProcess, shared_origin: FlakyOrigin, host: str
) -> None:
    """Both ways a body reaches the proxy: while the name is still resolving (the whole body
    is buffered before the request is forwarded), and streamed after it (an IP literal)."""
    counters = Counters(proxy)
    shared_origin.reset_log()
    name = f"big-{uuid.uuid4().hex[:8]}.test" if host == "dns-miss" else "127.0.0.1"
    body = b"z" * (200 * KiB)
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("POST", f"http://{name}:{shared_origin.port}/reset-before-headers", body=body)
    assert r.status == 503, r.text
    seen = attempts(shared_origin, "/reset-before-headers", settle=0.5)
    assert len(seen) == 1
    assert seen[0].body_length == len(body)
    assert counters.delta()["upstream_rq_retry"] == 0


def test_connect_failure_is_retried(proxy: ProxyProcess) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counters = Counters(proxy)
    r = get(proxy, f"http://127.0.0.1:{port}/echo")
    assert r.status == 503, r.text
    assert r.text == CONNECT_FAILURE_BODY
    delta = counters.delta()
    assert (delta["upstream_rq_retry"], delta["upstream_cx_connect_fail"]) == (2, 3), delta


def test_per_try_timeout_then_504(proxy: ProxyProcess, shared_origin: FlakyOrigin) -> None:
    counters = Counters(proxy)
    tag = uuid.uuid4().hex[:8]
    start = time.monotonic()
    r = get(proxy, f"http://ptt.test:{shared_origin.port}/ptt/3?t={tag}")
    elapsed = time.monotonic() - start
    assert r.status == 504, r.text
    assert r.text == TIMEOUT_BODY
    assert 0.9 <= elapsed < 2.5, f"{elapsed:.2f}s"
    assert len([q for q in shared_origin.requests if q.target.endswith(tag)]) == 2
    assert counters.delta()["upstream_rq_retry"] == 1
    assert log_entry(proxy, rf"t={tag}")["flags"] == "UT"


def test_route_timeout_bounds_all_attempts_together(
    proxy: ProxyProcess, shared_origin: FlakyOrigin
) -> None:
    """Envoy: the route timeout is global -- it covers every attempt and the backoffs."""
    tag = uuid.uuid4().hex[:8]
    start = time.monotonic()
    r = get(proxy, f"http://gto.test:{shared_origin.port}/gto/5?t={tag}")
    elapsed = time.monotonic() - start
    assert r.status == 504, r.text
    assert r.text == TIMEOUT_BODY
    assert 0.9 <= elapsed < 1.6, f"{elapsed:.2f}s"
    time.sleep(0.3)
    assert 2 <= len([q for q in shared_origin.requests if q.target.endswith(tag)]) <= 3


def test_reset_after_the_response_started_is_not_retried(
    proxy: ProxyProcess, shared_origin: FlakyOrigin
) -> None:
    counters = Counters(proxy)
    shared_origin.reset_log()
    with RawClient("127.0.0.1", proxy.port) as c:
        c.send_request("GET", f"http://midbody.test:{shared_origin.port}/reset-mid-body")
        with pytest.raises(IncompleteResponseError) as info:
            c.recv_response()
    assert info.value.partial is not None and info.value.partial.status == 200
    assert len(attempts(shared_origin, "/reset-mid-body")) == 1
    assert counters.delta()["upstream_rq_retry"] == 0


# ---------------------------------------------------------------------------- maxRetries
def test_max_retries_zero_overflows_instead_of_retrying(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    p = start_proxy(
        proxy_factory,
        tmp_path,
        gateway({"circuitBreakers": {"maxRetries": 0, "trackRemaining": True}}),
        virtual_service([dfp_route("/", retries())]),
    )
    r = get(p, f"http://nomore.test:{origin.port}/status/503")
    assert r.status == 503 and r.text == "status 503\n"
    time.sleep(0.2)
    assert len(origin.requests) == 1
    assert cluster_stat(p, "upstream_rq_retry_overflow") == 1
    assert cluster_stat(p, "upstream_rq_retry") == 0
    # Nothing else is affected: a plain request still goes through.
    assert get(p, f"http://nomore.test:{origin.port}/echo").status == 200
    wait_until(lambda: breaker_gauges(p)["remaining_retries"] == 0, what="remaining_retries")
    assert_clean(p)


def test_max_retries_counts_retries_in_flight_and_recovers(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """Envoy's max_retries bounds the retries outstanding at once: a retry holds its slot
    from the moment it is decided until the retried attempt ends (RetryStateImpl keeps the
    resource until the next shouldRetry or its destruction), not only during the backoff."""
    origin = FlakyOrigin().start()
    assert isinstance(origin, FlakyOrigin)
    try:
        p = start_proxy(
            proxy_factory,
            tmp_path,
            gateway({"circuitBreakers": {"maxRetries": 1, "trackRemaining": True}}),
            virtual_service([dfp_route("/", retries(num=1))]),
        )
        base = f"http://mr.test:{origin.port}"
        with RawClient("127.0.0.1", p.port) as first:
            # Attempt 1 gets 503, the retry (attempt 2) is held for 1 s by the origin.
            first.send_request("GET", base + "/flaky/first?fail=503&times=1&slow=1")
            wait_until(lambda: origin.attempts_for("/flaky/first") == 2, what="the retry")
            g = breaker_gauges(p)
            assert (g["rq_retry_open"], g["remaining_retries"]) == (1, 0), g
            # Meanwhile another request that would retry finds no retry slot.
            r = get(p, base + "/status/503?t=second")
            assert r.status == 503 and r.text == "status 503\n"
            time.sleep(0.1)
            assert len([q for q in origin.requests if q.target.endswith("t=second")]) == 1
            assert cluster_stat(p, "upstream_rq_retry_overflow") == 1
            resp = first.recv_response()
            assert resp.status == 200 and resp.json()["attempt"] == 2
        assert cluster_stat(p, "upstream_rq_retry_success") == 1
        wait_until(lambda: breaker_gauges(p)["remaining_retries"] == 1, what="the retry slot back")
        assert breaker_gauges(p)["rq_retry_open"] == 0
        # Recovered: the next request is retried again.
        r = get(p, base + "/flaky/third?fail=503&times=1")
        assert r.status == 200 and r.json()["attempt"] == 2
        assert cluster_stat(p, "upstream_rq_retry") == 2
        assert_clean(p)
    finally:
        origin.stop()
    assert not origin.errors, origin.errors
