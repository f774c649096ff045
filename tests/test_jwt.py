"""The JWT filter (dfproxy/filters/jwt.py) through a real proxy: Gloo's YAML (the blog's
shape included), what reaches the upstream (/echo), Envoy's refusals, the validation
policies, per-route overrides, the second stage, and a remote JWKS served on 127.0.0.1 and
resolved through the test DNS server (fetched, cached, kept when the server goes away,
rotated). Config errors are checked in-process with their field paths.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.jwt_authn import status as st
from tests import jwt_support as s
from tests import shared_proxy
from tests.helpers import check_alive, module_proxy, serving
from tests.jwt_support import JwksServer
from tests.support.clients import RawClient, RawResponse
from tests.support.dns_server import DNSTestServer
from tests.support.gloo_yaml import gateway, virtual_service
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

RSA = s.rsa_key()
EC = s.ec_key()
ROTATED = s.rsa_key(2)
HS_SECRET = b"k" * 64
BLOG_ISSUER = "mypaas.io"


# ---------------------------------------------------------------------------- config
GATEWAY = gateway()


def vs(name: str, domain: str, routes: list[Any], options: dict[str, Any] | None = None) -> str:
    spec: dict[str, Any] = {"virtualHost": {"domains": [domain], "routes": routes}}
    if options is not None:
        spec["virtualHost"]["options"] = options
    doc = {
        "apiVersion": "gateway.solo.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "gloo-system"},
        "spec": spec,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def echo_route(prefix: str = "/", **options: Any) -> dict[str, Any]:
    return {
        "matchers": [{"prefix": prefix}],
        "routeAction": {"dynamicForwardProxy": {}},
        "options": {"prefixRewrite": "/echo", **options},
    }


def local(key: str) -> dict[str, Any]:
    return {"local": {"key": key}}


# The blog post's VirtualService, JWT part, as written there (its transformation and DLP
# stages are other filters): the RS256 key as a PEM, issuer, audiences, the authorization
# header with its prefix, keepToken, a claim to a header, allowMissingOrFailedJwt.
BLOG_VS = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: gloo-system
spec:
  virtualHost:
    domains:
      - 'blog.test'
    routes:
      - matchers:
          - prefix: /
        routeAction:
          dynamicForwardProxy: {}
        options:
          prefixRewrite: /echo
    options:
      jwt:
        allowMissingOrFailedJwt: true
        providers:
          mypaas:
            jwks:
              local:
                key: |
%(pem)s
            issuer: %(issuer)s
            tokenSource:
              headers:
                - header: authorization
                  prefix: "Bearer "
            audiences:
              - frontend
            keepToken: true
            claimsToHeaders:
              - claim: tenantId
                header: x-mypaas-tenant-id
"""


def blog_vs() -> str:
    return BLOG_VS % {"pem": textwrap.indent(s.pem(RSA).strip(), " " * 18), "issuer": BLOG_ISSUER}


def jwt_config(jwks_port: int) -> str:
    ec_jwks = s.jwks(s.jwk(EC, kid="ec-1", alg="ES256"))
    hs_jwk = json.dumps(s.oct_jwk(HS_SECRET))
    rs_pem = s.pem(RSA)
    docs = [
        GATEWAY,
        blog_vs(),
        vs(
            "strict",
            "strict.test",
            [
                echo_route("/open", jwtStaged={"beforeExtAuth": {"disable": True}}),
                echo_route(
                    "/override",
                    jwtProvidersStaged={
                        "beforeExtAuth": {"providers": {"hs": {"jwks": local(hs_jwk)}}}
                    },
                ),
                {
                    "matchers": [{"prefix": "/direct"}],
                    "directResponseAction": {"status": 200, "body": "direct ok"},
                },
                echo_route(),
            ],
            {
                "jwtStaged": {
                    "beforeExtAuth": {
                        "providers": {
                            "es": {
                                "jwks": local(ec_jwks),
                                "issuer": "issuer.test",
                                "audiences": ["api.test"],
                                "tokenSource": {
                                    "headers": [{"header": "x-token"}],
                                    "queryParams": ["jwt"],
                                },
                                "claimsToHeaders": [
                                    {"claim": "sub", "header": "x-sub"},
                                    {"claim": "org.name", "header": "x-org", "append": True},
                                ],
                            }
                        }
                    }
                }
            },
        ),
        vs(
            "optional",
            "optional.test",
            [echo_route()],
            {
                "jwt": {
                    "validationPolicy": "ALLOW_MISSING",
                    "providers": {"rs": {"jwks": local(rs_pem)}},
                }
            },
        ),
        vs(
            "later",
            "after.test",
            [echo_route()],
            {
                "jwtStaged": {
                    "afterExtAuth": {
                        "providers": {"rs": {"jwks": local(rs_pem), "keepToken": True}}
                    }
                }
            },
        ),
        vs(
            "remote",
            "remote.test",
            [echo_route()],
            {
                "jwt": {
                    "providers": {
                        "idp": {
                            "jwks": {
                                "remote": {
                                    "url": f"http://jwks.test:{jwks_port}/jwks.json",
                                    "cacheDuration": "1s",
                                }
                            }
                        }
                    }
                }
            },
        ),
        vs(
            "unreachable",
            "down.test",
            [
                {
                    "matchers": [{"prefix": "/"}],
                    "directResponseAction": {"status": 200, "body": "never"},
                }
            ],
            {
                "jwt": {
                    "providers": {
                        "idp": {"jwks": {"remote": {"url": "http://jwks-down.test:1/keys"}}}
                    }
                }
            },
        ),
    ]
    return "---\n".join(docs)


