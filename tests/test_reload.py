"""Live reload of a Gloo config: SIGHUP and the file watcher, invalid configs kept out, and
nothing in flight dropped (keep-alive clients, CONNECT tunnels, listeners added and drained).

Every test runs its own proxy (``proxy_factory("-c", FILE)``). ``rewrite_in_place`` changes
a file without changing its size or mtime, so the 1 s poller never sees it and only SIGHUP
can load it: those tests know exactly which trigger did the reload.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import admin_stats
from tests.support import gloo_yaml
from tests.support.clients import RawClient
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]


# ---------------------------------------------------------------------------- configs
def gateway(name: str = "gateway-proxy", port: int = 8080) -> str:
    return gloo_yaml.gateway(connect=True, name=name, port=port)


def direct_config(body: str) -> str:
    """One virtual host answering every GET with ``body``."""
    routes = f"- matchers: [{{prefix: /}}]\n  directResponseAction: {{status: 200, body: {body}}}"
    return gloo_yaml.config(gateway(), gloo_yaml.virtual_service("vs", ["*"], routes))


def forward_config(tag: str, *gateways: str) -> str:
    """CONNECT terminated, everything else through the DFP, responses tagged ``x-config``;
    ``/hello`` answered directly. Selected by every Gateway given (default: one)."""
    routes = f"""
    - matchers: [{{connectMatcher: {{}}}}]
      routeAction: {{dynamicForwardProxy: {{}}}}
      options: {{upgrades: [{{connectTerminate: {{enabled: true}}}}]}}
    - matchers: [{{prefix: /hello}}]
      directResponseAction: {{status: 200, body: hello-{tag}}}
    - matchers: [{{prefix: /}}]
      routeAction: {{dynamicForwardProxy: {{}}}}
      options:
        headerManipulation:
          responseHeadersToAdd: [{{header: {{key: x-config, value: {tag}}}}}]
    """
    vs = gloo_yaml.virtual_service("vs", ["*"], routes)
    return gloo_yaml.config(*(gateways or (gateway(),)), vs)


INVALID = direct_config("A").replace("prefix: /", "prefx: /") + (
    """\
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: second, namespace: gloo-system}
spec:
  virtualHost:
    domains: [x.test]
    routes:
    - matchers: [{prefix: /}]
      directResponseAction: {status: 99}
