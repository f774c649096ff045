"""DLP through a real dfproxy process (dfproxy.filters.dlp): response bodies masked whatever
the origin's framing (Content-Length, chunked, close-delimited) and for HTTP/1.0 clients,
HEAD/204/304 untouched, listener rules against a route override, access-log masking,
compressed responses, shadow counts. One proxy for the module; virtual services are told
apart by domain (``*.test`` resolves to 127.0.0.1, the module's origin)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import shared_proxy
from tests.helpers import check_alive, module_proxy
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]

BODY = '{"fakevisa": "4397945340344828", "ssn": "123-45-6789", "id": 14397945340344828}'
MASKED = '{"fakevisa": "XXXXXXXXXXXX4828", "ssn": "XXX-XX-X789", "id": 14397945340344828}'

CONFIG = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {name: gw, namespace: gloo-system}
spec:
  bindAddress: 127.0.0.1
  httpGateway:
    options:
      dynamicForwardProxy: {}
      dlp:
        enabledFor: ALL
        dlpRules:
        - matcher: {prefix: /say}
          actions: [{actionType: SSN}, {actionType: ALL_CREDIT_CARDS}]
        - matcher: {prefix: /echo}
          actions: [{actionType: SSN}]
        - matcher: {prefix: /status}
          actions: [{actionType: SSN}]
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: listener-rules, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: route-override, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['override.test', 'override.test:*']
    routes:
    - matchers: [{prefix: /say/cl/seed}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        prefixRewrite: /say/cl
        dlp:
          actions: [{actionType: SSN}, {actionType: ALL_CREDIT_CARDS}]
    - matchers: [{prefix: /say/cl/shadow}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        prefixRewrite: /say/cl
        dlp:
          actions: [{actionType: SSN, shadow: true}]
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        dlp:
          actions:
          - customAction: {maskChar: Y, percent: {value: 60}, regex: [hello, world]}
---
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: logs-only, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['logs.test', 'logs.test:*']
    routes:
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
    options:
      dlp:
        enabledFor: ACCESS_LOGS
        actions:
        - actionType: KEYVALUE
          keyValueAction: {keyToMask: user-agent, maskChar: '*', percent: {value: 100}}
        - actionType: SSN
"""


dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin


@pytest.fixture(scope="module")
def dlp_proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, shared_origin: OriginServer
) -> Iterator[ProxyProcess]:
    with module_proxy(tmp_path_factory, dns_server, "uvloop", config=CONFIG) as p:
        yield p


@pytest.fixture
def get(
    dlp_proxy: ProxyProcess, shared_origin: OriginServer
) -> Iterator[Callable[..., RawResponse]]:
    """``get(host, path, headers=None, method="GET", version="HTTP/1.1")`` through the proxy
    (absolute form) to the module's origin, on a connection of its own."""

    def request(
        host: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        method: str = "GET",
        version: str = "HTTP/1.1",
    ) -> RawResponse:
        with RawClient("127.0.0.1", dlp_proxy.port) as c:
            target = f"http://{host}:{shared_origin.port}{path}"
            return c.request(method, target, headers, version=version)

    yield request
    check_alive(dlp_proxy)


