"""Gloo configuration through the real proxy: the seed documents, every matcher, every action,
route options and Envoy's virtual-host domain order.

The seeds each get their own proxy (``proxy_factory("-c", seed)``). Everything else runs on
one proxy for the module, started with ``ROUTING_CONFIG``: one Gateway and a VirtualService
per feature, told apart by domain (``*.test`` resolves to 127.0.0.1 on the test DNS server,
so DFP routes reach the module's origin whatever name they use).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import shared_proxy
from tests.helpers import check_alive, module_proxy
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import gateway, virtual_service
from tests.support.origin import OriginServer, TcpEchoServer, websocket_accept
from tests.support.proxy import ProxyProcess

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ---------------------------------------------------------------------------- module fixtures
dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin
shared_echo = shared_proxy.shared_echo
vs = virtual_service


def direct(body: str) -> str:
    return f"directResponseAction: {{status: 200, body: {body}}}"


GATEWAY = gateway(connect=True)


def routing_config(origin_port: int, echo_port: int) -> str:
    resources = [
        GATEWAY,
        vs(
            "matchers",
            ["match.test", "*.match.test"],
            f"""
            - matchers:
              - prefix: /auth
                headers: [{{name: ':authority', value: 'auth[.]match[.]test:[0-9]+', regex: true}}]
              {direct("authority")}
            - matchers: [{{exact: /exact}}]
              {direct("exact")}
            - matchers: [{{regex: /ab}}]
              {direct("regex")}
            - matchers: [{{regex: '/rx[0-9]+', caseSensitive: false}}]
              {direct("regex-ci")}
            - matchers:
              - {{prefix: /CI, caseSensitive: false}}
              - {{exact: /Exact-CI, caseSensitive: false}}
              {direct("ci")}
            - matchers: [{{prefix: /hdr, headers: [{{name: x-val, value: 'yes'}}]}}]
              {direct("hdr-value")}
            - matchers: [{{prefix: /hdr, headers: [{{name: x-rx, value: 'a+b', regex: true}}]}}]
              {direct("hdr-regex")}
            - matchers: [{{prefix: /hdr, headers: [{{name: x-present}}]}}]
              {direct("hdr-present")}
            - matchers:
              - {{prefix: /hdr, headers: [{{name: x-inv, value: bad, invertMatch: true}}]}}
              {direct("hdr-invert")}
            - matchers: [{{prefix: /q, queryParameters: [{{name: k, value: v}}]}}]
              {direct("query-value")}
            - matchers:
              - {{prefix: /q, queryParameters: [{{name: r, value: '[0-9]+', regex: true}}]}}
              {direct("query-regex")}
            - matchers: [{{prefix: /q, queryParameters: [{{name: p}}]}}]
              {direct("query-present")}
            - matchers: [{{prefix: /m, methods: [POST, PUT]}}]
              {direct("methods")}
            - matchers: [{{exact: /or1}}, {{exact: /or2}}]
              {direct("or")}
            - matchers: [{{prefix: /and, methods: [GET], headers: [{{name: x-a}}]}}]
              {direct("and")}
            - matchers: [{{prefix: /}}]
              {direct("fallback")}
            """,
        ),
        vs(
            "actions",
            ["act.test"],
            """
            - matchers: [{prefix: /direct}]
              directResponseAction: {status: 418, body: "teapot\\n"}
            - matchers: [{prefix: /empty}]
              directResponseAction: {status: 204}
            - matchers: [{prefix: /redir/host}]
              redirectAction: {hostRedirect: new.test}
            - matchers: [{prefix: /redir/path}]
              redirectAction: {pathRedirect: /new/path, responseCode: FOUND}
            - matchers: [{prefix: /redir/prefix}]
              redirectAction: {prefixRewrite: /rewritten, responseCode: SEE_OTHER}
            - matchers: [{prefix: /redir/https}]
              redirectAction: {httpsRedirect: true, responseCode: TEMPORARY_REDIRECT}
            - matchers: [{prefix: /redir/strip}]
              redirectAction: {stripQuery: true, responseCode: PERMANENT_REDIRECT}
            - matchers: [{prefix: /api}]
              routeAction: {dynamicForwardProxy: {}}
              options: {prefixRewrite: /echo}
            - matchers: [{prefix: /Ci-Api, caseSensitive: false}]
              routeAction: {dynamicForwardProxy: {}}
              options: {prefixRewrite: /echo}
            - matchers: [{prefix: /mm, headers: [{name: x-never}]}, {prefix: /mm/long}]
              routeAction: {dynamicForwardProxy: {}}
              options: {prefixRewrite: /echo}
            - matchers: [{prefix: /hostrw}]
              routeAction: {dynamicForwardProxy: {}}
              options: {prefixRewrite: /echo, hostRewrite: rewritten.example}
            - matchers: [{prefix: /}]
              routeAction: {dynamicForwardProxy: {}}
            """,
        ),
        vs(
            "headers",
            ["hm.test"],
            """
            - matchers: [{prefix: /direct}]
              directResponseAction: {status: 200, body: direct}
              options:
                headerManipulation:
                  responseHeadersToAdd: [{header: {key: x-resp-added, value: r1}}]
            - matchers: [{prefix: /}]
              routeAction: {dynamicForwardProxy: {}}
              options:
                headerManipulation:
                  requestHeadersToAdd:
                  - {header: {key: x-added, value: one}}
                  - {header: {key: x-appended, value: two}, append: true}
                  - {header: {key: x-replaced, value: new}, append: false}
                  requestHeadersToRemove: [x-remove-me]
                  responseHeadersToAdd:
                  - {header: {key: x-resp-added, value: r1}}
                  - {header: {key: x-resp-replaced, value: new}, append: false}
                  responseHeadersToRemove: [x-resp-remove]
            """,
            options="""
            headerManipulation:
              requestHeadersToAdd: [{header: {key: x-vhost, value: v}}]
            """,
        ),
        vs(
            "websocket",
            ["ws.test"],
            """
            - matchers: [{prefix: /websocket, headers: [{name: x-no-ws}]}]
              routeAction: {dynamicForwardProxy: {}}
              options: {upgrades: [{websocket: {enabled: false}}]}
            - matchers: [{prefix: /}]
              routeAction: {dynamicForwardProxy: {}}
            """,
        ),
        vs(
            "dfp-host-rewrite",
            ["rw.test"],
            f"""
            - matchers: [{{prefix: /}}]
              routeAction: {{dynamicForwardProxy: {{hostRewrite: 'dest.test:{origin_port}'}}}}
            """,
        ),
        vs(
            "timeout",
            ["timeout.test"],
            """
            - matchers: [{prefix: /}]
              routeAction: {dynamicForwardProxy: {}}
              options: {timeout: 0.5s}
            """,
        ),
        vs("nothing", ["nothing.test"], f"- matchers: [{{exact: /only}}]\n  {direct('only')}"),
        vs(
            "connect",
            [f"ct.test:{echo_port}", "*.tun.test"],
            """
            - matchers: [{connectMatcher: {}}]
              routeAction: {dynamicForwardProxy: {}}
              options: {upgrades: [{connectTerminate: {enabled: true}}]}
            """,
        ),
        vs(
            "connect-not-terminated",
            ["noterm.test"],
            """
            - matchers: [{connectMatcher: {}}]
              routeAction: {dynamicForwardProxy: {}}
            - matchers: [{prefix: /}]
              directResponseAction: {status: 200, body: noterm}
            """,
        ),
        # Domain order: exact, then *.suffix (longest first), then prefix.* (longest first), *.
        vs("d-star", ["*"], f"- {direct('star')}"),
        vs("d-prefix", ["pre.*"], f"- {direct('prefix')}"),
        vs("d-suffix", ["*.order.test"], f"- {direct('suffix')}"),
        vs("d-exact", ["www.order.test"], f"- {direct('exact')}"),
        vs("d-prefix-long", ["pre.long.*"], f"- {direct('prefix-long')}"),
        vs("d-suffix-long", ["*.b.order.test"], f"- {direct('suffix-long')}"),
    ]
    return "---\n".join(resources)


@pytest.fixture(scope="module")
def routing_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DNSTestServer,
    shared_origin: OriginServer,
    shared_echo: TcpEchoServer,
) -> Iterator[ProxyProcess]:
    with module_proxy(
        tmp_path_factory,
        dns_server,
        "uvloop",
        config=routing_config(shared_origin.port, shared_echo.port),
    ) as p:
        yield p


@pytest.fixture
def get(
    routing_proxy: ProxyProcess, shared_origin: OriginServer
) -> Iterator[Callable[..., RawResponse]]:
    """``get(host, path, headers=None, method="GET")``: one absolute-form request through the
    routing proxy to ``http://host:<origin port>path``, on its own connection."""

    def request(
        host: str,
        path: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        method: str = "GET",
        port: int | None = None,
    ) -> RawResponse:
        authority = f"{host}:{shared_origin.port if port is None else port}"
        if port == 80:
            authority = host
        with RawClient("127.0.0.1", routing_proxy.port) as c:
            return c.request(method, f"http://{authority}{path}", headers)

    yield request
    check_alive(routing_proxy)


