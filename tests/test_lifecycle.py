"""Process lifecycle: readiness, SIGTERM drain, ``--workers`` supervision, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.support.clients import IncompleteResponseError, RawClient, RawResponse, clean_env
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import REPO_ROOT, ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]


def refused(port: int) -> bool:
    """True if nothing accepts on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs: absent, or a zombie with no thread left (a killed
    multi-threaded process shows its leader as a zombie while other threads still exit)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = fields.get("State", "").split()[0:1]
    threads = int(fields.get("Threads", "0").strip() or 0)
    return state in (["Z"], ["X"]) and threads <= 1


def kill_if_alive(pid: int) -> None:
    """Clean-up for processes this test caused to exist (by pid, never by name)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if not pid_gone(pid):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- CLI and readiness
def test_run_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dfproxy", "run", "--help"],
        capture_output=True,
        timeout=30,
        cwd=REPO_ROOT,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith("usage:")
    for flag in ("--listen", "--admin", "--workers", "--drain-timeout", "--dns-resolver", "-c"):
        assert flag in out


def test_ready_is_live(proxy: ProxyProcess, origin: OriginServer) -> None:
    assert proxy.admin_get("/ready") == (200, b"LIVE\n")
    assert proxy.curl(origin.url("/echo")).http_code == 200


# ---------------------------------------------------------------------------- drain
def _slow_request(port: int, url: str, out: list[RawResponse | BaseException]) -> None:
    try:
        with RawClient("127.0.0.1", port, timeout=10) as c:
            out.append(c.request("GET", url))
    except BaseException as e:  # reported by the test
        out.append(e)


def test_sigterm_drains_in_flight_then_exits_0(
    proxy_factory: ProxyFactory,
    proxy_loop: str,
    origin: OriginServer,
    tcp_echo_server: TcpEchoServer,
) -> None:
    p = proxy_factory("--drain-timeout", "8", loop=proxy_loop)
    # an idle keep-alive connection, an open tunnel and a slow request in flight
    idle = RawClient("127.0.0.1", p.port, timeout=5)
    assert idle.request("GET", origin.url("/echo")).status == 200
    tunnel = RawClient("127.0.0.1", p.port, timeout=5)
    assert tunnel.request("CONNECT", tcp_echo_server.authority).status == 200
    tunnel.send(b"before")
    assert tunnel.recv_exact(6) == b"before"
    results: list[RawResponse | BaseException] = []
    t = threading.Thread(
        target=_slow_request, args=(p.port, origin.url("/slow-headers/2"), results), daemon=True
    )
    t.start()
    origin.wait_for_requests(2)  # the slow request reached the origin
    start = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        # new connections are refused once the signal is handled
        wait_for(lambda: refused(p.port), 3, "the listener to close")
        status, body = p.admin_get("/ready")
        assert (status, body) == (503, b"DRAINING\n")
        # the idle keep-alive connection is closed
        assert idle.is_closed_by_peer(3)
        # the tunnel still works during the drain
        tunnel.send(b"during")
        assert tunnel.recv_exact(6) == b"during"
        # the in-flight request completes
        t.join(10)
        assert not t.is_alive()
        (resp,) = results
        assert isinstance(resp, RawResponse), resp
        assert resp.status == 200
        assert resp.body == b"slow\n"
        assert "close" in (resp.header("connection") or "").lower()
        assert p.poll() is None  # still waiting for the tunnel
        tunnel.shutdown_write()
        assert tunnel.recv_until_closed() == b""
        tunnel.close()
        code = p.wait(8)
    finally:
        idle.close()
        tunnel.close()
    assert code == 0
    assert time.monotonic() - start < 8  # did not wait for the drain deadline
    assert "drained, exiting" in p.stderr_text()


def test_drain_timeout_closes_what_is_left(
    proxy_factory: ProxyFactory, proxy_loop: str, tcp_echo_server: TcpEchoServer
) -> None:
    p = proxy_factory("--drain-timeout", "1", loop=proxy_loop)
    with RawClient("127.0.0.1", p.port, timeout=5) as tunnel:
        assert tunnel.request("CONNECT", tcp_echo_server.authority).status == 200
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.wait(6)
        elapsed = time.monotonic() - start
        assert tunnel.is_closed_by_peer(2)
    assert code == 0
    assert 0.8 <= elapsed < 4, elapsed


def test_sigterm_idle_proxy_exits_fast(proxy_factory: ProxyFactory, proxy_loop: str) -> None:
    p = proxy_factory("--drain-timeout", "10", loop=proxy_loop)
    start = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(5) == 0
    assert time.monotonic() - start < 3


def test_slow_request_during_drain_is_not_cut(
    proxy_factory: ProxyFactory, proxy_loop: str, origin: OriginServer
) -> None:
    """A request whose response is streaming when SIGTERM arrives completes in full."""
    p = proxy_factory("--drain-timeout", "8", loop=proxy_loop)
    with RawClient("127.0.0.1", p.port, timeout=10) as c:
        c.send_request("GET", origin.url(f"/bytes/{32 << 20}"))
        first = c.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        rest = c.recv_until_closed()
    head, _, body = (first + rest).partition(b"\r\n\r\n")
    assert len(body) == 32 << 20
    assert p.wait(5) == 0


# ---------------------------------------------------------------------------- workers
def _workers(p: ProxyProcess) -> list[dict[str, Any]]:
    status, body = p.admin_get("/workers")
    assert status == 200, body
    data = json.loads(body)
    assert isinstance(data, list)
    return data


def _requests_served(admin_port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", "/stats")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(r"^http\.[^:\s]+\.downstream_rq_total: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def _curl_ok(p: ProxyProcess, origin: OriginServer, n: int) -> None:
    for _ in range(n):
        with RawClient("127.0.0.1", p.port, timeout=5) as c:
            assert c.request("GET", origin.url("/echo")).status == 200


@pytest.mark.slow
def test_workers_serve_restart_and_stop(
    proxy_factory: ProxyFactory, proxy_loop: str, origin: OriginServer
) -> None:
    p = proxy_factory("--workers", "2", loop=proxy_loop, timeout=30)
    pids: list[int] = []
    try:
        assert p.admin_get("/ready") == (200, b"LIVE\n")
        workers = _workers(p)
        assert len(workers) == 2
        pids = [int(w["pid"]) for w in workers]
        assert len(set(pids)) == 2
        assert all(w["restarts"] == 0 for w in workers)
        # new connections spread over both workers (SO_REUSEPORT hashes the 4-tuple)
        _curl_ok(p, origin, 24)
        served = [_requests_served(int(w["admin_port"])) for w in workers]
        assert sum(served) >= 24
        assert all(n > 0 for n in served), served
        # SIGKILL one worker: it is restarted, and requests keep succeeding meanwhile
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        # the supervisor counts the restart once it has reaped the worker (then backs off);
        # connections the kernel queued on the dying worker's socket may be reset, so the
        # requests start once the death is reported
        wait_for(lambda: _workers(p)[0]["restarts"] == 1, 5, "the supervisor to see the death")
        _curl_ok(p, origin, 5)
        wait_for(
            lambda: _workers(p)[0]["restarts"] == 1 and _workers(p)[0]["pid"] != victim,
            15,
            "the killed worker to be restarted",
        )
        workers = _workers(p)
        pids = [int(w["pid"]) for w in workers]
        assert pids[1] == workers[1]["pid"]
        assert workers[1]["restarts"] == 0
        assert victim not in pids
        _curl_ok(p, origin, 10)
        # SIGTERM on the parent ends every worker, exit 0
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        for pid in pids:
            wait_for(lambda pid=pid: pid_gone(pid), 5, f"worker {pid} to exit")
    finally:
        for pid in pids:
            kill_if_alive(pid)


@pytest.mark.slow
def test_workers_exit_when_supervisor_dies(
    proxy_factory: ProxyFactory, proxy_loop: str, origin: OriginServer
) -> None:
    """If the supervisor is killed (OOM killer, kill -9), its workers must not live on as
    orphans holding the listening port."""
    p = proxy_factory("--workers", "2", loop=proxy_loop, timeout=30)
    pids = [int(w["pid"]) for w in _workers(p)]
    try:
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        try:
            wait_for(lambda: all(pid_gone(pid) for pid in pids), 3, "orphaned workers to exit")
        except TimeoutError:
            pytest.fail(f"workers {pids} still running 3 s after the supervisor was killed")
        assert refused(p.port)
    finally:
        for pid in pids:
            kill_if_alive(pid)


def test_incomplete_responses_are_reported(proxy: ProxyProcess, origin: OriginServer) -> None:
    """Sanity check of the client helper used above against the real proxy."""
    with RawClient("127.0.0.1", proxy.port, timeout=5) as c:
        c.send_request("GET", origin.url("/reset-mid-body"))
        with pytest.raises(IncompleteResponseError):
            c.recv_response()
