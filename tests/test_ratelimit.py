"""The rate limit filter through the real proxy: local token buckets per listener, virtual
host and route, descriptors from request data, Envoy's 429 and draft RFC headers, stats;
config errors with their field paths.

One proxy for the module (``LOCAL_CONFIG``); each feature has its own domain, so tests do
not share buckets (every bucket refills every 100 s: nothing refills during the module).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from tests import shared_proxy
from tests.helpers import admin_stats, check_alive, module_proxy
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import gateway, virtual_service
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

GATEWAY = gateway(
    """
    httpLocalRatelimit:
      defaultLimit: {maxTokens: 3, tokensPerFill: 3, fillInterval: 100s}
      enableXRatelimitHeaders: true
      retryAfterHeader: true
    """
)

SLOW = "{maxTokens: %d, tokensPerFill: 1, fillInterval: 100s}"


vs = virtual_service


def local_config() -> str:
    return "---\n".join(
        [
            GATEWAY,
            vs("plain", ["plain.test"], "- directResponseAction: {status: 200, body: plain}"),
            vs(
                "lr-vhost",
                ["vh.test"],
                f"""
                - matchers: [{{prefix: /own}}]
                  directResponseAction: {{status: 200, body: own}}
                  options: {{ratelimit: {{localRatelimit: {SLOW % 1}}}}}
                - matchers: [{{prefix: /a}}]
                  directResponseAction: {{status: 200, body: a}}
                - matchers: [{{prefix: /b}}]
                  directResponseAction: {{status: 200, body: b}}
                """,
                f"ratelimit: {{localRatelimit: {SLOW % 2}}}",
            ),
            vs(
                "lr-desc",
                ["desc.test", "*.desc.test"],
                f"""
                - name: header
                  matchers: [{{prefix: /header}}]
                  directResponseAction: {{status: 200, body: header}}
                  options:
                    ratelimit:
                      localRatelimit: {SLOW % 1000}
                      localRatelimitDescriptors:
                      - name: api-key
                        actions: [{{requestHeaders: {{headerName: x-api-key, descriptorKey: key}}}}]
                        tokenBucket: {SLOW % 2}
                - name: path
                  matchers: [{{prefix: /path}}]
                  directResponseAction: {{status: 200, body: path}}
                  options:
                    ratelimit:
                      localRatelimit: {SLOW % 1000}
                      localRatelimitDescriptors:
                      - actions: [{{path: {{}}}}]
                        tokenBucket: {SLOW % 1}
                - name: remote
                  matchers: [{{prefix: /remote}}]
                  directResponseAction: {{status: 200, body: remote}}
                  options:
                    ratelimit:
                      localRatelimit: {SLOW % 1000}
                      localRatelimitDescriptors:
                      - actions: [{{remoteAddress: {{}}}}]
                        tokenBucket: {SLOW % 2}
                - name: host
                  matchers: [{{prefix: /host}}]
                  directResponseAction: {{status: 200, body: host}}
                  options:
                    ratelimit:
                      localRatelimit: {SLOW % 1000}
                      localRatelimitDescriptors:
                      - actions: [{{destinationHost: {{}}}}]
                        tokenBucket: {SLOW % 1}
                """,
            ),
            vs(
                "lr-fwd",
                ["fwd.test"],
                f"""
                - routeAction: {{dynamicForwardProxy: {{}}}}
                  options: {{ratelimit: {{localRatelimit: {SLOW % 2}}}}}
                """,
            ),
        ]
    )


dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin


@pytest.fixture(scope="module")
def local_proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer
) -> Iterator[ProxyProcess]:
    with module_proxy(tmp_path_factory, dns_server, "uvloop", config=local_config()) as p:
        yield p


@pytest.fixture
def proxy_(local_proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    yield local_proxy
    check_alive(local_proxy)


def get(p: ProxyProcess, url: str, headers: dict[str, str] | None = None) -> RawResponse:
    with RawClient("127.0.0.1", p.port) as c:
        return c.request("GET", url, headers)


stats = admin_stats


def assert_limited(r: RawResponse, limit: int) -> None:
    assert r.status == 429, (r.status, r.text)
    assert r.body == b"local_rate_limited"
    assert r.header("x-envoy-ratelimited") == "true"
    assert r.header("x-ratelimit-limit") == str(limit)
    assert r.header("x-ratelimit-remaining") == "0"
    reset = int(r.header("x-ratelimit-reset") or "-1")
    assert 0 < reset <= 100
    assert 0 < int(r.header("retry-after") or "0") <= 100


# ---------------------------------------------------------------------------- local buckets
def test_listener_default_limit(proxy_: ProxyProcess) -> None:
    for i in range(3):
        r = get(proxy_, "http://plain.test/")
        assert r.status == 200, r.text
        assert r.header("x-ratelimit-remaining") is None  # a local reply: no draft headers
        del i
    assert_limited(get(proxy_, "http://plain.test/"), 3)
    s = stats(proxy_, r"^local_rate_limit\.gateway-proxy\.http_local_rate_limit")
    p = "local_rate_limit.gateway-proxy.http_local_rate_limit."
    assert s[p + "enabled"] == 4
    assert s[p + "ok"] == 3
    assert s[p + "rate_limited"] == 1
    assert s[p + "enforced"] == 1


def test_vhost_bucket_shared_by_its_routes_route_bucket_overrides(proxy_: ProxyProcess) -> None:
    assert get(proxy_, "http://vh.test/a").status == 200
    assert get(proxy_, "http://vh.test/b").status == 200
    assert_limited(get(proxy_, "http://vh.test/a"), 2)
    assert_limited(get(proxy_, "http://vh.test/b"), 2)
    # The route's own bucket replaces the virtual host's (Gloo: the most specific wins).
    assert get(proxy_, "http://vh.test/own").status == 200
    assert_limited(get(proxy_, "http://vh.test/own"), 1)
    s = stats(proxy_, r"^local_rate_limit\.gateway-proxy\.lr-vhost")
    assert s["local_rate_limit.gateway-proxy.lr-vhost.http_local_rate_limit.rate_limited"] == 2
    assert s["local_rate_limit.gateway-proxy.lr-vhost.route-0.http_local_rate_limit.ok"] == 1


def test_descriptor_from_a_header(proxy_: ProxyProcess) -> None:
    for _ in range(2):
        assert get(proxy_, "http://desc.test/header", {"x-api-key": "k1"}).status == 200
    assert_limited(get(proxy_, "http://desc.test/header", {"x-api-key": "k1"}), 2)
    assert get(proxy_, "http://desc.test/header", {"x-api-key": "k2"}).status == 200
    # Without the header the descriptor is not produced (Envoy): only the default bucket.
    for _ in range(3):
        assert get(proxy_, "http://desc.test/header").status == 200
    p = "local_rate_limit.gateway-proxy.lr-desc.header.http_local_rate_limit."
    s = stats(proxy_, r"lr-desc\.header\.")
    assert s[p + "descriptor.api-key.ok"] == 3
    assert s[p + "descriptor.api-key.rate_limited"] == 1
    assert s[p + "rate_limited"] == 1
    assert s[p + "ok"] == 6


def test_descriptor_from_the_path(proxy_: ProxyProcess) -> None:
    assert get(proxy_, "http://desc.test/path/x?q=1").status == 200
    assert get(proxy_, "http://desc.test/path/x?q=2").status == 429  # the query is not the path
    assert get(proxy_, "http://desc.test/path/y").status == 200


def status_from(p: ProxyProcess, source: str, url: str) -> int:
    """One request from the client address ``source`` (any 127/8 address reaches 127.0.0.1)."""
    with socket.create_connection(
        ("127.0.0.1", p.port), timeout=5, source_address=(source, 0)
    ) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_descriptor_from_the_remote_address(proxy_: ProxyProcess) -> None:
    url = "http://desc.test/remote"
    assert [status_from(proxy_, "127.0.0.1", url) for _ in range(3)] == [200, 200, 429]
    assert status_from(proxy_, "127.0.0.2", url) == 200


def test_descriptor_from_the_destination_host(proxy_: ProxyProcess) -> None:
    assert get(proxy_, "http://a.desc.test/host").status == 200
    assert get(proxy_, "http://A.desc.test:80/host").status == 429  # same host, any case/port
    assert get(proxy_, "http://b.desc.test/host").status == 200


def test_forwarded_response_carries_the_draft_headers(
    proxy_: ProxyProcess, shared_origin: OriginServer
) -> None:
    url = f"http://fwd.test:{shared_origin.port}/echo"
    r1 = get(proxy_, url)
    assert r1.status == 200, r1.text
    assert (r1.header("x-ratelimit-limit"), r1.header("x-ratelimit-remaining")) == ("2", "1")
    r2 = get(proxy_, url)
    assert r2.status == 200 and r2.header("x-ratelimit-remaining") == "0"
    assert_limited(get(proxy_, url), 2)


def test_limited_request_is_logged_with_its_flag(proxy_: ProxyProcess) -> None:
    get(proxy_, "http://vh.test/own")  # limited since the test above (or now)
    lines = proxy_.wait_for_access_log(1)
    assert any(" 429 RL " in ln or " 429 RL" in ln for ln in lines), lines[-5:]


# ---------------------------------------------------------------------------- config errors
BAD_CASES = [
    (
        "ratelimit: {localRatelimit: {maxTokens: 1, tokensPerFill: 0}}",
        "spec.virtualHost.options.ratelimit.localRatelimit.tokensPerFill",
    ),
    (
        "ratelimit: {localRatelimit: {maxTokens: 1, fillInterval: 10ms}}",
        "spec.virtualHost.options.ratelimit.localRatelimit.fillInterval",
    ),
    (
        "ratelimit: {localRatelimit: {maxTokens: 0}}",
        "spec.virtualHost.options.ratelimit.localRatelimit.maxTokens",
    ),
    (
        "ratelimit: {localRatelimt: {maxTokens: 1}}",
        "did you mean 'localRatelimit'?",
    ),
    (
        "ratelimit: {localRatelimitDescriptors: [{actions: [{remoteAddress: {}, path: {}}], "
        "tokenBucket: {maxTokens: 1}}]}",
        "spec.virtualHost.options.ratelimit.localRatelimitDescriptors[0].actions[0]: "
        "an action sets exactly one of",
    ),
    (
        "ratelimit: {localRatelimitDescriptors: [{actions: [{headerValueMatch: {descriptorValue: "
        "v, headers: [{name: x, regexMatch: '(('}]}}], tokenBucket: {maxTokens: 1}}]}",
        "spec.virtualHost.options.ratelimit.localRatelimitDescriptors[0].actions: invalid regex",
    ),
    (
        "rateLimitConfigs: {refs: [{name: nope}]}",
        "spec.virtualHost.options.rateLimitConfigs: global rate limits need "
        "httpGateway.options.rateLimitServer",
    ),
    (
        "ratelimitBasic: {anonymousLimits: {unit: MINUTE, requestsPerUnit: 1}}",
        "spec.virtualHost.options.ratelimitBasic: global rate limits need",
    ),
    (
        "ratelimitBasic: {anonymousLimits: {unit: WEEK, requestsPerUnit: 1}}",
        "spec.virtualHost.options.ratelimitBasic.anonymousLimits.unit",
    ),
    (
        "ratelimit: {rateLimits: [{actions: [{remoteAddress: {}}]}]}",
        "spec.virtualHost.options.ratelimit: inline rateLimits need",
    ),
]


def _load(tmp_path: Path, text: str) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_paths([str(f)])
    return str(info.value)


@pytest.mark.parametrize(("options", "expected"), BAD_CASES)
def test_config_errors_name_the_field(tmp_path: Path, options: str, expected: str) -> None:
    text = vs("bad", ["*"], "- directResponseAction: {status: 200}", options)
    assert expected in _load(tmp_path, text)


def test_config_errors_on_the_listener_and_references(tmp_path: Path) -> None:
    gw = GATEWAY.replace(
        "        retryAfterHeader: true\n",
        "        localRateLimitPerDownstreamConnection: true\n"
        "      rateLimitServer: {redis: {address: '127.0.0.1:99999'}}\n",
    ).replace(
        "  bindPort: 8080\n",
        "  bindPort: 8080\n  options: {connectionLimit: {maxActiveConnections: 0}}\n",
    )
    text = (
        gw
        + "---\n"
        + vs(
            "refs",
            ["*"],
            "- directResponseAction: {status: 200}",
            "rateLimitConfigs: {refs: [{name: nope}]}",
        )
    )
    msg = _load(tmp_path, text)
    assert (
        "spec.httpGateway.options.httpLocalRatelimit: localRateLimitPerDownstreamConnection: true "
        "is not supported"
    ) in msg
    assert "spec.options.connectionLimit.maxActiveConnections" in msg
    gw2 = GATEWAY.replace(
        "        retryAfterHeader: true\n",
        "        retryAfterHeader: true\n"
        "      rateLimitServer: {redis: {address: '127.0.0.1:99999'}}\n",
    )
    msg2 = _load(tmp_path, gw2 + "---\n" + text.split("---\n", 1)[1])
    assert (
        "spec.httpGateway.options.rateLimitServer: redis.address '127.0.0.1:99999' has a bad port"
        in msg2
    )
    assert (
        "spec.virtualHost.options.rateLimitConfigs.refs[0]: no RateLimitConfig named 'nope'"
    ) in msg2


def test_rate_limit_config_resource_errors(tmp_path: Path) -> None:
    rlc = """\
apiVersion: ratelimit.solo.io/v1alpha1
kind: RateLimitConfig
metadata: {name: rl, namespace: gloo-system}
spec:
  raw:
    descriptors:
    - key: generic_key
      value: x
      rateLimit: {unit: SECOND, requestsPerUnit: -1}
    rateLimits:
    - actions: [{genericKey: {descriptorValue: x}}]
      setActions: [{remoteAddress: {}}]
"""
    msg = _load(tmp_path, rlc)
    assert "spec.raw.descriptors[0].rateLimit.requestsPerUnit" in msg
    assert "spec.raw.rateLimits[0]: setActions are not supported yet" in msg