def echo_of(resp: RawResponse) -> dict[str, object]:
    assert resp.status == 200, (resp.status, resp.text)
    data = resp.json()
    assert isinstance(data, dict)
    return data


def header_values(seen: dict[str, object], name: str) -> list[str]:
    headers = seen["headers"]
    assert isinstance(headers, list)
    return [v for k, v in headers if k.lower() == name]


# ---------------------------------------------------------------------------- seeds
def test_seed_dfp_basic_auto_host_rewrite_header(
    proxy_factory: Callable[..., ProxyProcess], origin: OriginServer
) -> None:
    p = proxy_factory("-c", str(SEEDS / "dfp_basic.yaml"))
    dest = f"dest.test:{origin.port}"
    with RawClient("127.0.0.1", p.port) as c:
        # Origin-form, as `curl -H 'Host: foo' -H 'x-rewrite-me: ...' http://proxy/echo`.
        r = c.request("GET", "/echo", {"Host": "foo", "x-rewrite-me": dest})
        seen = echo_of(r)
        assert header_values(seen, "host") == [dest]
        assert seen["target"] == "/echo"
        # Absolute-form with the same Host on the same keep-alive connection.
        # Header names are case-insensitive.
        r = c.request("GET", "http://foo/echo?x=1", {"X-Rewrite-Me": f"other.test:{origin.port}"})
        seen = echo_of(r)
        assert header_values(seen, "host") == [f"other.test:{origin.port}"]
        assert seen["target"] == "/echo?x=1"
        # Another Host: no virtual host (the only domain is `foo`).
        r = c.request("GET", "/echo", {"Host": "bar", "x-rewrite-me": dest})
        assert r.status == 404
    assert len(origin.requests) == 2


