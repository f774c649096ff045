"""External authorization through the real proxy, with an authorization service run by the
test (an OriginServer whose answer is chosen by the client's ``x-decision`` header): allow
with upstream headers, deny with the service's status, body and headers, timeout and server
down (statusOnError, failureModeAllow), the decision cache, ``disable`` on a route, CONNECT.

Three Gateways share the VirtualServices: ``gateway-proxy`` (strict, 200 ms timeout),
``lenient`` (failureModeAllow, decision cache) and ``down`` (a dead server, statusOnError 503).
One proxy on uvloop: the filter has no loop-specific code, and the data path it uses runs on
both loops in test_forwarding / test_connect / test_upstream_client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from tests import shared_proxy
from tests.helpers import admin_stats, assert_no_traceback, check_alive, module_proxy, serving
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import gateway
from tests.support.origin import OriginServer, SeenRequest, TcpEchoServer
from tests.support.proxy import ProxyProcess


class AuthServer(OriginServer):
    """The authorization service: ``x-decision`` says allow, deny, slow or error."""

    def _respond(self, conn: socket.socket, req: SeenRequest) -> None:
        decision = req.header("x-decision") or "allow"
        if decision == "allow":
            extra = [("X-Auth-User", "alice"), ("X-Auth-Secret", "not for upstream")]
            self._simple(conn, req, 200, b"", close=False, extra=extra)
        elif decision == "deny":
            extra = [
                ("WWW-Authenticate", 'Bearer realm="test"'),
                ("X-Deny-Reason", "policy 7"),
                ("X-Internal", "not for the client"),
            ]
            body = b'{"error": "denied"}'
            self._simple(conn, req, 401, body, close=False, ctype="application/json", extra=extra)
        elif decision == "slow":
            if not self._stopping.wait(1.0):
                self._simple(conn, req, 200, b"", close=False)
        else:
            self._simple(conn, req, 500, b"oops", close=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def authz_gateway(name: str, port: int, extauth: str) -> str:
    return gateway(f"extauth: {extauth}", connect=True, name=name, port=port)


VIRTUAL_SERVICE = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: all, namespace: gloo-system}
spec:
  virtualHost:
    domains: ["*"]
    options: {extauth: {customAuth: {}}}
    routes:
    - matchers: [{connectMatcher: {}}]
      routeAction: {dynamicForwardProxy: {}}
      options: {upgrades: [{connectTerminate: {enabled: true}}]}
    - matchers: [{prefix: /open}]
      routeAction: {dynamicForwardProxy: {}}
      options: {prefixRewrite: /echo, extauth: {disable: true}}
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
"""


dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin
shared_echo = shared_proxy.shared_echo


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    with serving(AuthServer()) as server:
        yield server


@pytest.fixture(scope="module")
def authz_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DNSTestServer,
    auth_server: AuthServer,
) -> Iterator[ProxyProcess]:
    uri = f"http://127.0.0.1:{auth_server.port}"
    strict = (
        f"{{serverUri: '{uri}', requestTimeout: 0.2s, httpService: {{pathPrefix: /auth,"
        " request: {allowedHeaders: [X-Decision], headersToAdd: {x-added: 'yes'}},"
        " response: {allowedUpstreamHeaders: [x-auth-user],"
        " allowedClientHeaders: [x-deny-reason]}}}"
    )
    lenient = (
        f"{{serverUri: '{uri}', failureModeAllow: true, statPrefix: lenient,"
        " decisionCache: {ttl: 60s}, httpService: {request: {allowedHeaders: [x-decision]}}}"
    )
    down = f"{{serverUri: 'http://127.0.0.1:{free_port()}', statusOnError: 503}}"
    text = "---\n".join(
        [
            authz_gateway("gateway-proxy", 8080, strict),
            authz_gateway("lenient", free_port(), lenient),
            authz_gateway("down", free_port(), down),
            VIRTUAL_SERVICE,
        ]
    )
    with module_proxy(tmp_path_factory, dns_server, "uvloop", config=text) as p:
        yield p
        assert_no_traceback(p)


@pytest.fixture
def proxy(authz_proxy: ProxyProcess, auth_server: AuthServer) -> Iterator[ProxyProcess]:
    auth_server.reset_log()
    yield authz_proxy
    check_alive(authz_proxy)