# ---------------------------------------------------------------------------- fixtures
dns_server = shared_proxy.dns_server
shared_origin = shared_proxy.shared_origin


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    with serving(JwksServer()) as server:
        yield server


@pytest.fixture(scope="module")
def jwt_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DNSTestServer,
    shared_origin: OriginServer,
    jwks_server: JwksServer,
) -> Iterator[ProxyProcess]:
    with module_proxy(
        tmp_path_factory,
        dns_server,
        "uvloop",
        "--access-log-format",
        "json",
        config=jwt_config(jwks_server.port),
    ) as p:
        yield p


@pytest.fixture
def get(
    jwt_proxy: ProxyProcess, shared_origin: OriginServer
) -> Iterator[Callable[..., RawResponse]]:
    """``get(host, path="/", headers=None)``: one absolute-form request through the proxy."""

    def request(
        host: str, path: str = "/", headers: dict[str, str] | list[tuple[str, str]] | None = None
    ) -> RawResponse:
        with RawClient("127.0.0.1", jwt_proxy.port) as c:
            return c.request("GET", f"http://{host}:{shared_origin.port}{path}", headers)

    yield request
    check_alive(jwt_proxy)


def seen_headers(resp: RawResponse) -> dict[str, list[str]]:
    assert resp.status == 200, (resp.status, resp.text)
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def blog_token(**extra: Any) -> str:
    return s.sign(
        "RS256", RSA, s.claims(iss=BLOG_ISSUER, aud="frontend", tenantId="tenant-1", **extra)
    )


def es_token(**extra: Any) -> str:
    return s.sign("ES256", EC, s.claims(aud="api.test", **extra), kid="ec-1")


# ---------------------------------------------------------------------------- the blog's shape
def test_blog_shape_with_curl_copies_the_tenant_claim_and_keeps_the_token(
    jwt_proxy: ProxyProcess, shared_origin: OriginServer
) -> None:
    token = blog_token()
    result = jwt_proxy.curl(
        f"http://blog.test:{shared_origin.port}/", "-H", f"Authorization: Bearer {token}"
    ).check()
    assert result.http_code == 200, result.stdout
    headers = {k.lower(): v for k, v in result.json()["headers"]}
    assert headers["x-mypaas-tenant-id"] == "tenant-1"
    assert headers["authorization"] == f"Bearer {token}"  # keepToken: true


def test_blog_allow_missing_or_failed_passes_but_never_forwards_a_forged_tenant(
    get: Callable[..., RawResponse],
) -> None:
    forged = {"x-mypaas-tenant-id": "evil"}
    seen = seen_headers(get("blog.test", headers=forged))
    assert "x-mypaas-tenant-id" not in seen
    bad = s.sign("RS256", s.rsa_key(1), s.claims(iss=BLOG_ISSUER, aud="frontend", tenantId="t"))
    seen = seen_headers(get("blog.test", headers={**bearer(bad), **forged}))
    assert "x-mypaas-tenant-id" not in seen
    # A valid token without the claim: the client's header is still removed.
    no_claim = s.sign("RS256", RSA, s.claims(iss=BLOG_ISSUER, aud="frontend"))
    seen = seen_headers(get("blog.test", headers={**bearer(no_claim), **forged}))
    assert "x-mypaas-tenant-id" not in seen


