"""Access control through the real proxy: destination rules after DNS (the SSRF guard), the
numeric and IPv6 spellings of loopback, CONNECT by port, source rules, Gloo RBAC, and the
embedded default's secure behaviour.

The addresses denied here are loopback ones the test config (or the embedded default)
denies; a "sentinel" listens on each and never accepts, so a connection attempt the proxy
should not have made is visible. Allowed traffic goes to origins on 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import shared_proxy
from tests.helpers import check_alive, module_proxy
from tests.support.clients import RawClient, curl
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import DFP_ROUTES, gateway, virtual_service
from tests.support.origin import OriginServer, TcpEchoServer
from tests.support.proxy import LOOPBACK_ALLOWED, ProxyProcess, proxy_command

TWO = "127.0.0.2"


class Sentinel:
    """A listening socket that never accepts: ``attempts()`` counts the connections the
    kernel completed for it (each one a connect the proxy made)."""

    def __init__(self, host: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.count = 0

    def attempts(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.count
            conn.close()
            self.count += 1

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def sentinels(*pairs: tuple[str, int]) -> Iterator[list[Sentinel]]:
    made = [Sentinel(h, p) for h, p in pairs]
    try:
        yield made
    finally:
        for s in made:
            s.close()


# ---------------------------------------------------------------------------- module setup
dns_server = shared_proxy.dns_server


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, object]]:
    two = OriginServer(TWO).start()
    two_b = OriginServer(TWO).start()
    echo_ok = TcpEchoServer(TWO).start()
    echo_no = TcpEchoServer(TWO).start()
    loop_v4 = Sentinel("127.0.0.1")
    loop_v6 = Sentinel("::1", loop_v4.port)
    both = Sentinel("127.0.0.1", two.port)  # 127.0.0.1 at the allowed origin's port
    try:
        yield {
            "two": two,
            "two_b": two_b,
            "echo_ok": echo_ok,
            "echo_no": echo_no,
            "loop_v4": loop_v4,
            "loop_v6": loop_v6,
            "both": both,
        }
    finally:
        for s in (loop_v4, loop_v6, both):
            s.close()
        for srv in (two, two_b, echo_ok, echo_no):
            srv.stop()
            assert not srv.errors, srv.errors


GATEWAY = gateway(connect=True)


def vs(name: str, domains: list[str], options: str) -> str:
    """Every request through the DFP (CONNECT tunnelled), with the access ``options``."""
    return virtual_service(name, domains, DFP_ROUTES, options)


def access_config(s: dict[str, object]) -> str:
    two_b, echo_ok = s["two_b"], s["echo_ok"]
    assert isinstance(two_b, OriginServer) and isinstance(echo_ok, TcpEchoServer)
    docs = [
        GATEWAY,
        vs(
            "dest",
            ["*"],
            f"""
            destinationPolicy:
              connectPorts: [{echo_ok.port}]
              rules:
              - {{name: deny-blocked-name, action: DENY, domains: [blocked.test]}}
              - {{name: deny-evil, action: DENY, domains: ["*.evil.test"]}}
              - {{name: deny-port, action: DENY, ports: [{two_b.port}], connect: false}}
              - {{name: allow-two, action: ALLOW, cidrs: [127.0.0.2/32], connect: false}}
              - {{name: deny-loopback, action: DENY, cidrs: [127.0.0.1/32, "::1/128"]}}
            """,
        ),
        vs(
            "src-deny",
            ["src-deny.test"],
            """
            sourcePolicy:
              rules: [{name: deny-local-clients, action: DENY, clientCidrs: [127.0.0.0/8]}]
            """,
        ),
        vs(
            "src-allow",
            ["src-allow.test"],
            """
            sourcePolicy:
              defaultAction: DENY
              rules: [{name: local-clients, action: ALLOW, clientCidrs: [127.0.0.1/32]}]
            """,
        ),
        vs(
            "rbac",
            ["rbac.test"],
            """
            rbac:
              policies:
                readers: {permissions: {methods: [GET]}}
                alice: {principals: [{jwtPrincipal: {claims: {sub: alice}}}]}
            """,
        ),
    ]
    return "---\n".join(docs)


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DNSTestServer,
    servers: dict[str, object],
) -> Iterator[ProxyProcess]:
    for name in ("two.test", "both.test", "evil.test", "src-deny.test", "src-allow.test"):
        dns_server.set(name, a=["127.0.0.2"] if name != "both.test" else ["127.0.0.1", TWO])
    dns_server.set("rbac.test", a=[TWO])
    dns_server.set("one.test", a=["127.0.0.1"])
    with module_proxy(tmp_path_factory, dns_server, "uvloop", config=access_config(servers)) as p:
        yield p


@pytest.fixture(autouse=True)
def _alive(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "proxy" in request.fixturenames:
        check_alive(request.getfixturevalue("proxy"))


def get(p: ProxyProcess, url: str, method: str = "GET") -> tuple[int, str]:
    with RawClient("127.0.0.1", p.port) as c:
        resp = c.request(method, url)
        return resp.status, resp.text


def tunnel(p: ProxyProcess, target: str) -> tuple[int, str, bytes]:
    """CONNECT, and one echo round trip when it was accepted."""
    with RawClient("127.0.0.1", p.port) as c:
        resp = c.request("CONNECT", target)
        echoed = b""
        if resp.status == 200:
            c.send(b"ping")
            echoed = c.recv_exact(4)
        return resp.status, resp.text, echoed


def _srv(servers: dict[str, object], name: str) -> int:
    port = getattr(servers[name], "port", 0)
    assert isinstance(port, int)
    return port


# ---------------------------------------------------------------------------- after DNS
def test_name_resolving_to_a_denied_address_is_refused_after_dns(
    proxy: ProxyProcess, servers: dict[str, object], dns_server: DNSTestServer
) -> None:
    port = _srv(servers, "loop_v4")
    status, body = get(proxy, f"http://one.test:{port}/")
    assert status == 403
    assert body == f"destination denied by rule 'deny-loopback' (127.0.0.1:{port})"
    assert dns_server.count("one.test") >= 1  # decided on the resolved address
    assert servers["loop_v4"].attempts() == 0


def test_name_resolving_to_an_allowed_address_passes(
    proxy: ProxyProcess, servers: dict[str, object]
) -> None:
    status, _ = get(proxy, f"http://two.test:{_srv(servers, 'two')}/echo")
    assert status == 200


def test_only_the_allowed_address_of_a_name_is_connected_to(
    proxy: ProxyProcess, servers: dict[str, object]
) -> None:
    """both.test has 127.0.0.1 (denied; a sentinel listens there on the same port) and
    127.0.0.2 (the origin): Happy Eyeballs only ever sees the allowed one."""
    port = _srv(servers, "two")
    for i in range(3):
        status, _ = get(proxy, f"http://both.test:{port}/echo?i={i}")
        assert status == 200
    assert servers["both"].attempts() == 0


LOOPBACK_SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
    ("[::ffff:7f00:1]", "[::ffff:7f00:1]"),
    ("[2002:7f00:1::]", "[2002:7f00:1::]"),
    ("[64:ff9b::7f00:1]", "[64:ff9b::7f00:1]"),
    ("[::1]", "[::1]"),
    ("[0:0:0:0:0:0:0:1]", "[0:0:0:0:0:0:0:1]"),
]


@pytest.mark.parametrize(("host", "shown"), LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_denied_without_a_connection(
    proxy: ProxyProcess,
    servers: dict[str, object],
    dns_server: DNSTestServer,
    host: str,
    shown: str,
) -> None:
    port = _srv(servers, "loop_v4")
    before = dns_server.count()
    status, body = get(proxy, f"http://{host}:{port}/")
    assert status == 403
    assert body == f"destination denied by rule 'deny-loopback' ({shown}:{port})"
    assert dns_server.count() == before  # an address, never sent to DNS
    assert servers["loop_v4"].attempts() == 0
    assert servers["loop_v6"].attempts() == 0


# ---------------------------------------------------------------------------- names, ports
def test_exact_domain_is_denied_before_dns(
    proxy: ProxyProcess, servers: dict[str, object], dns_server: DNSTestServer
) -> None:
    port = _srv(servers, "two")
    status, body = get(proxy, f"http://blocked.test:{port}/")
    assert (status, body) == (
        403,
        f"destination denied by rule 'deny-blocked-name' (blocked.test:{port})",
    )
    assert dns_server.count("blocked.test") == 0  # a denied name is never resolved


def test_wildcard_domain(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    port = _srv(servers, "two")
    status, body = get(proxy, f"http://api.evil.test:{port}/")
    assert (status, body) == (403, f"destination denied by rule 'deny-evil' (api.evil.test:{port})")
    status, body = get(proxy, f"http://a.b.evil.test:{port}/")
    assert status == 403
    # The suffix wildcard needs a label before it: evil.test itself is allowed.
    status, _ = get(proxy, f"http://evil.test:{port}/echo")
    assert status == 200


# c-ares reads backslash escapes (``bl\\ocked`` is ``blocked``, ``\\098`` is ``b``) and pycares
# IDNA-2003-maps non-ASCII text (a soft hyphen U+00AD vanishes, U+00BA is "o"): a name that
# reaches the resolver like that is not the name the rules saw.
RESOLVER_REWRITTEN = ["bl\\ocked.test", "\\098locked.test", "bloc\xadked.test", "bl\xbacked.test"]


@pytest.mark.parametrize("host", RESOLVER_REWRITTEN)
def test_host_the_resolver_would_rewrite_is_refused(
    proxy: ProxyProcess, servers: dict[str, object], dns_server: DNSTestServer, host: str
) -> None:
    port = _srv(servers, "two")
    before = len(servers["two"].requests)  # type: ignore[attr-defined]
    dns_server.set("blocked.test", a=[TWO])  # were it resolved, the address is allowed
    try:
        with RawClient("127.0.0.1", proxy.port) as c:
            resp = c.request("GET", "/echo", {"Host": f"{host}:{port}"})
    finally:
        dns_server.clear("blocked.test")
    assert resp.status == 400
    assert resp.text.startswith("invalid host: character ")
    assert dns_server.count("blocked.test") == 0  # the denied name is never resolved
    assert len(servers["two"].requests) == before  # type: ignore[attr-defined]


def test_port_rule(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    port = _srv(servers, "two_b")
    status, body = get(proxy, f"http://two.test:{port}/")
    assert (status, body) == (403, f"destination denied by rule 'deny-port' (two.test:{port})")
    assert servers["two_b"].requests == []


def test_cidr_rule_with_curl(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    port = _srv(servers, "loop_v4")
    r = proxy.curl(f"http://127.0.0.1:{port}/")
    assert r.http_code == 403
    assert r.text == f"destination denied by rule 'deny-loopback' (127.0.0.1:{port})"
    ok = proxy.curl(f"http://{TWO}:{_srv(servers, 'two')}/echo")
    assert ok.http_code == 200


# ---------------------------------------------------------------------------- CONNECT
def test_connect_allowed_and_denied_by_port(
    proxy: ProxyProcess, servers: dict[str, object]
) -> None:
    ok, no = _srv(servers, "echo_ok"), _srv(servers, "echo_no")
    assert tunnel(proxy, f"{TWO}:{ok}") == (200, "", b"ping")
    status, body, _ = tunnel(proxy, f"{TWO}:{no}")
    assert (status, body) == (403, f"destination denied by rule 'connect-ports' ({TWO}:{no})")
    assert servers["echo_no"].connections_accepted == 0


def test_connect_to_a_denied_address(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    port = _srv(servers, "loop_v4")
    for target, shown in ((f"127.0.0.1:{port}", "127.0.0.1"), (f"2130706433:{port}", "127.0.0.1")):
        status, body, _ = tunnel(proxy, target)
        assert (status, body) == (
            403,
            f"destination denied by rule 'deny-loopback' ({shown}:{port})",
        )
    status, body, _ = tunnel(proxy, f"one.test:{_srv(servers, 'echo_ok')}")
    assert status == 403 and "deny-loopback" in body
    assert servers["loop_v4"].attempts() == 0


def test_curl_proxytunnel_denied(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    r = proxy.curl("-p", f"http://{TWO}:{_srv(servers, 'echo_no')}/")
    assert r.returncode != 0
    assert "403" in r.stderr


def test_allow_connect_port_flag_leaves_a_user_rule_of_the_same_name_alone(
    proxy_factory: Callable[..., ProxyProcess],
    tmp_path: Path,
    servers: dict[str, object],
) -> None:
    """--allow-connect-port widens the built-in 'connect-ports' rule; a rule of the config
    that happens to carry that name (here: plain requests to one port denied) is the
    config's own and keeps its meaning."""
    port = _srv(servers, "two_b")
    cfg = tmp_path / "named.yaml"
    cfg.write_text(
        GATEWAY
        + "---\n"
        + vs(
            "named",
            ["*"],
            f"""
            destinationPolicy:
              rules: [{{name: connect-ports, action: DENY, ports: [{port}], connect: false}}]
            """,
        )
    )
    p = proxy_factory("-c", str(cfg), "--allow-connect-port", "8443")
    before = len(servers["two_b"].requests)  # type: ignore[attr-defined]
    status, body = get(p, f"http://{TWO}:{port}/echo")
    assert (status, body) == (403, f"destination denied by rule 'connect-ports' ({TWO}:{port})")
    assert len(servers["two_b"].requests) == before  # type: ignore[attr-defined]