def say(framing: str, text: str = BODY, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"/say/{framing}?text={quote(text)}{extra}"


def stat(p: ProxyProcess, name: str) -> int:
    status, body = p.admin_get("/stats")
    assert status == 200
    for line in body.decode().splitlines():
        key, _, value = line.rpartition(": ")
        if key == name:
            return int(value)
    return 0


def log_line_with(p: ProxyProcess, fragment: str) -> str:
    for _ in range(3):
        try:
            p.wait_for_access_log(len(p.access_log_lines()) + 1, timeout=2.0)
        except TimeoutError:
            pass
        for line in p.access_log_lines():
            if fragment in line:
                return line
    raise AssertionError(f"no access-log line with {fragment!r}: {p.access_log_lines()[-5:]}")


# -- response bodies -------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["cl", "chunked", "close"])
def test_body_is_masked_whatever_the_origin_framing(
    get: Callable[..., RawResponse], framing: str
) -> None:
    resp = get("a.test", say(framing))
    assert resp.status == 200
    assert resp.body == MASKED.encode()
    # The length may change under a body filter: re-framed as chunked for HTTP/1.1.
    assert resp.header("content-length") is None
    assert resp.framing == "chunked"


@pytest.mark.parametrize("framing", ["cl", "chunked", "close"])
def test_http10_client_gets_a_masked_close_delimited_body(
    get: Callable[..., RawResponse], framing: str
) -> None:
    resp = get("a.test", say(framing), version="HTTP/1.0")
    assert resp.status == 200
    assert resp.body == MASKED.encode()
    assert resp.framing == "close" and resp.header("content-length") is None


@pytest.mark.parametrize("chunk", [3, 7, 20])
def test_matches_split_across_origin_pieces_are_masked(
    get: Callable[..., RawResponse], chunk: int
) -> None:
    resp = get("a.test", say("chunked", chunk=str(chunk)))
    assert resp.body == MASKED.encode()


def test_large_body_is_masked_and_streams(get: Callable[..., RawResponse]) -> None:
    text = (BODY + "\n") * 300  # about 25 KB, several reads
    resp = get("a.test", say("chunked", text, chunk="4000"))
    assert resp.body == ((MASKED + "\n") * 300).encode()


def test_head_204_and_304_keep_their_framing_on_one_connection(
    dlp_proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    base = f"http://a.test:{shared_origin.port}"
    with RawClient("127.0.0.1", dlp_proxy.port) as c:
        head = c.request("HEAD", base + say("cl"))
        assert head.status == 200 and head.body == b""
        assert head.header("content-length") == str(len(BODY))  # a HEAD keeps it
        for code in (204, 304):
            resp = c.request("GET", f"{base}/status/{code}")
            assert resp.status == code and resp.body == b"" and resp.keep_alive
        # The connection is still in step: the next response is the right one, masked.
        resp = c.request("GET", base + say("chunked"))
        assert resp.body == MASKED.encode()


def test_listener_rule_without_a_match_leaves_the_body(get: Callable[..., RawResponse]) -> None:
    resp = get("a.test", "/response-headers?x=1")  # neither /say nor /echo
    assert resp.status == 200 and resp.body == b"ok\n"


def test_listener_rules_first_match_and_accept_encoding_removed(
    get: Callable[..., RawResponse],
) -> None:
    resp = get(
        "a.test",
        "/echo",
        [("x-card", "4397945340344828"), ("x-ssn", "123-45-6789"), ("accept-encoding", "gzip")],
    )
    text = resp.body.decode() if resp.body else ""
    assert "XXX-XX-X789" in text and "123-45-6789" not in text
    assert "4397945340344828" in text  # the /echo rule has SSN only
    headers = {k.lower() for k, _ in json.loads(text)["headers"]}
    assert "accept-encoding" not in headers  # the origin is asked for identity


def test_route_override_replaces_the_listener_rules(get: Callable[..., RawResponse]) -> None:
    resp = get("override.test", say("cl", "hello world 123-45-6789"))
    assert resp.body == b"YYYlo YYYld 123-45-6789"


def test_seed_route_masks_the_guide_response(get: Callable[..., RawResponse]) -> None:
    # The blog seed's route options and the DLP guide's response, through a route config.
    guide = '{\n   "fakevisa": "4397945340344828",\n   "ssn": "123-45-6789"\n}'
    resp = get("override.test", say("cl/seed", guide))
    assert resp.body == b'{\n   "fakevisa": "XXXXXXXXXXXX4828",\n   "ssn": "XXX-XX-X789"\n}'


def test_shadow_action_counts_and_leaves_the_body(
    get: Callable[..., RawResponse], dlp_proxy: ProxyProcess
) -> None:
    before = stat(dlp_proxy, "http.gw.dlp.ssn.shadowed")
    resp = get(
        "override.test",
        say("cl/shadow", "a 123-45-6789 b 987-65-4321").replace(
            "/say/cl/shadow", "/say/cl/shadow", 1
        ),
    )
    assert resp.body == b"a 123-45-6789 b 987-65-4321"
    assert stat(dlp_proxy, "http.gw.dlp.ssn.shadowed") == before + 2


def test_compressed_response_passes_unmasked_and_is_counted(
    get: Callable[..., RawResponse], dlp_proxy: ProxyProcess
) -> None:
    before = stat(dlp_proxy, "http.gw.dlp.compressed_passthrough")
    resp = get("a.test", say("cl", ce="gzip"))
    assert resp.body == BODY.encode()
    assert stat(dlp_proxy, "http.gw.dlp.compressed_passthrough") == before + 1


def test_matches_are_counted_per_action(
    get: Callable[..., RawResponse], dlp_proxy: ProxyProcess
) -> None:
    ssn = stat(dlp_proxy, "http.gw.dlp.ssn.matched")
    cards = stat(dlp_proxy, "http.gw.dlp.all_credit_cards.matched")
    get("a.test", say("cl"))
    assert stat(dlp_proxy, "http.gw.dlp.ssn.matched") == ssn + 1
    assert stat(dlp_proxy, "http.gw.dlp.all_credit_cards.matched") == cards + 1


# -- access logs --------------------------------------------------------------------------------
def test_access_log_masks_logged_values_with_enabled_for_all(
    get: Callable[..., RawResponse], dlp_proxy: ProxyProcess
) -> None:
    get("a.test", "/say/cl?text=x&ssn=123-45-6789", [("user-agent", "agent 987-65-4321")])
    line = log_line_with(dlp_proxy, "ssn=XXX-XX-X789")
    assert "123-45-6789" not in line
    assert '"agent XXX-XX-X321"' in line


def test_access_logs_only_masks_the_log_not_the_body(
    get: Callable[..., RawResponse], dlp_proxy: ProxyProcess
) -> None:
    resp = get("logs.test", say("cl", "ssn_123-45-6789", tag="kv"), [("user-agent", "test-value")])
    assert resp.body == b"ssn_123-45-6789"
    assert resp.header("content-length") == "15"  # no body filter: framing untouched
    line = log_line_with(dlp_proxy, "tag=kv")
    assert '"****-*****"' in line  # KEYVALUE on user-agent, maskChar *, 100%
    assert "XXX-XX-X789" in line and "123-45-6789" not in line


# -- reload ------------------------------------------------------------------------------------
def test_bad_dlp_config_on_reload_is_refused_and_the_old_one_keeps_masking(
    tmp_path: Path, proxy_factory: ProxyFactory, shared_origin: OriginServer
) -> None:
    path = tmp_path / "dlp.yaml"
    path.write_text(CONFIG)
    p = proxy_factory("-c", str(path))
    target = f"http://a.test:{shared_origin.port}{say('cl')}"
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("GET", target).body == MASKED.encode()
    path.write_text(CONFIG.replace("{actionType: SSN}", "{actionType: SSN, shadow: maybe}", 1))
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while stat(p, "server.config_reload_rejected") < 1:
        assert time.monotonic() < deadline, p.stderr_tail(30)
        time.sleep(0.05)
    status, body = p.admin_get("/config_status")
    assert status == 200
    assert "spec.httpGateway.options.dlp.dlpRules[0].actions[0].shadow" in body.decode()
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("GET", target).body == MASKED.encode()
