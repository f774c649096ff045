"""Helpers shared by the integration test modules.

Starting the proxy costs ~0.7 s; most integration modules therefore run one proxy per event
loop for the whole module (module-scoped ``dns_server`` / ``proxy_loop`` / ``proxy``
overrides built with these helpers) and check after every test that it is still alive.
Tests that change a proxy's state (signals, flags) use ``proxy_factory`` instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import pytest

from tests.support.dns_server import DNSTestServer
from tests.support.proxy import ProxyProcess

MiB = 1 << 20


# ---------------------------------------------------------------------------- shared proxies
@contextlib.contextmanager
def module_dns_server() -> Iterator[DNSTestServer]:
    server = DNSTestServer().start()
    try:
        yield server
    finally:
        server.stop()
    if server.errors:
        pytest.fail(f"DNSTestServer handler errors: {server.errors!r}", pytrace=False)


@contextlib.contextmanager
def module_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns: DNSTestServer,
    loop: str,
    *extra_args: str,
    log_level: str = "debug",
    drain_timeout: float = 2.0,
    config: str | None = None,
) -> Iterator[ProxyProcess]:
    """A proxy for a whole module (run with ``-c`` on ``config``, a Gloo YAML text, when
    given). At teardown it must exit 0 without hitting the drain deadline: every test closed
    its clients, so a connection still open then was leaked."""
    workdir = tmp_path_factory.mktemp(f"proxy-{loop}")
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(config)
        extra_args = ("-c", str(path), *extra_args)
    p = ProxyProcess.launch(
        workdir,
        "--drain-timeout",
        str(drain_timeout),
        *extra_args,
        dns_resolver=dns.address,
        loop=loop,
        log_level=log_level,
    )
    try:
        yield p
    finally:
        p.stop()
        print(f"--- {p!r} exit={p.returncode}; stderr tail ---\n{p.stderr_tail(150)}")
    if p.returncode != 0 or "drain deadline passed" in p.stderr_text():
        pytest.fail(
            f"the module's proxy ({loop}) did not shut down cleanly (exit {p.returncode}): "
            "connections were still open at the drain deadline, i.e. leaked by a test "
            f"above\n{p.stderr_tail(40)}",
            pytrace=False,
        )


class _Server(Protocol):
    def start(self) -> object: ...

    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


@contextlib.contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """``server`` (an OriginServer, AuthServer, JwksServer...: ``start()`` / ``stop()``)
    started for the block and stopped after it; its handlers must not have failed
    (``server.errors``, where it keeps one)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
    errors = getattr(server, "errors", None)
    assert not errors, errors


def check_alive(p: ProxyProcess) -> None:
    """Fail the test that killed (or hung) a shared proxy."""
    if not p.running:
        pytest.fail(
            f"the shared proxy exited with {p.returncode}\n{p.stderr_tail(80)}", pytrace=False
        )


def admin_stats(p: ProxyProcess, regex: str = "") -> dict[str, int]:
    """The counters and gauges of the admin ``GET /stats`` (text format), filtered by
    ``regex`` when given, as {name: value}."""
    status, body = p.admin_get(f"/stats?filter={quote(regex, safe='')}" if regex else "/stats")
    assert status == 200, body
    out: dict[str, int] = {}
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(": ")
        if name and value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def no_ip_queries(dns: DNSTestServer, since: int = 0) -> bool:
    """True if no DNS query since index ``since`` asked for an IP literal (a background
    refresh of some other name may legitimately arrive meanwhile)."""
    asked = [q.name for q in dns.queries[since:]]
    for name in asked:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            continue
        return False
    return True


# ---------------------------------------------------------------------------- logs
def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def wait_for_log_line(p: ProxyProcess, pattern: str, timeout: float = 5.0) -> str:
    """The first access-log line matching ``pattern`` (regex), waiting for the 1 s flush."""
    rx = re.compile(pattern)
    found: list[str] = []

    def look() -> bool:
        found[:] = [ln for ln in p.access_log_lines() if rx.search(ln)]
        return bool(found)

    wait_for(look, timeout, f"access log line /{pattern}/ in {p.access_log_lines()!r}")
    return found[0]


def wait_for_stderr(p: ProxyProcess, pattern: str, timeout: float = 5.0) -> str:
    rx = re.compile(pattern)
    found: list[str] = []

    def look() -> bool:
        found[:] = [ln for ln in p.stderr_text().splitlines() if rx.search(ln)]
        return bool(found)

    wait_for(look, timeout, f"stderr line /{pattern}/")
    return found[0]


ENVOY_LOG = re.compile(
    r'^\[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<status>\d+) (?P<flags>\S+) (?P<received>\d+) (?P<sent>\d+) (?P<duration>\d+) - "
    r'"(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream>[^"]*)"$'
)


def parse_log_line(line: str) -> dict[str, str]:
    m = ENVOY_LOG.match(line)
    assert m is not None, f"not an Envoy-format access log line: {line!r}"
    return m.groupdict()


# ---------------------------------------------------------------------------- /proc
def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (and the other Vm* lines) of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid)["VmRSS"] / 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux >= 4.0).
    Returns False when not permitted (then VmHWM is the peak since start)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib(pid: int) -> float:
    return proc_status_kib(pid)["VmHWM"] / 1024


def assert_no_traceback(proxy: ProxyProcess) -> None:
    """The proxy never logged a traceback."""
    err = proxy.stderr_text()
    assert "Traceback" not in err, f"traceback in proxy stderr:\n{err[-4000:]}"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (its value is returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)