stats = admin_stats


def get(port: int, url: str, headers: dict[str, str] | None = None) -> RawResponse:
    with RawClient("127.0.0.1", port) as c:
        return c.request("GET", url, headers)


def header_names(seen: dict[str, object]) -> list[str]:
    headers = seen["headers"]
    assert isinstance(headers, list)
    return [str(n).lower() for n, _ in headers]


def test_allowed_request_gets_the_upstream_headers(
    proxy: ProxyProcess, auth_server: AuthServer, shared_origin: OriginServer
) -> None:
    url = f"http://app.test:{shared_origin.port}/echo?q=1"
    r = get(
        proxy.port,
        url,
        {
            "X-Decision": "allow",
            "Authorization": "Bearer t0k",
            "X-Secret": "client only",
            "X-Auth-User": "forged",
            "X-Added": "from client",
        },
    )
    assert r.status == 200, r.text
    seen = r.json()
    headers = {str(n).lower(): v for n, v in seen["headers"]}
    assert headers["x-auth-user"] == "alice"  # replaced by the service's answer
    assert "x-auth-secret" not in headers  # not in allowedUpstreamHeaders
    # What the service was asked: method, prefix + path and query, Host, allowed headers,
    # Authorization, headersToAdd (replacing the client's), Content-Length 0, nothing else.
    (check,) = auth_server.requests
    assert (check.method, check.target) == ("GET", "/auth/echo?q=1")
    assert check.header("host") == f"app.test:{shared_origin.port}"
    assert check.header("x-decision") == "allow"
    assert check.header("authorization") == "Bearer t0k"
    assert check.header_values("x-added") == ["yes"]
    assert check.header("content-length") == "0"
    assert check.header("x-secret") is None and check.header("x-auth-user") is None
    assert stats(proxy)["http.gateway-proxy.ext_authz.ok"] >= 1