# ---------------------------------------------------------------------------- refusals
def forged_es(**kw: Any) -> str:
    return s.sign("ES256", s.ec_key(n=1), s.claims(aud="api.test"), **kw)


@pytest.mark.parametrize(
    ("make", "status", "body"),
    [
        (lambda: None, 401, st.MISSING),
        (lambda: "not-a-jwt", 401, st.BAD_FORMAT),
        (lambda: es_token(exp=int(time.time()) - 3600), 401, st.EXPIRED),
        (lambda: es_token(nbf=int(time.time()) + 3600), 401, st.NOT_YET_VALID),
        (lambda: es_token(iss="other.test"), 401, st.UNKNOWN_ISSUER),
        (lambda: s.sign("ES256", EC, s.claims(aud="x"), kid="ec-1"), 403, st.AUDIENCE_NOT_ALLOWED),
        (lambda: forged_es(kid="ec-1"), 401, st.VERIFICATION_FAIL),
        (lambda: forged_es(kid="ec-2"), 401, st.KID_ALG_MISMATCH),
        (lambda: s.raw({"alg": "none"}, s.claims()), 401, st.HEADER_ALG_NOT_IMPLEMENTED),
    ],
)  # fmt: skip
def test_failures_are_envoy_local_replies(
    get: Callable[..., RawResponse],
    jwt_proxy: ProxyProcess,
    shared_origin: OriginServer,
    make: Callable[[], str | None],
    status: int,
    body: str,
) -> None:
    token = make()
    headers = {"x-token": token} if token else {}
    resp = get("strict.test", "/some/path?q=1", headers)
    assert (resp.status, resp.text) == (status, body)
    realm = f'Bearer realm="http://strict.test:{shared_origin.port}/some/path?q=1"'
    if body != "Jwt is missing":
        realm += ', error="invalid_token"'
    assert resp.header("www-authenticate") == realm


def test_refusals_are_logged_with_envoy_details(
    get: Callable[..., RawResponse], jwt_proxy: ProxyProcess
) -> None:
    assert get("strict.test", "/logged").status == 401
    assert get("strict.test", "/logged", {"x-token": "a.b"}).status == 401
    wanted = {
        "jwt_authn_access_denied{Jwt_is_missing}",
        "jwt_authn_access_denied{Jwt_is_not_in_the_form_of_Header.Payload.Signature_with_two_dots"
        "_and_3_sections}",
    }
    deadline = time.monotonic() + 10
    while True:
        seen = {
            e.get("response_code_details")
            for e in jwt_proxy.access_log_json()
            if e.get("path") == "/logged"
        }
        if wanted <= seen:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_the_algorithm_confusion_attack_is_refused(get: Callable[..., RawResponse]) -> None:
    forged = s.hs_with_secret(
        s.pem(RSA).encode(), s.claims(iss=BLOG_ISSUER, aud="frontend", tenantId="evil")
    )
    seen = seen_headers(get("blog.test", headers=bearer(forged)))  # allowed to pass, but...
    assert "x-mypaas-tenant-id" not in seen  # ...never as a verified identity
    resp = get("optional.test", headers=bearer(s.hs_with_secret(s.pem(RSA).encode(), s.claims())))
    assert (resp.status, resp.text) == (401, "Jwt verification fails")


# ---------------------------------------------------------------------------- success
def test_success_removes_the_token_and_sets_claims(get: Callable[..., RawResponse]) -> None:
    token = es_token(org={"name": "acme"})
    forged = [("x-token", token), ("x-sub", "mallory"), ("x-org", "client-org")]
    resp = get("strict.test", "/", forged)
    seen = seen_headers(resp)
    assert "x-token" not in seen  # keepToken false
    assert seen["x-sub"] == ["alice"]  # the client's value replaced
    assert seen["x-org"] == ["client-org", "acme"]  # append: the client's value kept
    # From the query parameter: the parameter goes, the rest of the query stays.
    resp = get("strict.test", f"/?x=1&jwt={token}&y=2")
    assert resp.json()["target"] == "/echo?x=1&y=2"
    assert seen_headers(resp)["x-sub"] == ["alice"]