"""
)


# ---------------------------------------------------------------------------- helpers
def rewrite_in_place(path: Path, text: str) -> None:
    """Replace the content keeping size and mtime (padded with a trailing comment), so only
    SIGHUP reloads it."""
    st = path.stat()
    data = text.encode()
    assert len(data) + 3 <= st.st_size, "the new content must be shorter than the old"
    data += b"\n#" + b"x" * (st.st_size - len(data) - 3) + b"\n"
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def padded(text: str, size: int = 4096) -> str:
    """``text`` padded to ``size`` bytes with a comment (room for rewrite_in_place)."""
    assert len(text.encode()) + 3 <= size
    return text + "\n#" + "x" * (size - len(text.encode()) - 3) + "\n"


def config_status(p: ProxyProcess) -> dict[str, Any]:
    status, body = p.admin_get("/config_status")
    assert status == 200, body
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def active_version(p: ProxyProcess) -> str:
    return str(config_status(p)["active"]["version"])


def wait_for_version_change(p: ProxyProcess, old: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while (version := active_version(p)) == old:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"config version still {old} after {timeout}s\n"
                f"{json.dumps(config_status(p), indent=1)}\n{p.stderr_tail(30)}"
            )
        time.sleep(0.02)
    return version


def wait_for_rejection(p: ProxyProcess, count: int, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while stat(p, "server.config_reload_rejected") < count:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"fewer than {count} rejected reloads\n{p.stderr_tail(30)}")
        time.sleep(0.02)
    return config_status(p)


stats = admin_stats


def stat(p: ProxyProcess, name: str) -> int:
    return stats(p).get(name, 0)


def get_text(port: int, url: str) -> tuple[int, str]:
    with RawClient("127.0.0.1", port) as c:
        r = c.request("GET", url)
        return r.status, r.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(proxy_factory: ProxyFactory, path: Path, text: str) -> ProxyProcess:
    path.write_text(text)
    return proxy_factory("-c", str(path))


# ---------------------------------------------------------------------------- SIGHUP
def test_sighup_reload_changes_behaviour_and_keepalive_sees_new_routes(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    p = start(proxy_factory, path, padded(direct_config("body-A")))
    before = config_status(p)
    assert before["last_rejected"] is None
    assert before["active"]["source"] == str(path)
    assert stat(p, "server.config_reload") == 0
    with RawClient("127.0.0.1", p.port) as keepalive:
        r = keepalive.request("GET", "http://any.test/x")
        assert (r.status, r.text) == (200, "body-A")
        rewrite_in_place(path, direct_config("body-B"))
        p.send_signal(signal.SIGHUP)
        version = wait_for_version_change(p, before["active"]["version"])
        # The connection opened before the reload routes its next request with the new table.
        r = keepalive.request("GET", "http://any.test/x")
        assert (r.status, r.text) == (200, "body-B")
        assert r.keep_alive
    assert get_text(p.port, "http://other.test/") == (200, "body-B")
    after = config_status(p)
    assert after["active"]["version"] == version
    assert after["active"]["loaded_at"] > before["active"]["loaded_at"]
    assert after["active"]["source"] == str(path)
    assert after["last_rejected"] is None
    assert stat(p, "server.config_reload") == 1
    assert stat(p, "server.config_reload_rejected") == 0
    # SIGHUP with nothing changed: no new version, no count.
    p.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert active_version(p) == version
    assert stat(p, "server.config_reload") == 1
    assert p.running


def test_file_change_reloads_without_a_signal_once_stable(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    p = start(proxy_factory, path, direct_config("first"))
    old = active_version(p)
    # An editor saving in two writes: a truncated (invalid) file, then the whole one, 0.3 s
    # apart. The watcher acts only on a file unchanged for a whole poll: it never reads the
    # half-written one.
    full = direct_config("second-version")
    path.write_text(full[: len(full) // 2])
    time.sleep(0.3)
    path.write_text(full)
    t0 = time.monotonic()
    wait_for_version_change(p, old, timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert get_text(p.port, "http://a.test/") == (200, "second-version")
    assert stat(p, "server.config_reload") == 1
    assert stat(p, "server.config_reload_rejected") == 0
    assert config_status(p)["last_rejected"] is None


def test_invalid_config_keeps_the_old_one_serving(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    p = start(proxy_factory, path, padded(direct_config("A")))
    old = config_status(p)["active"]
    rewrite_in_place(path, INVALID)
    p.send_signal(signal.SIGHUP)
    status = wait_for_rejection(p, 1)
    assert status["active"] == old  # same version, same load time
    rejected = status["last_rejected"]
    assert rejected is not None
    errors = rejected["errors"]
    assert len(errors) == 2, errors
    assert any(
        f"{path}: document 2 (VirtualService vs): spec.virtualHost.routes[0].matchers[0].prefx" in e
        and "did you mean 'prefix'" in e
        for e in errors
    ), errors
    assert any(
        f"{path}: document 3 (VirtualService second): spec.virtualHost.routes[0]"
        ".directResponseAction.status" in e
        for e in errors
    ), errors
    assert get_text(p.port, "http://a.test/") == (200, "A")
    assert stat(p, "server.config_reload_rejected") == 1
    assert stat(p, "server.config_reload") == 0
    # Every error is logged.
    deadline = time.monotonic() + 5
    while not all(e in p.stderr_text() for e in errors) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = p.stderr_text()
    for e in errors:
        assert e in log
    # A valid config again: it loads; the rejection stays visible as the last one.
    rewrite_in_place(path, direct_config("C"))
    p.send_signal(signal.SIGHUP)
    wait_for_version_change(p, old["version"])
    assert get_text(p.port, "http://a.test/") == (200, "C")
    assert stat(p, "server.config_reload") == 1
    assert stat(p, "server.config_reload_rejected") == 1
    assert config_status(p)["last_rejected"]["errors"] == errors


def test_reload_that_cannot_listen_is_rejected(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """A new Gateway on a port already taken: the whole config is refused, nothing changes."""
    path = tmp_path / "proxy.yaml"
    p = start(proxy_factory, path, padded(forward_config("a")))
    old = config_status(p)["active"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rewrite_in_place(path, forward_config("b", gateway(), gateway("second", port)))
        p.send_signal(signal.SIGHUP)
        status = wait_for_rejection(p, 1)
    assert status["active"] == old
    assert any("listen" in e for e in status["last_rejected"]["errors"])
    assert get_text(p.port, "http://a.test/hello") == (200, "hello-a")


# ---------------------------------------------------------------------------- under load
def test_twenty_reloads_under_load_drop_nothing(
    proxy_factory: ProxyFactory,
    tmp_path: Path,
    origin: OriginServer,
    tcp_echo_server: TcpEchoServer,
) -> None:
    path = tmp_path / "proxy.yaml"
    configs = [forward_config("a"), forward_config("b")]
    assert len(configs[0]) == len(configs[1])
    p = start(proxy_factory, path, padded(configs[0]))
    url = f"http://load.test:{origin.port}/bytes/64"

    stop = threading.Event()
    lock = threading.Lock()
    failures: list[str] = []
    counts = [0] * 4
    seen: list[set[str]] = [set() for _ in range(4)]
    connections = [0] * 4

    def client_loop(i: int) -> None:
        deadline = time.monotonic() + 30  # a hard bound even if the test body hangs
        c: RawClient | None = None
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if c is None:
                    c = RawClient("127.0.0.1", p.port, timeout=10)
                    connections[i] += 1
                try:
                    r = c.request("GET", url)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded
                    with lock:
                        failures.append(f"thread {i} request {counts[i]}: {exc!r}")
                    c.close()
                    c = None
                    continue
                if r.status != 200 or r.body_length != 64:
                    with lock:
                        failures.append(f"thread {i}: {r.status} {r.text[:200]!r}")
                tag = r.header("x-config")
                if tag is not None:
                    seen[i].add(tag)
                counts[i] += 1
                if not r.keep_alive:
                    c.close()
                    c = None
        finally:
            if c is not None:
                c.close()

    # A slow request in flight across every reload, and an open tunnel.
    slow = RawClient("127.0.0.1", p.port, timeout=15)
    slow.send_request("GET", f"http://slow.test:{origin.port}/slow-headers/2")
    tunnel = RawClient("127.0.0.1", p.port, timeout=10)
    assert tunnel.request("CONNECT", f"tunnel.test:{tcp_echo_server.port}").status == 200
    tunnel.send(b"first")
    assert tunnel.recv_exact(5) == b"first"

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        version = active_version(p)
        time.sleep(0.1)
        for n in range(1, 21):
            rewrite_in_place(path, configs[n % 2])
            p.send_signal(signal.SIGHUP)
            version = wait_for_version_change(p, version)
            msg = f"reload {n}".encode()
            tunnel.send(msg)
            assert tunnel.recv_exact(len(msg)) == msg
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert all(n > 20 for n in counts), counts
    assert connections == [1, 1, 1, 1]  # no keep-alive connection was closed by a reload
    assert all(s == {"a", "b"} for s in seen), seen  # open connections saw both versions
    assert stat(p, "server.config_reload") == 20
    assert stat(p, "server.config_reload_rejected") == 0
    r = slow.recv_response()
    assert (r.status, r.body) == (200, b"slow\n")
    slow.close()
    tunnel.send(b"last")
    assert tunnel.recv_exact(4) == b"last"
    tunnel.close()


# ---------------------------------------------------------------------------- listeners
def test_reload_adds_a_listener_and_drains_a_removed_one(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer
) -> None:
    path = tmp_path / "proxy.yaml"
    one = forward_config("a")
    p = start(proxy_factory, path, one)
    version = active_version(p)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        RawClient("127.0.0.1", port, timeout=2).close()

    path.write_text(forward_config("a", gateway(), gateway("second", port)))
    p.send_signal(signal.SIGHUP)
    version = wait_for_version_change(p, version)
    assert get_text(port, "http://x.test/hello") == (200, "hello-a")
    assert get_text(p.port, "http://x.test/hello") == (200, "hello-a")

    # A slow request in flight on the second listener while it is removed.
    inflight = RawClient("127.0.0.1", port, timeout=10)
    inflight.send_request("GET", f"http://slow.test:{origin.port}/slow-headers/1")
    origin.wait_until(
        lambda: any(r.path.startswith("/slow-headers") for r in origin.requests),
        timeout=5,
        what="the slow request at the origin",
    )
    path.write_text(one)
    p.send_signal(signal.SIGHUP)
    wait_for_version_change(p, version)
    # The removed listener accepts nothing new...
    with pytest.raises(ConnectionRefusedError):
        RawClient("127.0.0.1", port, timeout=2).close()
    # ...but what it had in flight completes, then its connection is closed (drained).
    r = inflight.recv_response()
    assert (r.status, r.body) == (200, b"slow\n")
    assert inflight.is_closed_by_peer(5.0)
    inflight.close()
    assert get_text(p.port, "http://x.test/hello") == (200, "hello-a")
    assert p.running


@pytest.mark.parametrize("change", ["rename", "use-proxy-proto"])
def test_changing_a_gateway_on_a_fixed_port_is_not_refused(
    proxy_factory: ProxyFactory, tmp_path: Path, change: str
) -> None:
    """Gloo requires bindAddress:bindPort to be unique, so the address identifies a listener:
    renaming its Gateway, or switching useProxyProto, must not make the reload try to bind the
    same address a second time (EADDRINUSE, the whole config rejected)."""
    path = tmp_path / "proxy.yaml"
    port = free_port()
    p = start(proxy_factory, path, forward_config("a", gateway(), gateway("second", port)))
    assert get_text(port, "http://x.test/hello") == (200, "hello-a")
    version = active_version(p)
    if change == "rename":
        changed = gateway("renamed", port)
    else:
        changed = gateway("second", port).replace(
            "  httpGateway:", "  useProxyProto: true\n  httpGateway:"
        )
    path.write_text(forward_config("b", gateway(), changed))
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while active_version(p) == version and stat(p, "server.config_reload_rejected") == 0:
        assert time.monotonic() < deadline, p.stderr_tail(30)
        time.sleep(0.02)
    assert config_status(p)["last_rejected"] is None
    assert active_version(p) != version
    assert get_text(p.port, "http://x.test/hello") == (200, "hello-b")
    with RawClient("127.0.0.1", port) as c:
        if change == "use-proxy-proto":
            c.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 %d\r\n" % port)
        r = c.request("GET", "http://x.test/hello")
        assert (r.status, r.text) == (200, "hello-b")


def test_config_folder_reloads_when_a_file_is_added(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (folder / "10-gateway.yaml").write_text(gateway())
    p = proxy_factory("-c", str(folder))
    assert config_status(p)["active"]["source"] == str(folder)
    old = active_version(p)
    # The default virtual host forwards; a new file adds a direct response for one domain.
    (folder / "20-vs.yaml").write_text(direct_config("from-the-folder").split("---\n", 1)[1])
    wait_for_version_change(p, old, timeout=5.0)
    assert get_text(p.port, "http://a.test/") == (200, "from-the-folder")


def test_reload_keeps_the_dns_cache_of_an_unchanged_cluster_warm(
    proxy_factory: ProxyFactory, tmp_path: Path, origin: OriginServer, dns_server: Any
) -> None:
    path = tmp_path / "proxy.yaml"
    p = start(proxy_factory, path, padded(forward_config("a")))
    url = f"http://warm.test:{origin.port}/bytes/10"
    assert get_text(p.port, url)[0] == 200
    asked = len([q for q in dns_server.queries if q.name.startswith("warm.test")])
    assert asked >= 1
    version = active_version(p)
    rewrite_in_place(path, forward_config("b"))
    p.send_signal(signal.SIGHUP)
    wait_for_version_change(p, version)
    assert get_text(p.port, url)[0] == 200
    assert len([q for q in dns_server.queries if q.name.startswith("warm.test")]) == asked


def test_tunnel_survives_a_reload_that_replaces_its_cluster(
    proxy_factory: ProxyFactory, tmp_path: Path, tcp_echo_server: TcpEchoServer
) -> None:
    """A changed dynamicForwardProxy block is a new cluster; the old one is closed after the
    drain timeout, but what is open on it keeps working."""
    path = tmp_path / "proxy.yaml"
    path.write_text(padded(forward_config("a")))
    p = proxy_factory("-c", str(path), "--drain-timeout", "0.5")
    with RawClient("127.0.0.1", p.port) as tunnel:
        assert tunnel.request("CONNECT", f"t.test:{tcp_echo_server.port}").status == 200
        version = active_version(p)
        changed = forward_config("a").replace(
            "dynamicForwardProxy: {}\n      httpConnectionManagerSettings",
            "dynamicForwardProxy: {dnsCacheConfig: {dnsLookupFamily: V4_ONLY}}\n"
            "      httpConnectionManagerSettings",
        )
        assert changed != forward_config("a")
        rewrite_in_place(path, changed)
        p.send_signal(signal.SIGHUP)
        wait_for_version_change(p, version)
        time.sleep(1.0)  # past the drain timeout: the old cluster is closed
        tunnel.send(b"still here")
        assert tunnel.recv_exact(10) == b"still here"


def test_port_of_a_removed_listener_is_no_longer_treated_as_the_proxy_itself(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """Once a removed listener's port is released, another server may take it: forwarding
    there is not a loop (dfproxy refuses forwarding to its own listeners with 508)."""
    path = tmp_path / "proxy.yaml"
    port = free_port()
    p = start(proxy_factory, path, forward_config("a", gateway(), gateway("second", port)))
    version = active_version(p)
    path.write_text(forward_config("a"))
    p.send_signal(signal.SIGHUP)
    wait_for_version_change(p, version)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))  # released by the drained listener
        server.listen(1)
        server.settimeout(5)
        with RawClient("127.0.0.1", p.port) as c:
            r = c.request("CONNECT", f"127.0.0.1:{port}")
            assert r.status == 200, (r.status, r.text)
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"not the proxy")
                assert c.recv_exact(13) == b"not the proxy"


def test_sighup_to_the_supervisor_reloads_every_worker(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """docs/configuration.md: "With --workers, SIGHUP to the parent reloads every worker"."""
    path = tmp_path / "proxy.yaml"
    path.write_text(padded(direct_config("body-A")))
    p = proxy_factory("-c", str(path), "--workers", "2")
    rewrite_in_place(path, direct_config("body-B"))
    p.send_signal(signal.SIGHUP)
    # New connections are spread over the workers by SO_REUSEPORT: 20 in a row answered by
    # the new config means both workers run it (a stale worker answers ~half of them).
    deadline = time.monotonic() + 5
    in_a_row = 0
    while in_a_row < 20:
        assert time.monotonic() < deadline, f"only {in_a_row} in a row\n{p.stderr_tail(20)}"
        in_a_row = in_a_row + 1 if get_text(p.port, "http://a.test/") == (200, "body-B") else 0
    assert p.running


def test_supervisor_admin_shows_config_status_and_reload_stats(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """With --workers the admin port is the supervisor's: /config_status and the reload
    counters must still be there (summed over the workers like every stat)."""
    path = tmp_path / "proxy.yaml"
    path.write_text(padded(direct_config("body-A")))
    p = proxy_factory("-c", str(path), "--workers", "2")
    rewrite_in_place(path, direct_config("body-B"))
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    problems = []
    status, body = p.admin_get("/config_status", timeout=3)
    if status != 200 or "version" not in json.loads(body or b"{}").get("active", {}):
        problems.append(f"/config_status: {status} {body[:100]!r}")
    try:
        status, body = p.admin_get("/stats", timeout=3)
    except TimeoutError:
        problems.append("/stats: no answer in 3 s")
    else:
        if status != 200 or "server.config_reload: 2\n" not in body.decode():
            problems.append(f"/stats: {status}, no 'server.config_reload: 2'")
    assert problems == []
