"""Review findings: each test demonstrates one suspected bug and fails while it is present.

Scripted origins here are tiny thread-per-connection servers on 127.0.0.1 whose handler
decides exactly what goes on the wire (the shared OriginServer cannot misbehave on demand).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import gloo_yaml
from tests.support.clients import IncompleteResponseError, RawClient
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess
from tests.test_reload import active_version, free_port, wait_for_version_change
from tests.upstream_helpers import (
    breaker_gauges,
    cluster_stat,
    dfp_route,
    gateway,
    start_proxy,
    virtual_service,
    wait_until,
)

ProxyFactory = Callable[..., ProxyProcess]
Handler = Callable[[socket.socket], None]


class ScriptedOrigin:
    """Accepts on 127.0.0.1:0 and runs ``handler(conn)`` per connection in a thread."""

    def __init__(self, handler: Handler | None, inline: Handler | None = None) -> None:
        self.handler = handler
        self.inline = inline  # run in the accepting thread itself: no thread start latency
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            if self.inline is not None:
                try:
                    self.inline(conn)
                except OSError:
                    pass
            if self.handler is None:
                conn.close()
                continue
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.handler is not None:
                self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() or recv() on Linux (each
        # join below would wait its full 2 s): shutdown() does.
        self._stop = True
        for sock in (self.sock, *self._conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._acceptor.join(2)
        for t in self._threads:
            t.join(2)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedOrigin]]:
    made: list[ScriptedOrigin] = []

    def make(handler: Handler | None, inline: Handler | None = None) -> ScriptedOrigin:
        o = ScriptedOrigin(handler, inline)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


def read_request_head(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            break
        buf += data
    return buf


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def burst_of_requests(port: int, urls: list[str]) -> None:
    """Send every request on its own connection at once, then read what comes back."""
    clients = []
    try:
        for url in urls:
            c = RawClient("127.0.0.1", port, timeout=5)
            clients.append(c)
            c.send_request("GET", url)
        for c in clients:
            try:
                c.recv_response()
            except Exception:  # noqa: BLE001 - any answer, or none, is fine here
                pass
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------- findings
def test_response_trailers_are_not_bounded(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """connection.py on_header: MAX_RESPONSE_HEADERS counts ``self.headers`` only, so an
    origin may send any number of trailer fields; all are kept in memory and forwarded."""
    n = 2000

    def handler(conn: socket.socket) -> None:
        read_request_head(conn)
        trailers = b"".join(b"x-t%d: v\r\n" % i for i in range(n))
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
            + trailers
            + b"\r\n"
        )
        time.sleep(0.5)

    o = scripted(handler)
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service([dfp_route()]))
    with RawClient("127.0.0.1", p.port, timeout=5) as c:
        c.send_request("GET", f"http://trailers.test:{o.port}/")
        raw = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not raw.endswith(b"\r\n\r\n"):
            try:
                data = c.recv()
            except (TimeoutError, OSError):
                break
            if not data:
                break
            raw += data
    forwarded = raw.count(b"x-t")
    # Envoy applies max_headers_count (100) to trailers too: the response must be refused
    # (or the trailers dropped), not relayed field by field without limit.
    assert forwarded <= 100, f"{forwarded} trailer fields forwarded (limit 100)"


def test_downstream_write_pause_is_lost_when_no_upstream_is_attached(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """downstream.py pause_writing/resume_writing: the write-buffer pause is delivered only to
    the upstream attached at that instant. Large local replies (direct responses) crosses the
    high-water mark with no upstream; the next request's upstream is then never paused, and a
    client that does not read makes the proxy buffer the whole origin response in memory."""
    big = "x" * (1024 * 1024)
    routes = [
        {
            "matchers": [{"prefix": "/big-direct"}],
            "directResponseAction": {"status": 200, "body": big},
        },
        dfp_route(),
    ]
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service(routes))
    before = rss_kib(p.pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", p.port))
    try:
        size = 200 * 1024 * 1024
        s.sendall(
            b"GET /big-direct HTTP/1.1\r\nHost: local.test\r\n\r\n" * 16
            + b"GET http://bulk.test:%d/bytes/%d HTTP/1.1\r\nHost: bulk.test:%d\r\n\r\n"
            % (origin.port, size, origin.port)
        )
        origin.wait_for_requests(1)
        time.sleep(1.5)  # the client reads nothing meanwhile
        grown_mib = (rss_kib(p.pid) - before) / 1024
    finally:
        s.close()
    # Bounded: 16 MiB of direct responses plus about one high-water mark and a read buffer.
    assert grown_mib < 64, f"proxy RSS grew by {grown_mib:.0f} MiB for a client reading nothing"


def test_connection_slot_leaks_when_origin_closes_during_connect(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """pool.py _connect: ``conn.counted = True`` is set a few loop iterations after
    connection_made; if the origin's FIN/RST is processed in between, on_closed() ran while
    the connection was not yet counted, so the max_connections slot and upstream_cx_active
    are never given back, and the stream gets a connection whose transport is None."""

    def reset(conn: socket.socket) -> None:
        # close() with linger 0: an immediate RST, sent from the accepting thread.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    o = scripted(None, inline=reset)
    cb = {"maxConnections": 1000, "trackRemaining": True}
    p = start_proxy(
        proxy_factory,
        tmp_path,
        gateway({"circuitBreakers": cb}),
        virtual_service([dfp_route(options={"timeout": "1s"})]),
    )
    # The window is a few loop iterations wide: a burst of concurrent connects keeps the
    # loop busy enough to hit it; up to three bursts, stopping at the first leak seen.
    for burst in range(1, 4):
        burst_of_requests(p.port, [f"http://rst{i % 3}.test:{o.port}/" for i in range(150)])
        want = 150 * burst
        wait_until(lambda want=want: o.accepted >= want, what="origin accepted all")
        time.sleep(0.3)
        if cluster_stat(p, "upstream_cx_active"):
            break
    active = cluster_stat(p, "upstream_cx_active")
    remaining = breaker_gauges(p)["remaining_cx"]
    err = p.stderr_text()
    assert (active, remaining) == (0, 1000), (active, remaining, err[-3000:])
    assert "Traceback" not in err, err[-3000:]


def test_unsolicited_101_opens_a_tunnel(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """connection.py _on_upgrade / stream.py upstream_upgraded: a 101 is accepted whatever
    the request was. A plain GET (no Upgrade, websocket not enabled on the route) answered
    101 by the origin becomes a raw tunnel between client and origin; Envoy resets instead."""
    got: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        read_request_head(conn)
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        )
        conn.settimeout(3)
        try:
            got.append(conn.recv(65536))
        except OSError:
            pass

    o = scripted(handler)
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service([dfp_route()]))
    with RawClient("127.0.0.1", p.port, timeout=5) as c:
        c.send_request("GET", f"http://up.test:{o.port}/")
        resp = c.recv_response()
        if resp.status == 101:
            c.send(b"raw bytes for the origin")
            time.sleep(0.5)
    assert resp.status != 101, (resp.status, got)


def test_body_buffer_pause_survives_a_local_reply(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """stream.py request_body pauses reading (BODY_BUFFER) while a body waits for its
    upstream; send_local_reply never resumes it. After a keep-alive 503 (connect failure) the
    next request on the same connection is never read."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service([dfp_route()]))
    with RawClient("127.0.0.1", p.port, timeout=2) as c:
        r1 = c.request("POST", f"http://dead.test:{dead_port}/", body=b"b" * (400 * 1024))
        assert r1.status == 503, r1.status
        assert r1.keep_alive, "the proxy closed the connection: nothing to show"
        c.send_request("GET", f"http://ok.test:{origin.port}/echo")
        try:
            r2 = c.recv_response()
        except TimeoutError:
            pytest.fail("second request on the connection never answered (reading paused)")
    assert r2.status == 200


