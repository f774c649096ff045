"""Proxy authentication through the real proxy: ``Proxy-Authorization: Basic`` against an
htpasswd file (bcrypt and {SHA}) and a static user list, 407 flows with curl ``--proxy-user``
for plain requests and CONNECT (``curl -p``), the credential never reaching the origin, every
request authenticated on its own (keep-alive), per-route ``disable``, and the per-address
failure limit (tested from other loopback source addresses, 127.0.0.N, so the limit does not
touch the other tests' 127.0.0.1).

One proxy on uvloop for the module; the hash check off the loop (run_in_executor) also runs
in-process on plain asyncio (test below), and the data path runs on both loops elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from dfproxy.auth.htpasswd import PasswordHash, parse_hash
from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.filters import CONTINUE, STOP, proxy_auth
from dfproxy.filters.proxy_auth import ProxyAuthConfig, ProxyAuthFilter
from dfproxy.stats import StatsStore
from dfproxy.stream import DONE, FILTERING
from tests import shared_proxy
from tests.helpers import (
    admin_stats,
    assert_no_traceback,
    check_alive,
    module_proxy,
    wait_until,
)
from tests.support.clients import RawClient, curl
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import DFP_ROUTE, gateway, virtual_service
from tests.support.gloo_yaml import config as config_of
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

ALICE_PW = "wonder land"  # bcrypt entry ($2y$, cost 4: fast tests)
BOB_PW = "b0b"  # {SHA} entry
CAROL_PW = "carol-pw"  # static user list, bcrypt $2b$
ERIN_PW = "erin-pw"  # bcrypt, used by one test only (never cached before it runs)


def sha_entry(password: str) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def bcrypt_entry(password: str, prefix: bytes = b"$2y$") -> str:
    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
    return (prefix + h[4:]).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def config(htpasswd: Path) -> str:
    listener = f"""
    proxyAuth:
      realm: dfproxy test
      htpasswdFile: {htpasswd}
      users: [{{name: carol, passwordHash: '{bcrypt_entry(CAROL_PW, b"$2b$")}'}}]
      failureLimit: {{maxFailures: 3, window: 60s}}
    """
    routes = """
    - matchers: [{connectMatcher: {}}]
      routeAction: {dynamicForwardProxy: {}}
      options: {upgrades: [{connectTerminate: {enabled: true}}]}
    - matchers: [{prefix: /public}]
      directResponseAction: {status: 200, body: public}
      options: {proxyAuth: {disable: true}}
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
    """
    return config_of(
        gateway(listener, connect=True),
        virtual_service(
            "open",
            ["open.test", "open.test:*"],
            DFP_ROUTE,
            "proxyAuth: {disable: true}",
        ),
        virtual_service("all", ["*"], routes),
    )


dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin


@pytest.fixture(scope="module")
def auth_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DNSTestServer,
) -> Iterator[ProxyProcess]:
    d = tmp_path_factory.mktemp("proxyauth")
    htpasswd = d / "htpasswd"
    htpasswd.write_text(
        f"# test users\nalice:{bcrypt_entry(ALICE_PW)}\n\nbob:{sha_entry(BOB_PW)}\n"
        f"erin:{bcrypt_entry(ERIN_PW)}\n"
    )
    path = d / "gw.yaml"
    path.write_text(config(htpasswd))
    with module_proxy(tmp_path_factory, dns_server, "uvloop", "-c", str(path)) as p:
        yield p
        assert_no_traceback(p)


@pytest.fixture
def proxy(auth_proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    yield auth_proxy
    check_alive(auth_proxy)


stats = admin_stats


def test_bcrypt_sha_and_static_users_are_accepted(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://users.test:{shared_origin.port}/echo"
    for user, password in (("alice", ALICE_PW), ("bob", BOB_PW), ("carol", CAROL_PW)):
        r = proxy.curl("--proxy-user", f"{user}:{password}", url)
        assert r.http_code == 200, (user, r.stdout, r.stderr)
        # The credential is hop-by-hop: it never reaches the origin.
        names = [n.lower() for n, _ in r.json()["headers"]]
        assert "proxy-authorization" not in names


def test_missing_credentials_get_407_with_the_challenge(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    before = len(shared_origin.requests)
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("GET", f"http://x.test:{shared_origin.port}/echo")
    assert r.status == 407
    assert r.header("proxy-authenticate") == 'Basic realm="dfproxy test", charset="UTF-8"'
    assert r.text == "User authentication failed. Missing username and password."
    assert len(shared_origin.requests) == before


def test_wrong_password_unknown_user_and_garbage_get_407(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    before = len(shared_origin.requests)
    url = f"http://x.test:{shared_origin.port}/echo"
    bad = [
        basic("alice", "nope"),  # bcrypt, wrong
        basic("bob", "nope"),  # SHA, wrong
        basic("mallory", "x"),  # no such user
        "Basic !!notbase64!!",
        "Bearer abc",
    ]
    for i, value in enumerate(bad):
        # Each from its own address: the failure limit (3) is not what is tested here.
        r = curl(
            "--interface", f"127.0.0.{20 + i}", "-x", proxy.url,
            "-H", f"Proxy-Authorization: {value}", url,
        )  # fmt: skip
        assert r.http_code == 407, (value, r.stdout)
        assert r.text == "User authentication failed. Invalid username/password combination."
    assert len(shared_origin.requests) == before  # nothing was forwarded
    s = stats(proxy)
    assert s["http.gateway-proxy.proxy_auth.denied"] >= len(bad)


def test_connect_requires_credentials(proxy: ProxyProcess, shared_origin: OriginServer) -> None:
    url = f"http://tunnel.test:{shared_origin.port}/echo"
    r = proxy.curl("-p", url)
    assert r.info is not None and r.info["http_connect"] == 407, r.stderr
    r = proxy.curl("-p", "--proxy-user", f"alice:{ALICE_PW}", url)
    assert r.http_code == 200, r.stderr
    assert r.info is not None and r.info["http_connect"] == 200
    # Through the tunnel the origin sees curl's own request: no credential in it.
    assert "proxy-authorization" not in [n.lower() for n, _ in r.json()["headers"]]


def test_connect_407_closes_the_connection(proxy: ProxyProcess) -> None:
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("CONNECT", "tunnel.test:443", {"Proxy-Authorization": basic("bob", "no")})
        assert r.status == 407
        assert r.header("proxy-authenticate") is not None
        assert r.header("connection") == "close"
        assert c.recv() == b""


def test_keep_alive_second_request_without_credentials_is_refused(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://ka.test:{shared_origin.port}/echo"
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("GET", url, {"Proxy-Authorization": basic("alice", ALICE_PW)})
        assert r.status == 200
        r = c.request("GET", url, {"Proxy-Authorization": basic("alice", ALICE_PW)})
        assert r.status == 200  # the verified-credential cache (same bytes)
        r = c.request("GET", url)
        assert r.status == 407  # same connection, same address: asked again
        r = c.request("GET", url, {"Proxy-Authorization": basic("alice", "wrong")})
        assert r.status == 407
    assert stats(proxy)["http.gateway-proxy.proxy_auth.cache_hit"] >= 1


def test_disabled_virtual_host_and_route_need_no_credentials(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("GET", f"http://open.test:{shared_origin.port}/echo")
        assert r.status == 200
        r = c.request("GET", f"http://x.test:{shared_origin.port}/public")
        assert (r.status, r.text) == (200, "public")


def test_failures_from_one_address_are_rate_limited(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://x.test:{shared_origin.port}/echo"

    def attempt(source: str, password: str) -> int:
        r = curl(
            "--interface", source, "-x", proxy.url,
            "--proxy-user", f"alice:{password}", url,
        )  # fmt: skip
        assert r.http_code is not None, r.stderr
        return r.http_code

    codes = [attempt("127.0.0.9", "guess") for _ in range(3)]
    assert codes == [407, 407, 407]
    # The limit is reached: no more checks, even with the right password.
    r = curl(
        "--interface", "127.0.0.9", "-x", proxy.url,
        "--proxy-user", f"alice:{ALICE_PW}", url,
    )  # fmt: skip
    assert r.http_code == 429
    assert "too many failed proxy authentication attempts" in r.text
    # Another address is not affected.
    assert attempt("127.0.0.10", ALICE_PW) == 200
    assert stats(proxy)["http.gateway-proxy.proxy_auth.rate_limited"] >= 1


# ---------------------------------------------------------------------------- config errors
def load_errors(tmp_path: Path, options: str, htpasswd: str | None = None) -> list[str]:
    if htpasswd is not None:
        (tmp_path / "htpasswd").write_text(htpasswd)
    proxy_auth = "proxyAuth:\n" + textwrap.indent(textwrap.dedent(options), "  ")
    gw = gateway(proxy_auth, name="gw")
    path = tmp_path / "gw.yaml"
    path.write_text(gw)
    with pytest.raises(ConfigError) as info:
        load_paths([str(path)])
    return info.value.errors


def test_htpasswd_errors_name_the_line(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        f"htpasswdFile: {tmp_path / 'htpasswd'}\n",
        "ok:{SHA}" + sha_entry("x")[5:] + "\n"
        "apr:$apr1$abcdefgh$0123456789abcdefghijkl\n"
        "# comment\n"
        "nocolon\n"
        "crypt:$6$salt$hash\n"
        "plain:secret\n",
    )
    text = "\n".join(errors)
    assert "spec.httpGateway.options.proxyAuth.htpasswdFile" in text
    assert "line 2: user 'apr': MD5-apr1 ($apr1$) hashes are not supported" in text
    assert "line 4: expected user:hash" in text
    assert "line 5: user 'crypt': crypt(3) hashes" in text
    assert "line 6: user 'plain': unrecognised password hash" in text
    assert len(errors) == 4, errors


def test_missing_file_and_bad_static_hash_are_config_errors(tmp_path: Path) -> None:
    errors = load_errors(tmp_path, f"htpasswdFile: {tmp_path / 'nope'}\n")
    assert any("cannot read" in e and "proxyAuth.htpasswdFile" in e for e in errors), errors
    errors = load_errors(tmp_path, "users: [{name: u, passwordHash: '$apr1$x$y'}]\n")
    assert any("proxyAuth.users[0].passwordHash" in e and "apr1" in e for e in errors), errors
    errors = load_errors(tmp_path, "realm: r\n")
    assert any("needs htpasswdFile or users" in e for e in errors), errors


# ---------------------------------------------------------------------------- reload
def test_reload_after_an_htpasswd_edit_drops_the_old_password(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path, origin: OriginServer
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{sha_entry('old')}\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(config(htpasswd))
    p = proxy_factory("-c", str(cfg))
    url = f"http://x.test:{origin.port}/echo"
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("GET", url, {"Proxy-Authorization": basic("bob", "old")}).status == 200
        version = active_version(p)
        htpasswd.write_text(f"bob:{sha_entry('new')}\n")  # the config file is unchanged
        p.send_signal(signal.SIGHUP)
        wait_until(lambda: active_version(p) != version, what="a reload")
        # Same connection, same bytes as the cached credential: checked against the new hash.
        assert c.request("GET", url, {"Proxy-Authorization": basic("bob", "old")}).status == 407
        assert c.request("GET", url, {"Proxy-Authorization": basic("bob", "new")}).status == 200


def active_version(p: ProxyProcess) -> str:
    status, body = p.admin_get("/config_status")
    assert status == 200
    return str(json.loads(body)["active"]["version"])


# ---------------------------------------------------------------------------- in-process
class FakeStream:
    """What the filter touches on a Stream; records the local reply or the resumption."""

    def __init__(self, credential: str | None, peer: str = "10.0.0.1:1000") -> None:
        self.start = time.monotonic()
        self.conn = types.SimpleNamespace(peer=peer)
        self.req = types.SimpleNamespace(
            proxy_authorization=credential.encode() if credential else None
        )
        self.method, self.target, self.details = b"GET", b"http://x/", ""
        self.state = FILTERING
        self.filter_state: dict[str, object] = {}
        self.reply: tuple[int, bytes] | None = None
        self.resumed = False
        self.on_resume: Callable[[], None] = lambda: None

    def state_dict(self) -> dict[str, object]:
        return self.filter_state

    def send_local_reply(self, status: int, body: bytes, **kw: object) -> None:
        self.reply = (status, body)
        self.state = DONE

    def resume_filters(self) -> None:
        self.resumed = True
        self.on_resume()


def test_bcrypt_checks_are_shared_per_credential_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    calls: list[bytes] = []

    def slow_verify(stored: PasswordHash, password: bytes) -> bool:
        calls.append(password)
        gate.wait(10)
        return password == b"right"

    monkeypatch.setattr(proxy_auth, "verify", slow_verify)
    stored = parse_hash(bcrypt_entry("right"))
    cfg = ProxyAuthConfig("r", {"u": stored}, 5, 60.0, 100, 5.0, 100, max_pending=1)
    shared, executor = proxy_auth._Shared(cfg), proxy_auth._Executor()
    f = ProxyAuthFilter(cfg, shared, executor, StatsStore(), "t.")

    async def scenario() -> list[FakeStream]:
        first, same = FakeStream(basic("u", "right")), FakeStream(basic("u", "right"))
        other = FakeStream(basic("u", "wrong"))
        assert f.on_request_headers(first) == STOP  # type: ignore[arg-type]
        assert f.on_request_headers(same) == STOP  # type: ignore[arg-type]
        assert f.on_request_headers(other) == STOP  # type: ignore[arg-type]
        assert other.reply is not None and other.reply[0] == 503  # maxPendingChecks: 1
        both = asyncio.Event()

        def resumed() -> None:
            if first.resumed and same.resumed:
                both.set()

        first.on_resume = same.on_resume = resumed
        gate.set()
        async with asyncio.timeout(5.0):
            await both.wait()
        return [first, same]

    try:
        streams = asyncio.run(scenario())
    finally:
        executor.close()
    assert calls == [b"right"]  # one bcrypt run for both requests
    assert all(s.filter_state == {"proxy_user": "u"} for s in streams)
    # Now cached: answered inline, no thread.
    again = FakeStream(basic("u", "right"))
    assert f.on_request_headers(again) == CONTINUE  # type: ignore[arg-type]
    assert calls == [b"right"]


def test_concurrent_guesses_from_one_address_cannot_exceed_the_failure_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failures are only known when a bcrypt check ends: guesses sent all at once (one per
    connection) must not all be checked before the first failure counts. With maxFailures
    3, at most 3 checks run for one address; the others get 429 without a check."""
    gate = threading.Event()
    calls: list[bytes] = []

    def slow_verify(stored: PasswordHash, password: bytes) -> bool:
        calls.append(password)
        gate.wait(10)
        return False

    monkeypatch.setattr(proxy_auth, "verify", slow_verify)
    stored = parse_hash(bcrypt_entry("right"))
    cfg = ProxyAuthConfig("r", {"u": stored}, 3, 60.0, 100, 5.0, 100, max_pending=64)
    shared, executor = proxy_auth._Shared(cfg), proxy_auth._Executor()
    f = ProxyAuthFilter(cfg, shared, executor, StatsStore(), "t.")

    async def scenario() -> tuple[list[FakeStream], FakeStream]:
        answered = asyncio.Event()
        streams: list[FakeStream] = []

        class Guess(FakeStream):
            def send_local_reply(self, status: int, body: bytes, **kw: object) -> None:
                super().send_local_reply(status, body, **kw)
                if all(s.reply is not None for s in streams):
                    answered.set()

        streams += [Guess(basic("u", f"guess{i}"), f"10.0.0.7:{i}") for i in range(10)]
        streams.append(Guess(basic("u", "other"), "10.0.0.8:1"))  # another address: checked
        for g in streams:
            assert f.on_request_headers(g) == STOP  # type: ignore[arg-type]
        gate.set()
        async with asyncio.timeout(5.0):
            await answered.wait()
        return streams[:-1], streams[-1]

    try:
        guesses, other = asyncio.run(scenario())
    finally:
        executor.close()
    codes = sorted(g.reply[0] for g in guesses if g.reply is not None)
    assert codes == [407] * 3 + [429] * 7
    assert other.reply is not None and other.reply[0] == 407
    assert len(calls) == 4  # three guesses from 10.0.0.7, one from 10.0.0.8
    # Once the checks ended, the address is limited as before.
    late = FakeStream(basic("u", "late"), "10.0.0.7:99")
    assert f.on_request_headers(late) == STOP  # type: ignore[arg-type]
    assert late.reply is not None and late.reply[0] == 429