def test_route_disable_and_route_level_providers(get: Callable[..., RawResponse]) -> None:
    assert get("strict.test", "/open").status == 200
    hs = s.sign("HS256", HS_SECRET, s.claims())
    assert get("strict.test", "/override", bearer(hs)).status == 200
    resp = get("strict.test", "/override", {"x-token": es_token()})
    assert (resp.status, resp.text) == (401, "Jwt is missing")  # the vhost provider is replaced
    # A direct response route is guarded too.
    assert get("strict.test", "/direct").status == 401
    assert get("strict.test", "/direct", {"x-token": es_token()}).text == "direct ok"


def test_allow_missing(get: Callable[..., RawResponse]) -> None:
    assert get("optional.test").status == 200
    assert get("optional.test", "/?access_token=" + s.sign("RS256", RSA, s.claims())).status == 200
    bad = get("optional.test", headers=bearer(s.sign("RS256", s.rsa_key(1), s.claims())))
    assert (bad.status, bad.text) == (401, "Jwt verification fails")


def test_the_after_ext_auth_stage(get: Callable[..., RawResponse]) -> None:
    assert get("after.test").status == 401
    token = s.sign("RS256", RSA, s.claims())
    assert seen_headers(get("after.test", headers=bearer(token)))["authorization"] == [
        f"Bearer {token}"
    ]


# ---------------------------------------------------------------------------- remote JWKS
def test_remote_jwks_fetched_cached_kept_and_rotated(
    get: Callable[..., RawResponse], jwks_server: JwksServer, jwt_proxy: ProxyProcess
) -> None:
    token_a = s.sign("RS256", RSA, s.claims(), kid="a")
    first = get("remote.test", headers=bearer(token_a))
    assert first.status == 200, first.text
    hits = jwks_server.hits
    assert hits >= 1
    assert get("remote.test", headers=bearer(token_a)).status == 200
    assert jwks_server.hits == hits  # cached (cacheDuration 1s, no refresh yet)

    # The JWKS server goes away: the keys that worked keep working past cacheDuration.
    jwks_server.stop()
    for _ in range(3):
        time.sleep(0.6)
        assert get("remote.test", headers=bearer(token_a)).status == 200

    # It comes back with a rotated key: a refresh picks it up.
    jwks_server.document = s.jwks(s.jwk(ROTATED, kid="b", alg="RS256"))
    jwks_server.start()
    token_b = s.sign("RS256", ROTATED, s.claims(), kid="b")
    deadline = time.monotonic() + 10
    while get("remote.test", headers=bearer(token_b)).status != 200:
        assert time.monotonic() < deadline, "the rotated key was never fetched"
        time.sleep(0.2)
    old = get("remote.test", headers=bearer(token_a))
    assert (old.status, old.text) == (401, "Jwks doesn't have key to match kid or alg from Jwt")
    status, body = jwt_proxy.admin_get("/stats")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    assert int(stats["http.gateway-proxy.jwt_authn.jwks_fetch_success"]) >= 2
    assert int(stats["http.gateway-proxy.jwt_authn.jwks_fetch_failed"]) >= 1
    assert int(stats["http.gateway-proxy.jwt_authn.denied"]) >= 1


def test_remote_jwks_never_fetched_fails_with_envoy_text(get: Callable[..., RawResponse]) -> None:
    token = s.sign("RS256", RSA, s.claims())
    for _ in range(2):  # the first waits for the failed fetch, the second fails at once
        resp = get("down.test", headers=bearer(token))
        assert (resp.status, resp.text) == (401, "Jwks remote fetch is failed")
        assert (
            resp.header(
                "www-authenticate",
            )
            is not None
        )
    assert get("down.test").text == "Jwt is missing"


# ---------------------------------------------------------------------------- config errors
ECHO_ROUTE = """\
- matchers: [{prefix: /}]
  routeAction: {dynamicForwardProxy: {}}
  options: {prefixRewrite: /echo}
"""


def vs_yaml(routes: str, options: str = "") -> str:
    return virtual_service("bad", ["bad.test"], routes, options)


def vs_with(options: str) -> str:
    return vs_yaml(ECHO_ROUTE, options)


RSA_JWK = json.dumps(s.jwk(RSA))