def test_seed_dfp_connect_tunnel_and_no_plain_route(
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
    tcp_echo_server: TcpEchoServer,
) -> None:
    # The Gateway binds "::" port 8080; --listen 127.0.0.1:0 overrides the first Gateway.
    p = proxy_factory("-c", str(SEEDS / "dfp_connect.yaml"))
    target = f"tunnel.test:{tcp_echo_server.port}"
    with RawClient("127.0.0.1", p.port) as c:
        r = c.request("CONNECT", target)
        assert r.status == 200
        c.send(b"hello through the tunnel")
        assert c.recv_exact(24) == b"hello through the tunnel"
    # The VirtualService only has a connectMatcher route: a plain GET matches nothing.
    with RawClient("127.0.0.1", p.port) as c:
        r = c.request("GET", origin.url("/echo"))
        assert r.status == 404
    assert origin.requests == []


def test_seed_dfp_circuit_breakers_default_virtual_service(
    proxy_factory: Callable[..., ProxyProcess],
    origin: OriginServer,
    tcp_echo_server: TcpEchoServer,
) -> None:
    p = proxy_factory("-c", str(SEEDS / "dfp_circuit_breakers.yaml"))
    r = p.curl(f"http://cb.test:{origin.port}/echo")
    assert r.returncode == 0 and r.http_code == 200, r.stderr
    assert header_values(r.json(), "host") == [f"cb.test:{origin.port}"]
    with RawClient("127.0.0.1", p.port) as c:
        assert c.request("CONNECT", f"cb.test:{tcp_echo_server.port}").status == 200
        c.send(b"ping")
        assert c.recv_exact(4) == b"ping"
    status, body = p.admin_get("/clusters?format=json")
    assert status == 200
    [cluster] = json.loads(body)["cluster_statuses"]
    assert cluster["name"].startswith("solo_io_generated_dfp:")
    assert cluster["circuit_breakers"]["thresholds"][0] == {
        "priority": "DEFAULT",
        "max_connections": 40000,
        "max_pending_requests": 40000,
        "max_requests": 40000,
        "max_retries": 40000,
    }