def test_an_unknown_user_costs_a_bcrypt_check_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password for a bcrypt user is answered after a check of milliseconds; an
    unknown user must not be answered at once, or the delay tells which users exist."""
    gate = threading.Event()
    checked: list[tuple[PasswordHash, bytes]] = []

    def slow_verify(stored: PasswordHash, password: bytes) -> bool:
        checked.append((stored, password))
        gate.wait(10)
        return True  # even a "match" against the stand-in hash must not let anyone in

    monkeypatch.setattr(proxy_auth, "verify", slow_verify)
    alice = parse_hash(bcrypt_entry("right"))
    cfg = ProxyAuthConfig("r", {"alice": alice}, 5, 60.0, 100, 5.0, 100, max_pending=8)
    shared, executor = proxy_auth._Shared(cfg), proxy_auth._Executor()
    f = ProxyAuthFilter(cfg, shared, executor, StatsStore(), "t.")

    async def scenario() -> FakeStream:
        answered = asyncio.Event()

        class Probe(FakeStream):
            def send_local_reply(self, status: int, body: bytes, **kw: object) -> None:
                super().send_local_reply(status, body, **kw)
                answered.set()

        probe = Probe(basic("mallory", "x"))
        assert f.on_request_headers(probe) == STOP  # type: ignore[arg-type]
        assert probe.reply is None  # not answered before a check as costly as a real one
        gate.set()
        async with asyncio.timeout(5.0):
            await answered.wait()
        return probe

    try:
        probe = asyncio.run(scenario())
    finally:
        executor.close()
    assert probe.reply is not None and probe.reply[0] == 407
    assert probe.filter_state == {}
    ((stored, password),) = checked
    assert password == b"x" and stored.expensive
    assert stored.value[4:7] == alice.value[4:7]  # the same cost as the real entries


def test_request_body_waits_for_the_bcrypt_check(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    body = b"x" * 300_000
    with RawClient("127.0.0.1", proxy.port) as c:
        # A password no other test sends: not cached, so the check runs in the thread pool.
        headers = {"Proxy-Authorization": basic("erin", ERIN_PW)}
        r = c.request("POST", f"http://x.test:{shared_origin.port}/upload", headers, body)
    assert r.status == 200, r.text
    assert r.json()["length"] == len(body)


def test_access_log_shows_the_proxy_user(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path, origin: OriginServer
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{sha_entry(BOB_PW)}\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(config(htpasswd))
    p = proxy_factory("-c", str(cfg), "--access-log-format", "json")
    assert p.curl("--proxy-user", f"bob:{BOB_PW}", origin.url("/echo")).http_code == 200
    assert p.curl(origin.url("/echo")).http_code == 407
    p.wait_for_access_log(2)
    entries = p.access_log_json()
    assert [(e["response_code"], e["proxy_user"]) for e in entries] == [(200, "bob"), (407, None)]
    assert entries[1]["response_code_details"] == "proxy_auth_missing_credentials"