BAD_PEM = "-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----"
BAD_ALG_JWK = RSA_JWK[:-1] + ', "alg": "RS999"}'
REMOTE = "jwks: {remote: {url: 'http://k.test/'}}"
P = "spec.virtualHost.options.jwt"


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        (f"jwt: {{providers: {{p: {{jwks: {{local: {{key: {json.dumps(BAD_PEM)}}}}}}}}}}}",
         f"{P}.providers.p.jwks.local.key", "invalid PEM public key"),
        (f"jwt: {{providers: {{p: {{jwks: {{local: {{key: '{BAD_ALG_JWK}'}}}}}}}}}}",
         f"{P}.providers.p.jwks.local.key", "unknown algorithm 'RS999'"),
        ("jwt: {providers: {}}", f"{P}.providers", "at least one provider"),
        ("jwt: {providers: {p: {jwks: {remote: {url: 'ftp://keys.test/jwks'}}}}}",
         f"{P}.providers.p.jwks.remote.url", "expected an http:// or https:// URL"),
        ("jwt: {providers: {p: {jwks: {remote: {url: 'http://k.test/', cacheDuration: 0s}}}}}",
         f"{P}.providers.p.jwks.remote.cacheDuration", "greater than 0"),
        ("jwt: {providers: {p: {jwks: {}}}}", f"{P}.providers.p.jwks",
         "exactly one of local, remote"),
        (f"jwt: {{providers: {{p: {{{REMOTE}, claimsToHeaders: [{{claim: a, header: 'a b'}}]}}}}}}",
         f"{P}.providers.p.claimsToHeaders[0].header", "not a valid HTTP header name"),
        # A claim must not set the request's framing: a GET given a Content-Length would
        # leave the pooled upstream connection waiting for a body the next request fills.
        (f"jwt: {{providers: {{p: {{{REMOTE}, claimsToHeaders: [{{claim: a, header: x-a}},"
         f" {{claim: n, header: Content-Length}}]}}}}}}",
         f"{P}.providers.p.claimsToHeaders[1].header", "'Content-Length' cannot be used here"),
        (f"jwt: {{providers: {{p: {{{REMOTE}, claimsToHeaders: [{{claim: a, header: te}}]}}}}}}",
         f"{P}.providers.p.claimsToHeaders[0].header", "'te' cannot be used here"),
        (f"jwt: {{validationPolicy: SOMETIMES, providers: {{p: {{{REMOTE}}}}}}}",
         f"{P}.validationPolicy", "REQUIRE_VALID"),
        (f"jwt: {{providers: {{p: {{{REMOTE}}}}}}}\njwtStaged: {{}}",
         "spec.virtualHost.options", "jwt and jwtStaged are exclusive"),
        # Fetched through the gateway's DFP cluster, which has no sslConfig: every fetch
        # would fail, and every request with it.
        ("jwtStaged: {afterExtAuth: {providers: {p: {jwks: {remote: {url: 'https://k.test/'}}}}}}",
         "spec.virtualHost.options.jwtStaged.afterExtAuth.providers.p.jwks.remote.url",
         "https:// needs the gateway's dynamicForwardProxy with sslConfig"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(
    tmp_path: Path, options: str, path: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(GATEWAY + "---\n" + vs_with(options))
    with pytest.raises(ConfigError) as info:
        load_paths([str(config)])
    errors = info.value.errors
    assert any(f": {path}: " in e and message in e for e in errors), "\n".join(errors)


def test_route_level_jwt_options_are_exclusive(tmp_path: Path) -> None:
    route = """\
    - matchers: [{prefix: /}]
      routeAction: {dynamicForwardProxy: {}}
      options:
        jwt: {disable: true}
        jwtStaged: {beforeExtAuth: {disable: true}}
    """
    config = tmp_path / "bad.yaml"
    config.write_text(GATEWAY + "---\n" + vs_yaml(route))
    with pytest.raises(ConfigError) as info:
        load_paths([str(config)])
    assert any(
        ": spec.virtualHost.routes[0].options: " in e and "exclusive" in e
        for e in info.value.errors
    ), info.value.errors


def test_the_blog_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "blog.yaml"
    config.write_text(GATEWAY + "---\n" + blog_vs())
    loaded = load_paths([str(config)])
    (route,) = loaded.listeners[0].virtual_hosts[0].routes
    policy = route.policies["jwt"]
    (provider,) = policy.providers
    assert policy.policy == "ALLOW_MISSING_OR_FAILED"
    assert provider.issuer == BLOG_ISSUER and provider.keep_token
    assert provider.audiences == frozenset({"frontend"})
    assert provider.local_keys and provider.local_keys[0].kty == "RSA"