# ---------------------------------------------------------------------------- matchers
MATCHER_CASES: list[tuple[str, str, dict[str, str] | list[tuple[str, str]], str]] = [
    ("/exact", "GET", {}, "exact"),
    ("/exact?q=1", "GET", {}, "exact"),  # the query is not part of the path
    ("/exact/", "GET", {}, "fallback"),
    ("/EXACT", "GET", {}, "fallback"),  # case-sensitive by default
    ("/ab", "GET", {}, "regex"),
    ("/ab?x=y", "GET", {}, "regex"),
    ("/abc", "GET", {}, "fallback"),  # regex is a full match
    ("/xab", "GET", {}, "fallback"),
    ("/RX12", "GET", {}, "regex-ci"),
    ("/rx1a", "GET", {}, "fallback"),
    ("/ci/x", "GET", {}, "ci"),
    ("/Ci/X", "GET", {}, "ci"),
    ("/exact-ci", "GET", {}, "ci"),
    ("/EXACT-CI", "GET", {}, "ci"),
    ("/hdr", "GET", {"x-val": "yes"}, "hdr-value"),
    ("/hdr", "GET", {"x-val": "yes!", "x-inv": "bad"}, "fallback"),
    ("/hdr", "GET", {"x-rx": "aaab", "x-inv": "bad"}, "hdr-regex"),
    ("/hdr", "GET", {"x-rx": "aaabc", "x-inv": "bad"}, "fallback"),  # full match
    ("/hdr", "GET", {"x-present": "", "x-inv": "bad"}, "hdr-present"),
    ("/hdr", "GET", {"x-present": "anything", "x-inv": "bad"}, "hdr-present"),
    ("/hdr", "GET", {"x-inv": "good"}, "hdr-invert"),
    ("/hdr", "GET", {"x-inv": "bad"}, "fallback"),
    # Envoy HeaderUtility::matchHeaders: an absent header never matches a value matcher,
    # inverted or not (only an inverted *presence* matcher matches an absent header).
    ("/hdr", "GET", {}, "fallback"),
    # Several values of one header are matched joined with "," (Envoy
    # HeaderUtility::getAllOfHeaderAsString): "yes,no" is not "yes".
    ("/hdr", "GET", [("x-val", "yes"), ("x-val", "no"), ("x-inv", "bad")], "fallback"),
    ("/q?k=v", "GET", {}, "query-value"),
    ("/q?k=w", "GET", {}, "fallback"),
    ("/q?a=1&r=123", "GET", {}, "query-regex"),
    ("/q?r=12a", "GET", {}, "fallback"),  # full match
    ("/q?p=", "GET", {}, "query-present"),
    ("/q?p=1", "GET", {}, "query-present"),
    ("/q", "GET", {}, "fallback"),
    ("/m", "POST", {}, "methods"),
    ("/m", "PUT", {}, "methods"),
    ("/m", "GET", {}, "fallback"),
    ("/or1", "GET", {}, "or"),
    ("/or2", "GET", {}, "or"),
    ("/and", "GET", {"x-a": "1"}, "and"),
    ("/and", "POST", {"x-a": "1"}, "fallback"),
    ("/and", "GET", {}, "fallback"),
]


def _case_id(case: tuple[str, str, dict[str, str] | list[tuple[str, str]], str]) -> str:
    path, method, headers, expected = case
    items = list(headers.items()) if isinstance(headers, dict) else headers
    hdrs = ",".join(f"{k}={v}" for k, v in items)
    return f"{method} {path} [{hdrs}] -> {expected}"


@pytest.mark.parametrize(
    ("path", "method", "headers", "expected"),
    MATCHER_CASES,
    ids=[_case_id(c) for c in MATCHER_CASES],
)
def test_matchers(
    get: Callable[..., RawResponse],
    path: str,
    method: str,
    headers: dict[str, str] | list[tuple[str, str]],
    expected: str,
) -> None:
    r = get("match.test", path, headers, method=method)
    assert (r.status, r.text) == (200, expected)


def test_authority_header_matcher(get: Callable[..., RawResponse]) -> None:
    """Gloo: to match the HTTP/1 Host, match on `:authority`."""
    assert get("auth.match.test", "/auth").text == "authority"
    assert get("match.test", "/auth").text == "fallback"