def test_empty_connect_ports_allows_no_connect(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path, servers: dict[str, object]
) -> None:
    """``connectPorts`` lists the ports CONNECT may reach: an empty list is none of them,
    not "any port"."""
    cfg = tmp_path / "ports.yaml"
    cfg.write_text(GATEWAY + "---\n" + vs("ports", ["*"], "destinationPolicy: {connectPorts: []}"))
    p = proxy_factory("-c", str(cfg))
    target = f"{TWO}:{_srv(servers, 'echo_ok')}"
    status, body, _ = tunnel(p, target)
    assert (status, body) == (403, f"destination denied by rule 'connect-ports' ({target})")
    assert get(p, f"http://{TWO}:{_srv(servers, 'two')}/echo")[0] == 200


# ---------------------------------------------------------------------------- source, RBAC
def test_client_cidr_deny(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    status, body = get(proxy, f"http://src-deny.test:{_srv(servers, 'two')}/")
    assert (status, body) == (403, "source denied by rule 'deny-local-clients' (127.0.0.1)")


def test_client_cidr_allow(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    status, _ = get(proxy, f"http://src-allow.test:{_srv(servers, 'two')}/echo")
    assert status == 200


def test_gloo_rbac_permissions_and_jwt_principal(
    proxy: ProxyProcess, servers: dict[str, object]
) -> None:
    url = f"http://rbac.test:{_srv(servers, 'two')}/echo"
    assert get(proxy, url)[0] == 200  # policy "readers": any GET
    # POST: only "alice" (a JWT principal) may; no JWT here, so Envoy's denial.
    assert get(proxy, url, "POST") == (403, "RBAC: access denied")


def test_stats_and_log(proxy: ProxyProcess, servers: dict[str, object]) -> None:
    port = _srv(servers, "loop_v4")
    get(proxy, f"http://one.test:{port}/")
    status, body = proxy.admin_get("/stats")
    assert status == 200
    stats = dict(
        line.split(": ", 1) for line in body.decode().splitlines() if line.count(": ") == 1
    )
    prefix = "http.gateway-proxy.rbac."
    assert int(stats[prefix + "denied"]) >= 1
    assert int(stats[prefix + "allowed"]) >= 1
    assert int(stats[prefix + "policy.deny-loopback.denied"]) >= 1
    assert "destination denied by rule 'deny-loopback'" in proxy.stderr_text()


# ---------------------------------------------------------------------------- embedded default
def launch_embedded(tmp_path: Path, dns: DNSTestServer, *flags: str) -> ProxyProcess:
    """The embedded default (no -c) without the test fixture's loopback allowance."""
    ports, log = tmp_path / "p.ports.json", tmp_path / "p.access.log"
    argv = proxy_command(ports_file=ports, access_log=log, dns_resolver=dns.address)
    for i in range(len(argv) - 1, -1, -1):  # drop LOOPBACK_ALLOWED
        if argv[i] == LOOPBACK_ALLOWED[0] and argv[i + 1] in LOOPBACK_ALLOWED:
            del argv[i : i + 2]
    p = ProxyProcess([*argv, *flags], workdir=tmp_path, ports_file=ports, access_log=log)
    return p.start()


@pytest.fixture
def embedded(tmp_path: Path, dns_server: DNSTestServer) -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for p in started:
        p.stop()


def test_embedded_default_refuses_loopback_and_connect_to_other_ports(
    tmp_path: Path, dns_server: DNSTestServer, embedded: list[ProxyProcess]
) -> None:
    p = launch_embedded(tmp_path, dns_server, "--access-log-format", "json")
    embedded.append(p)
    with sentinels(("127.0.0.1", 0)) as (s,):
        r = curl("-x", p.url, f"http://127.0.0.1:{s.port}/")
        assert r.http_code == 403
        assert r.text == f"destination denied by rule 'deny-loopback' (127.0.0.1:{s.port})"
        status, body, _ = tunnel(p, f"127.0.0.1:{s.port}")
        assert (status, body) == (
            403,
            f"destination denied by rule 'deny-loopback' (127.0.0.1:{s.port})",
        )
        assert s.attempts() == 0
    # CONNECT to a port other than 443 is refused before DNS.
    status, body, _ = tunnel(p, "somewhere.test:8000")
    assert (status, body) == (
        403,
        "destination denied by rule 'connect-ports' (somewhere.test:8000)",
    )
    assert dns_server.count("somewhere.test") == 0
    # Port 443 passes the port rule; the name resolves to loopback (*.test): denied there.
    status, body, _ = tunnel(p, "somewhere.test:443")
    assert (status, body) == (403, "destination denied by rule 'deny-loopback' (127.0.0.1:443)")
    p.wait_for_access_log(4)
    logged = [e["response_code_details"] for e in p.access_log_json()]
    assert logged[0] == "rbac_access_denied_matched_policy[deny-loopback]"
    assert "rbac_access_denied_matched_policy[connect-ports]" in logged


def test_embedded_default_with_allow_flags(
    tmp_path: Path,
    dns_server: DNSTestServer,
    embedded: list[ProxyProcess],
) -> None:
    origin = OriginServer(TWO).start()
    echo = TcpEchoServer(TWO).start()
    try:
        p = launch_embedded(tmp_path, dns_server, "--allow-destination", TWO)
        embedded.append(p)
        r = curl("-x", p.url, f"http://{TWO}:{origin.port}/echo")
        assert r.http_code == 200
        # An allowed address takes any port, CONNECT included.
        assert tunnel(p, f"{TWO}:{echo.port}") == (200, "", b"ping")
        with sentinels(("127.0.0.1", 0)) as (s,):
            status, body = get(p, f"http://127.0.0.1:{s.port}/")
            assert status == 403 and "deny-loopback" in body
            assert s.attempts() == 0
    finally:
        origin.stop()
        echo.stop()


def test_an_ipv6_allow_does_not_open_ipv4_through_its_mapped_spelling(
    tmp_path: Path, dns_server: DNSTestServer, embedded: list[ProxyProcess]
) -> None:
    """``::ffff:127.0.0.1`` is the IPv4 address 127.0.0.1 (RFC 4291 §2.5.5.2: a dual-stack
    socket connects there), so allowing every IPv6 destination must not allow it."""
    p = launch_embedded(tmp_path, dns_server, "--allow-destination", "::/0")
    embedded.append(p)
    with sentinels(("127.0.0.1", 0)) as (s,):
        for host in ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]"):
            r = curl("-x", p.url, "--max-time", "5", f"http://{host}:{s.port}/")
            assert r.http_code == 403, (host, r.http_code, r.text)
            assert r.text == f"destination denied by rule 'deny-loopback' ({host}:{s.port})"
        assert s.attempts() == 0


def test_the_test_fixture_allows_loopback(
    proxy_factory: object, origin: OriginServer, tcp_echo_server: TcpEchoServer
) -> None:
    """The shared fixture passes --allow-destination for loopback to the embedded default."""
    assert callable(proxy_factory)
    p = proxy_factory()
    assert curl("-x", p.url, origin.url("/echo")).http_code == 200
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("CONNECT", tcp_echo_server.authority).status == 200
