"""Shared fixtures: DNS server, origins, TCP echo server, and the proxy subprocess.

Fixtures (all function-scoped, all torn down and joined at the end of the test):

    dns_server          DNSTestServer on 127.0.0.1 (UDP+TCP), wildcard *.test -> 127.0.0.1
    origin              OriginServer on 127.0.0.1
    origin_factory      origin_factory(host="127.0.0.1") -> another OriginServer
    tcp_echo_server     TcpEchoServer on 127.0.0.1
    tcp_echo_factory    tcp_echo_factory(host="127.0.0.1", greeting=b"") -> TcpEchoServer
    proxy_loop          "uvloop" / "asyncio" (parametrized)
    proxy               ProxyProcess with the default flags, for each proxy_loop
    proxy_factory       proxy_factory(*extra_args, loop="uvloop", ...) -> ProxyProcess

Tests that use ``proxy`` or ``proxy_factory`` get the ``proxy`` marker (deselect them with
``-m "not proxy"``); they are skipped while ``dfproxy/__main__.py`` does not exist.

The suite runs against the mypyc-compiled hot path when it is built (dfproxy/_native.py),
and ``make test`` runs a second pass with ``DFPROXY_PURE=1``: tests marked ``interpreted``
replace a method of a hot-path object to catch a moment in time, which compiled classes do
not allow, so they run in that pass only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfproxy import _native
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import EVENT_LOOPS, ProxyProcess, dfproxy_runnable

PROXY_FIXTURES = {"proxy", "proxy_factory"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "proxy: runs the dfproxy subprocess (proxy / proxy_factory fixtures)"
    )
    config.addinivalue_line(
        "markers",
        "interpreted: patches a hot-path method; runs only with the interpreted hot path",
    )


def pytest_report_header(config: pytest.Config) -> str:
    state = "compiled" if _native.active else "interpreted"
    return f"dfproxy hot path: {state} ({_native.reason})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    runnable = dfproxy_runnable()
    for item in items:
        if _native.active and item.get_closest_marker("interpreted") is not None:
            item.add_marker(pytest.mark.skip(reason="compiled hot path: runs with DFPROXY_PURE=1"))
        if PROXY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.proxy)
            if not runnable:
                item.add_marker(pytest.mark.skip(reason="dfproxy/__main__.py does not exist yet"))


def _check_errors(server: Any) -> None:
    if server.errors:
        pytest.fail(f"{type(server).__name__} handler errors: {server.errors!r}", pytrace=False)


# ---------------------------------------------------------------------------- DNS
@pytest.fixture
def dns_server() -> Iterator[DNSTestServer]:
    server = DNSTestServer().start()
    try:
        yield server
    finally:
        server.stop()
    _check_errors(server)


# ---------------------------------------------------------------------------- origins
@pytest.fixture
def origin_factory() -> Iterator[Callable[..., OriginServer]]:
    started: list[OriginServer] = []

    def make(host: str = "127.0.0.1") -> OriginServer:
        server = OriginServer(host).start()
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
    for server in started:
        _check_errors(server)


@pytest.fixture
def origin(origin_factory: Callable[..., OriginServer]) -> OriginServer:
    return origin_factory()


@pytest.fixture
def tcp_echo_factory() -> Iterator[Callable[..., TcpEchoServer]]:
    started: list[TcpEchoServer] = []

    def make(host: str = "127.0.0.1", greeting: bytes = b"") -> TcpEchoServer:
        server = TcpEchoServer(host, greeting=greeting).start()
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
    for server in started:
        _check_errors(server)


@pytest.fixture
def tcp_echo_server(tcp_echo_factory: Callable[..., TcpEchoServer]) -> TcpEchoServer:
    return tcp_echo_factory()


# ---------------------------------------------------------------------------- proxy
@pytest.fixture(params=EVENT_LOOPS)
def proxy_loop(request: pytest.FixtureRequest) -> str:
    """The proxy's --event-loop, parametrized like uvicorn's two HTTP implementations."""
    return str(request.param)


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def proxy_factory(tmp_path: Path, dns_server: DNSTestServer) -> Iterator[ProxyFactory]:
    """``proxy_factory(*extra_args, loop="uvloop", dns_resolver=<dns_server>, env=None,
    wait_ready=True, log_level="debug", name=None, timeout=15) -> ProxyProcess`` (started; stopped
    with SIGTERM then SIGKILL after 10 s at teardown)."""
    started: list[ProxyProcess] = []

    def make(
        *extra_args: str,
        loop: str = "uvloop",
        dns_resolver: str | None = dns_server.address,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        log_level: str = "debug",
        name: str | None = None,
        timeout: float = 15.0,
    ) -> ProxyProcess:
        p = ProxyProcess.launch(
            tmp_path,
            *extra_args,
            dns_resolver=dns_resolver,
            loop=loop,
            log_level=log_level,
            name=name or f"proxy{len(started) + 1}",
            env=env,
            wait_ready=wait_ready,
            timeout=timeout,
        )  # a failed start kills its process before raising
        started.append(p)
        return p

    try:
        yield make
    finally:
        for p in started:
            p.stop()
            print(f"--- {p!r} exit={p.returncode}; stderr tail ---\n{p.stderr_tail(150)}")


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, proxy_loop: str) -> ProxyProcess:
    """A started proxy with the default flags, once per event loop."""
    return proxy_factory(loop=proxy_loop)