# ---------------------------------------------------------------------------- domains
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.order.test", "exact"),  # exact beats the *.order.test suffix wildcard
        ("WWW.Order.Test", "exact"),  # domains are case-insensitive
        ("x.order.test", "suffix"),
        ("x.b.order.test", "suffix-long"),  # longest suffix wildcard first
        ("pre.order.test", "suffix"),  # suffix wildcards beat prefix wildcards
        ("pre.zzz", "prefix"),
        ("pre.long.zzz", "prefix-long"),  # longest prefix wildcard first
        ("order.test", "star"),  # a wildcard never matches the empty string
        ("elsewhere.test", "star"),
    ],
)
def test_domain_selection_order(get: Callable[..., RawResponse], host: str, expected: str) -> None:
    r = get(host, "/")
    assert (r.status, r.text) == (200, expected)


def test_no_route_is_404(get: Callable[..., RawResponse]) -> None:
    assert get("nothing.test", "/only").text == "only"
    r = get("nothing.test", "/other")
    assert r.status == 404


# ---------------------------------------------------------------------------- CONNECT
def test_connect_is_matched_on_host_and_port(
    routing_proxy: ProxyProcess, shared_echo: TcpEchoServer
) -> None:
    for target in (f"ct.test:{shared_echo.port}", f"x.tun.test:{shared_echo.port}"):
        with RawClient("127.0.0.1", routing_proxy.port) as c:
            r = c.request("CONNECT", target)
            assert r.status == 200, target
            c.send(target.encode())
            assert c.recv_exact(len(target)) == target.encode()
    # Same host, another port: the `ct.test:<port>` domain does not match, `*` does, and the
    # `*` virtual host has no connectMatcher route.
    with RawClient("127.0.0.1", routing_proxy.port) as c:
        r = c.request("CONNECT", f"ct.test:{shared_echo.port + 1}")
        assert r.status == 404
    check_alive(routing_proxy)


def test_connect_to_route_without_connect_terminate_is_403(
    routing_proxy: ProxyProcess, shared_echo: TcpEchoServer
) -> None:
    before = shared_echo.connections_accepted
    with RawClient("127.0.0.1", routing_proxy.port) as c:
        r = c.request("CONNECT", "noterm.test:443")
        assert r.status == 403
        assert r.body == b""
        assert c.is_closed_by_peer(5.0)
    with RawClient("127.0.0.1", routing_proxy.port) as c:
        r = c.request("GET", "http://noterm.test/x")
        assert (r.status, r.text) == (200, "noterm")
    assert shared_echo.connections_accepted == before
    check_alive(routing_proxy)


# ---------------------------------------------------------------------------- actions
def test_direct_response(get: Callable[..., RawResponse]) -> None:
    r = get("act.test", "/direct/x?y=1")
    assert r.status == 418
    assert r.body == b"teapot\n"
    assert r.header("content-length") == "7"
    r = get("act.test", "/empty")
    assert r.status == 204
    assert r.body == b""


@pytest.mark.parametrize(
    ("path", "code", "location"),
    [
        ("/redir/host/p?q=1", 301, "http://new.test/redir/host/p?q=1"),
        ("/redir/path/x?q=1", 302, "http://act.test/new/path?q=1"),
        ("/redir/prefix/x?q=1", 303, "http://act.test/rewritten/x?q=1"),
        ("/redir/https/x", 307, "https://act.test/redir/https/x"),
        ("/redir/strip/x?q=1&r=2", 308, "http://act.test/redir/strip/x"),
    ],
)
def test_redirect(get: Callable[..., RawResponse], path: str, code: int, location: str) -> None:
    r = get("act.test", path, port=80)
    assert r.status == code
    assert r.header("location") == location


def test_redirect_keeps_a_non_default_port(get: Callable[..., RawResponse]) -> None:
    """Envoy keeps the request's port unless a host or port redirect replaces it, or it is
    the default port of the original scheme (RouteEntryImplBase::processRequestHost)."""
    r = get("act.test", "/redir/path", port=8081)
    assert (r.status, r.header("location")) == (302, "http://act.test:8081/new/path")
    r = get("act.test", "/redir/host", port=8081)
    assert (r.status, r.header("location")) == (301, "http://new.test/redir/host")
    r = get("act.test", "/redir/https", port=8081)
    assert (r.status, r.header("location")) == (307, "https://act.test:8081/redir/https")


def test_forward_with_prefix_rewrite(
    get: Callable[..., RawResponse], shared_origin: OriginServer
) -> None:
    seen = echo_of(get("act.test", "/api?x=1"))
    assert seen["target"] == "/echo?x=1"
    assert header_values(seen, "host") == [f"act.test:{shared_origin.port}"]


