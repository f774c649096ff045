"""Large bodies stream through the proxy without being buffered whole, backpressure holds
against a slow reader, and an origin reset mid-body reaches the client as an incomplete
response. The proxy's memory is read from /proc/PID/status (VmHWM after resetting it through
/proc/PID/clear_refs, plus VmRSS sampled by a thread)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import shared_proxy
from tests.helpers import (
    MiB,
    parse_log_line,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    wait_for_log_line,
)
from tests.support.clients import IncompleteResponseError, RawClient, clean_env
from tests.support.origin import OriginServer, iter_pattern, pattern_sha256
from tests.support.proxy import ProxyProcess

BIG = 100 * MiB
# Whole-body buffering of a 100 MiB body would add ~100 MiB; the proxy idles at ~30 MiB and
# streaming measured at < 2 MiB of growth. 40 MiB of growth leaves a wide margin for
# allocator noise and the two write buffers (256 KiB high-water marks).
MAX_GROWTH_MIB = 40.0
MAX_TOTAL_MIB = 120.0


# ---------------------------------------------------------------------------- fixtures
# One DNS server and one proxy per event loop for this file (tests/shared_proxy.py).
_proxy_still_alive = shared_proxy._proxy_still_alive
dns_server = shared_proxy.dns_server
proxy = shared_proxy.proxy
proxy_loop = shared_proxy.proxy_loop


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 MiB of the origin's pattern (its sha256 is ``pattern_sha256(BIG)``)."""
    path = tmp_path_factory.mktemp("upload") / "big.bin"
    with path.open("wb") as f:
        for part in iter_pattern(BIG, 1 << 20):
            f.write(part)
    return path