def test_denied_request_gets_the_service_answer(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    before = len(shared_origin.requests)
    r = get(proxy.port, f"http://app.test:{shared_origin.port}/echo", {"X-Decision": "deny"})
    assert r.status == 401
    assert r.body == b'{"error": "denied"}'
    assert r.header("content-type") == "application/json"
    assert r.header("x-deny-reason") == "policy 7"  # allowedClientHeaders
    assert r.header("www-authenticate") == 'Bearer realm="test"'  # always passed
    assert r.header("x-internal") is None
    assert len(shared_origin.requests) == before
    assert stats(proxy)["http.gateway-proxy.ext_authz.denied"] >= 1


def test_service_5xx_is_a_denial_with_its_status(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    r = get(proxy.port, f"http://app.test:{shared_origin.port}/echo", {"X-Decision": "error"})
    assert (r.status, r.text) == (500, "oops")


def test_timeout_is_403_and_failure_mode_allow_lets_it_through(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://app.test:{shared_origin.port}/echo"
    r = get(proxy.port, url, {"X-Decision": "slow"})
    assert r.status == 403
    assert r.text == "external authorization failed"
    lenient = proxy.listener_ports["lenient"]
    r = get(lenient, url, {"X-Decision": "slow"})
    assert r.status == 200, r.text
    s = stats(proxy)
    assert s["http.gateway-proxy.ext_authz.error"] >= 1
    assert s["http.lenient.ext_authz.lenient.failure_mode_allowed"] >= 1


def test_server_down_answers_status_on_error(
    proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    down = proxy.listener_ports["down"]
    r = get(down, f"http://app.test:{shared_origin.port}/echo")
    assert r.status == 503
    assert stats(proxy)["http.down.ext_authz.error"] >= 1


def test_decision_cache_avoids_a_second_call(
    proxy: ProxyProcess, auth_server: AuthServer, shared_origin: OriginServer
) -> None:
    lenient = proxy.listener_ports["lenient"]
    url = f"http://cache.test:{shared_origin.port}/echo?n=1"
    for _ in range(3):
        assert get(lenient, url, {"X-Decision": "allow"}).status == 200
    for _ in range(2):
        assert get(lenient, url, {"X-Decision": "deny"}).status == 401
    # One call per distinct request (allow, deny); the repeats were answered from the cache.
    assert len(auth_server.requests) == 2
    assert stats(proxy)["http.lenient.ext_authz.lenient.cache_hit"] >= 3
    # The strict gateway has no cache: every request is checked.
    for _ in range(2):
        assert get(proxy.port, url, {"X-Decision": "allow"}).status == 200
    assert len(auth_server.requests) == 4


def test_disabled_route_is_not_checked(
    proxy: ProxyProcess, auth_server: AuthServer, shared_origin: OriginServer
) -> None:
    r = get(proxy.port, f"http://app.test:{shared_origin.port}/open", {"X-Decision": "deny"})
    assert r.status == 200
    assert auth_server.requests == []
    assert stats(proxy)["http.gateway-proxy.ext_authz.disabled"] >= 1


def test_connect_is_checked(
    proxy: ProxyProcess, auth_server: AuthServer, shared_echo: TcpEchoServer
) -> None:
    target = f"tunnel.test:{shared_echo.port}"
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("CONNECT", target, {"X-Decision": "allow"})
        assert r.status == 200
        c.send(b"ping")
        assert c.recv_exact(4) == b"ping"
    (check,) = auth_server.requests
    assert (check.method, check.target) == ("GET", "/auth")
    assert check.header("host") == target
    assert check.header("x-forwarded-method") == "CONNECT"
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request("CONNECT", target, {"X-Decision": "deny"})
        assert r.status == 401
        assert r.header("connection") == "close"


# ---------------------------------------------------------------------------- config errors
def errors_of(tmp_path: Path, extauth: str, vs_options: str = "{extauth: {customAuth: {}}}") -> str:
    vs = VIRTUAL_SERVICE.replace("{extauth: {customAuth: {}}}", vs_options)
    path = tmp_path / "gw.yaml"
    path.write_text(authz_gateway("gw", 8080, extauth) + "---\n" + vs)
    with pytest.raises(ConfigError) as info:
        load_paths([str(path)])
    return "\n".join(info.value.errors)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    text = errors_of(tmp_path, "{extauthzServerRef: {name: auth}}")
    assert "extauthzServerRef needs a gloo.solo.io/v1 Upstream" in text
    assert "spec.httpGateway.options.extauth" in text
    text = errors_of(tmp_path, "{serverUri: 'http://127.0.0.1:1', statusOnError: 299}")
    assert "statusOnError 299" in text
    text = errors_of(tmp_path, "{serverUri: 'http://127.0.0.1:1', requestBody: {}}")
    assert "requestBody" in text
    text = errors_of(
        tmp_path, "{serverUri: 'http://127.0.0.1:1'}", "{extauth: {configRef: {name: ac}}}"
    )
    assert "configRef needs Gloo Enterprise" in text and "spec.virtualHost.options" in text
    text = errors_of(
        tmp_path,
        "{serverUri: 'http://127.0.0.1:1', httpService: {request: {allowedHeadersRegex: ['(']}}}",
    )
    assert "allowedHeadersRegex[0]" in text
    # The service's answer must not set the upstream request's framing (its own
    # Content-Length and Transfer-Encoding are in every answer).
    text = errors_of(
        tmp_path,
        "{serverUri: 'http://127.0.0.1:1', httpService: {response:"
        " {allowedUpstreamHeaders: [x-user, Content-Length],"
        " allowedUpstreamHeadersToAppend: [transfer-encoding]}}}",
    )
    assert "httpService.response.allowedUpstreamHeaders" in text
    assert "'Content-Length' cannot be set on the upstream request" in text
    assert "httpService.response.allowedUpstreamHeadersToAppend" in text
    assert "'transfer-encoding' cannot be set on the upstream request" in text
    text = errors_of(tmp_path, "{serverUri: 'https://127.0.0.1:1'}")
    assert "extauth.serverUri: https:// needs a dynamicForwardProxy with sslConfig" in text


def test_request_body_waits_for_the_decision(
    proxy: ProxyProcess, auth_server: AuthServer, shared_origin: OriginServer
) -> None:
    body = bytes(range(256)) * 1000
    with RawClient("127.0.0.1", proxy.port) as c:
        r = c.request(
            "POST", f"http://app.test:{shared_origin.port}/upload", {"X-Decision": "allow"}, body
        )
    assert r.status == 200, r.text
    assert r.json()["length"] == len(body)
    (check,) = auth_server.requests
    assert (check.method, check.header("content-length"), check.body_length) == ("POST", "0", 0)
