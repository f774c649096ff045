"""Module-scoped fixtures for test files that share one proxy per event loop.

Import them into a test module (``from tests.shared_proxy import ...``): pytest then treats
them as that module's own, so "module" scope means one DNS server and one proxy per loop
for the file. Every test checks afterwards that the shared proxy is still alive.

Files that start their own proxy (a config of their own) take just the pieces they need:
``dns_server = shared_proxy.dns_server``, ``shared_origin = shared_proxy.shared_origin``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import check_alive, module_dns_server, module_proxy, serving
from tests.support.clients import RawClient
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import EVENT_LOOPS, ProxyProcess


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with module_dns_server() as server:
        yield server


@pytest.fixture(scope="module")
def shared_origin() -> Iterator[OriginServer]:
    """One OriginServer for the module; its handlers must not have failed."""
    with serving(OriginServer()) as server:
        yield server


@pytest.fixture(scope="module")
def shared_echo() -> Iterator[TcpEchoServer]:
    """One TcpEchoServer for the module; its handlers must not have failed."""
    with serving(TcpEchoServer()) as server:
        yield server


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def proxy_loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, proxy_loop: str
) -> Iterator[ProxyProcess]:
    with module_proxy(tmp_path_factory, dns_server, proxy_loop) as p:
        yield p


@pytest.fixture(autouse=True)
def _proxy_still_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "proxy" in request.fixturenames:
        check_alive(request.getfixturevalue("proxy"))


def client(proxy: ProxyProcess, timeout: float = 10.0) -> RawClient:
    return RawClient("127.0.0.1", proxy.port, timeout=timeout)