class MemoryWatch:
    """Peak RSS of a process while a block runs: VmHWM (reset first) and sampled VmRSS."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = 0.0
        self.sampled_peak = 0.0
        self.hwm_peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sampled_peak = max(self.sampled_peak, rss_mib(self.pid))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        self.baseline = rss_mib(self.pid)
        self._hwm_ok = reset_peak_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._hwm_ok:
            self.hwm_peak = peak_rss_mib(self.pid)

    @property
    def peak(self) -> float:
        return max(self.sampled_peak, self.hwm_peak or 0.0)

    @property
    def growth(self) -> float:
        return self.peak - self.baseline

    def check(self) -> None:
        print(f"RSS baseline {self.baseline:.1f} MiB, peak {self.peak:.1f} MiB")
        assert self.growth < MAX_GROWTH_MIB, (
            f"proxy RSS grew {self.growth:.1f} MiB (baseline {self.baseline:.1f}, "
            f"peak {self.peak:.1f}): the body is being buffered"
        )
        assert self.peak < MAX_TOTAL_MIB, f"proxy peak RSS {self.peak:.1f} MiB"


def curl_sha256(*args: str, timeout: float = 30.0) -> tuple[int, int, str, str]:
    """Run curl, hashing its stdout as it streams: (returncode, length, sha256, stderr)."""
    exe = shutil.which("curl")
    assert exe is not None, "curl is not installed"
    argv = [exe, "-q", "-sS", "--max-time", str(timeout), *args]
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        err = proc.stderr.read().decode("utf-8", "replace")
        code = proc.wait(timeout + 10)
    return code, n, h.hexdigest(), err


# ---------------------------------------------------------------------------- big bodies
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_100mib_download_streams(proxy: ProxyProcess, origin: OriginServer, kind: str) -> None:
    with MemoryWatch(proxy.pid) as mem:
        code, n, sha, err = curl_sha256("-x", proxy.url, origin.url(f"/{kind}/{BIG}"))
    assert code == 0, err
    assert n == BIG
    assert sha == pattern_sha256(BIG)
    mem.check()


@pytest.mark.slow
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mib_upload_streams(
    proxy: ProxyProcess, origin: OriginServer, big_file: Path, framing: str
) -> None:
    extra = ["-H", "Transfer-Encoding: chunked"] if framing == "chunked" else []
    with MemoryWatch(proxy.pid) as mem:
        r = proxy.curl("-T", str(big_file), *extra, origin.url("/upload"), timeout=60)
    r.check()
    assert r.http_code == 200
    info = r.json()
    assert info["length"] == BIG
    assert info["sha256"] == pattern_sha256(BIG)
    assert info["chunked"] is (framing == "chunked")
    mem.check()


# ---------------------------------------------------------------------------- backpressure
@pytest.mark.slow
def test_slow_reader_backpressure(proxy: ProxyProcess, origin: OriginServer) -> None:
    """A client reading 64 KiB every 50 ms: the proxy must stop reading the origin instead of
    buffering what the client cannot take yet. Without backpressure the proxy reads the whole
    64 MiB from the loopback origin within the slow phase and its RSS grows by ~64 MiB."""
    n = 64 * MiB
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send_request("GET", origin.url(f"/bytes/{n}"))
        head = b""
        while b"\r\n\r\n" not in head:
            piece = c.recv(65536)
            assert piece, "EOF before the response head"
            head += piece
        raw_head, _, first = head.partition(b"\r\n\r\n")
        assert raw_head.startswith(b"HTTP/1.1 200")
        assert b"content-length: %d" % n in raw_head.lower()
        h = hashlib.sha256(first)
        got = len(first)
        with MemoryWatch(proxy.pid) as mem:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                piece = c.recv(65536)
                assert piece
                h.update(piece)
                got += len(piece)
                time.sleep(0.05)
        print(f"slow phase read {got} bytes")
        assert got < n // 4  # the reader really was slow
        mem.check()
        c.settimeout(20)
        while got < n:
            piece = c.recv(1 << 20)
            assert piece, f"EOF after {got} of {n} bytes"
            h.update(piece)
            got += len(piece)
    assert got == n
    assert h.hexdigest() == pattern_sha256(n)


# ---------------------------------------------------------------------------- reset mid-body
def test_origin_reset_mid_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        c.send_request("GET", origin.url("/reset-mid-body"), headers=[("User-Agent", "mid-body")])
        with pytest.raises(IncompleteResponseError) as info:
            c.recv_response()
        partial = info.value.partial
        assert partial is not None, "the response head should have been forwarded"
        assert partial.status == 200
        assert partial.header("content-length") == "100000"
        assert partial.body_length <= 1000
        assert not partial.complete
    # the proxy keeps serving
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        assert c.request("GET", origin.url("/echo")).status == 200
        assert c.request("GET", origin.url("/bytes/1000")).body_length == 1000
    line = parse_log_line(wait_for_log_line(proxy, r'"mid-body"'))
    assert line["status"] == "200"
    assert line["flags"] == "UC"


def test_origin_reset_mid_body_http10_client(proxy: ProxyProcess, origin: OriginServer) -> None:
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        c.send_request("GET", origin.url("/reset-mid-body"), version="HTTP/1.0")
        with pytest.raises(IncompleteResponseError) as info:
            c.recv_response()
        assert info.value.partial is not None
        assert info.value.partial.body_length <= 1000
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        assert c.request("GET", origin.url("/echo")).status == 200


# ---------------------------------------------------------------------------- client aborts
def test_client_abort_mid_download_closes_upstream(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    """The origin stalls mid-body until its peer closes: when the client goes away, the proxy
    must close the upstream connection too (no leaked origin connections)."""
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        c.send_request("GET", origin.url("/stall-body/200000"))
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
        origin.wait_until(lambda: origin.open_connections == 1, 5, "the upstream connection")
    origin.wait_until(lambda: origin.open_connections == 0, 5, "the upstream connection to close")
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        assert c.request("GET", origin.url("/echo")).status == 200


def test_client_abort_mid_upload_closes_upstream(proxy: ProxyProcess, origin: OriginServer) -> None:
    with RawClient("127.0.0.1", proxy.port, timeout=10) as c:
        c.send_request("POST", origin.url("/upload"), headers=[("Content-Length", str(10 * MiB))])
        c.send(b"x" * MiB)
        origin.wait_until(lambda: origin.open_connections == 1, 5, "the upstream connection")
    origin.wait_until(lambda: origin.open_connections == 0, 5, "the upstream connection to close")
    assert origin.requests == []  # the origin never saw a complete request