def test_prefix_rewrite_on_a_case_insensitive_prefix(get: Callable[..., RawResponse]) -> None:
    """Envoy replaces the matched prefix whatever its case (StartsWithIgnoreCase)."""
    assert echo_of(get("act.test", "/ci-api?z=1"))["target"] == "/echo?z=1"
    assert echo_of(get("act.test", "/CI-API"))["target"] == "/echo"


def test_prefix_rewrite_uses_the_matcher_that_matched(get: Callable[..., RawResponse]) -> None:
    """Each Gloo matcher is its own Envoy route: the prefix replaced is the one of the matcher
    that matched (`/mm/long`), not the first prefix the path happens to start with (`/mm`)."""
    assert echo_of(get("act.test", "/mm/long"))["target"] == "/echo"
    assert echo_of(get("act.test", "/mm", {"x-never": "1"}))["target"] == "/echo"


def test_route_host_rewrite_changes_only_the_forwarded_host(
    get: Callable[..., RawResponse], shared_origin: OriginServer, dns_server: DNSTestServer
) -> None:
    since = len(dns_server.queries)
    seen = echo_of(get("act.test", "/hostrw"))
    assert seen["target"] == "/echo"
    assert header_values(seen, "host") == ["rewritten.example"]
    asked = {q.name.rstrip(".") for q in dns_server.queries[since:]}
    assert "rewritten.example" not in asked


def test_dfp_host_rewrite_sets_the_destination(
    get: Callable[..., RawResponse], shared_origin: OriginServer
) -> None:
    # Port 1 is closed: only the rewrite can make this reach the origin.
    seen = echo_of(get("rw.test", "/echo", port=1))
    assert header_values(seen, "host") == [f"dest.test:{shared_origin.port}"]


def test_header_manipulation_both_directions(get: Callable[..., RawResponse]) -> None:
    seen = echo_of(
        get(
            "hm.test",
            "/echo",
            [
                ("x-appended", "one"),
                ("x-replaced", "old"),
                ("x-remove-me", "secret"),
                ("x-keep", "k"),
            ],
        )
    )
    assert header_values(seen, "x-added") == ["one"]
    assert header_values(seen, "x-appended") == ["one", "two"]
    assert header_values(seen, "x-replaced") == ["new"]
    assert header_values(seen, "x-remove-me") == []
    assert header_values(seen, "x-keep") == ["k"]
    assert header_values(seen, "x-vhost") == ["v"]  # virtualHost.options too
    r = get("hm.test", "/response-headers?x-resp-remove=1&x-resp-replaced=old&x-resp-keep=k")
    assert r.status == 200
    assert r.header_values("x-resp-added") == ["r1"]
    assert r.header_values("x-resp-replaced") == ["new"]
    assert r.header_values("x-resp-remove") == []
    assert r.header_values("x-resp-keep") == ["k"]


def test_response_headers_to_add_apply_to_direct_responses(
    get: Callable[..., RawResponse],
) -> None:
    """Envoy finalizes direct responses with the route's response header manipulation."""
    r = get("hm.test", "/direct")
    assert (r.status, r.text) == (200, "direct")
    assert r.header_values("x-resp-added") == ["r1"]


def test_route_timeout(get: Callable[..., RawResponse]) -> None:
    start = time.monotonic()
    r = get("timeout.test", "/slow-headers/3")
    elapsed = time.monotonic() - start
    assert r.status == 504
    assert elapsed < 2.5


def test_websocket_disabled_on_a_route(
    routing_proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://ws.test:{shared_origin.port}/websocket"
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": WS_KEY,
        "Sec-WebSocket-Version": "13",
    }
    with RawClient("127.0.0.1", routing_proxy.port) as c:
        r = c.request("GET", url, upgrade)
        assert r.status == 101
        assert r.header("sec-websocket-accept") == websocket_accept(WS_KEY)
        c.send(b"raw")
        assert c.recv_exact(3) == b"raw"
    shared_origin.reset_log()
    with RawClient("127.0.0.1", routing_proxy.port) as c:
        r = c.request("GET", url, {**upgrade, "x-no-ws": "1"})
        assert r.status == 426  # the origin saw a plain GET
    [seen] = shared_origin.requests
    assert seen.header("upgrade") is None
    assert "upgrade" not in (seen.header("connection") or "").lower()
    check_alive(routing_proxy)