def _timeout_config(*gateways: tuple[str, int]) -> str:
    routes = gloo_yaml.DFP_ROUTE + "  options: {timeout: 2s}\n"
    return gloo_yaml.config(
        *(gloo_yaml.gateway(name=name, port=port) for name, port in gateways),
        gloo_yaml.virtual_service("vs", ["*"], routes),
    )


def test_retired_listener_stops_enforcing_timeouts(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """server.py reload: a listener the new config removes is closed with listener.close()
    after the drain timeout, which only cancels its sweep. Its connections are not closed,
    and from then on nothing fires their route, idle or header timeouts: an exchange in
    flight there waits on the origin forever (here 20 s instead of the 2 s route timeout)."""
    path = tmp_path / "proxy.yaml"
    main_port, second_port = free_port(), free_port()
    one = _timeout_config(("main", main_port))
    path.write_text(_timeout_config(("main", main_port), ("second", second_port)))
    p = proxy_factory("-c", str(path), "--drain-timeout", "0.3")
    version = active_version(p)
    with RawClient("127.0.0.1", second_port, timeout=4) as c:
        c.send_request("GET", f"http://slow.test:{origin.port}/slow-headers/20")
        origin.wait_for_requests(1)
        path.write_text(one)
        p.send_signal(signal.SIGHUP)
        wait_for_version_change(p, version)
        start = time.monotonic()
        try:
            r = c.recv_response()
        except TimeoutError:
            pytest.fail(
                "no answer 4 s after the reload: the 2 s route timeout never fired on the "
                "retired listener, and its connection was never closed"
            )
        except IncompleteResponseError:
            # The fix chosen: once the drain timeout is over, what is still open on a
            # removed listener is closed (as a shutdown drain does). Nothing hangs.
            assert time.monotonic() - start < 3.0
            return
    assert r.status == 504, (r.status, time.monotonic() - start)


def test_replay_buffer_accounting_is_quadratic(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    """stream.py request_body: with a retry policy every body piece recomputes
    ``sum(map(len, replay))`` over all pieces so far. A 60 KB chunked body in 1-byte chunks
    (about 10,000 pieces, still under REPLAY_LIMIT) costs ~5*10^7 len() calls on the event
    loop, stalling every other connection of the worker. The same upload on a route without
    retries is the baseline."""
    retry = {"retries": {"retryOn": "5xx", "numRetries": 1}, "prefixRewrite": "/"}
    routes = [dfp_route("/r/", options=retry), dfp_route("/")]
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service(routes))
    n = 10_000
    body = b"1\r\nx\r\n" * n + b"0\r\n\r\n"

    def upload(path: str) -> float:
        with RawClient("127.0.0.1", p.port, timeout=20) as c:
            assert c.request("GET", f"http://up.test:{origin.port}/echo").status == 200
            c.send_request(
                "POST",
                f"http://up.test:{origin.port}{path}",
                [("transfer-encoding", "chunked")],
                add_length=False,
            )
            start = time.monotonic()
            c.send(body)
            r = c.recv_response()
            elapsed = time.monotonic() - start
        assert r.status == 200, r.status
        return elapsed

    baseline = upload("/upload")
    with_retry = upload("/r/upload")
    assert with_retry < 3 * baseline + 0.1, (
        f"60 KB in 1-byte chunks: {with_retry:.2f}s with a retry policy, {baseline:.2f}s without"
    )


def test_response_sent_before_the_request_breaks_attach(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """stream.py _attach: conn.attach() first delivers bytes the origin sent before the
    stream attached (meant for server-first CONNECT tunnels). On a new HTTP connection a
    complete response among them is taken as this request's answer and finishes the stream
    inside attach(); _attach then writes the head to a released connection and
    _request_sent() fails its assertion (self.upstream is None) in the connect task."""

    def greet(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")

    def handler(conn: socket.socket) -> None:
        conn.settimeout(2)
        read_request_head(conn)

    o = scripted(handler, inline=greet)
    p = start_proxy(proxy_factory, tmp_path, gateway(), virtual_service([dfp_route()]))
    for _ in range(3):
        burst_of_requests(p.port, [f"http://early{i % 3}.test:{o.port}/" for i in range(150)])
        time.sleep(0.3)
        if "Traceback" in p.stderr_text():
            break
    err = p.stderr_text()
    assert "Traceback" not in err, err[err.index("Traceback") - 200 :][:2500]


def test_bytes_after_a_response_in_the_same_read_poison_the_pooled_connection(
    proxy_factory: ProxyFactory, tmp_path: Path, scripted: Callable[..., ScriptedOrigin]
) -> None:
    """connection.py data_received/_complete: bytes that follow a complete response are
    caught only when they come in a later read (``Bytes while idle``). In the same read the
    parser goes on parsing them after pool.release(): a stray response head leaves the idle
    connection mid-message, and the next request that reuses it gets its answer swallowed as
    the stray message's body (Envoy closes a connection that sends a premature response)."""
    first = [True]

    def handler(conn: socket.socket) -> None:
        conn.settimeout(5)
        while True:
            head = read_request_head(conn)
            if not head:
                return
            path = head.split(b" ", 2)[1]
            resp = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path)
            if first[0]:
                first[0] = False
                resp += b"HTTP/1.1 200 OK\r\ncontent-length: 30\r\n\r\n"  # stray head
            conn.sendall(resp)

    o = scripted(handler)
    p = start_proxy(
        proxy_factory,
        tmp_path,
        gateway(),
        virtual_service([dfp_route(options={"timeout": "1s"})]),
    )
    with RawClient("127.0.0.1", p.port, timeout=3) as c:
        r1 = c.request("GET", f"http://stray.test:{o.port}/one")
        assert (r1.status, r1.body) == (200, b"/one")
        time.sleep(0.2)
        r2 = c.request("GET", f"http://stray.test:{o.port}/two")
    assert (r2.status, r2.body) == (200, b"/two"), (r2.status, r2.body)
