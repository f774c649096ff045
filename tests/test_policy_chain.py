"""Policies working together in one real proxy, through the per-request state they share
(dfproxy/policies.py order): proxy authentication leaves ``proxy_user`` for the source rules,
the JWT filter leaves ``jwt_payload`` for Gloo RBAC's JWT principals and for a rate limit
keyed on a claim. Each filter is tested alone in its own file; this checks the hand-offs."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import pytest

from tests import jwt_support as s
from tests.helpers import check_alive, module_dns_server, module_proxy
from tests.support import gloo_yaml
from tests.support.clients import RawClient
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

KEY = s.rsa_key(11)
SHA = "{SHA}" + base64.b64encode(hashlib.sha1(b"secret").digest()).decode()


def chain_config() -> str:
    jwt = f"""
        jwtStaged:
          beforeExtAuth:
            providers:
              main:
                issuer: issuer.test
                jwks: {{local: {{key: {json.dumps(s.pem(KEY))}}}}}
            validationPolicy: ALLOW_MISSING
        proxyAuth: {{disable: true}}
        rbac:
          policies:
            readers: {{permissions: {{methods: [GET]}}}}
            alice: {{principals: [{{jwtPrincipal: {{claims: {{sub: alice}}}}}}]}}
        ratelimit:
          localRatelimitDescriptors:
            - name: per-subject
              actions: [{{jwtClaim: {{claim: sub, descriptorKey: sub}}}}]
              tokenBucket: {{maxTokens: 2, tokensPerFill: 2, fillInterval: 3600s}}
    """
    proxy_auth = f"""
        proxyAuth:
          realm: chain
          users: [{{name: carol, passwordHash: {json.dumps(SHA)}}}]
    """
    users = """
        sourcePolicy:
          defaultAction: DENY
          rules: [{name: carol-only, action: ALLOW, proxyUsers: [carol]}]
    """
    return gloo_yaml.config(
        gloo_yaml.gateway(proxy_auth),
        gloo_yaml.virtual_service("jwt", "jwt.test:*", gloo_yaml.DFP_ROUTE, jwt),
        gloo_yaml.virtual_service("users", "users.test:*", gloo_yaml.DFP_ROUTE, users),
    )


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with module_dns_server() as server:
        server.set("jwt.test", ["127.0.0.1"])
        server.set("users.test", ["127.0.0.1"])
        yield server


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    server = OriginServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer
) -> Iterator[ProxyProcess]:
    with module_proxy(tmp_path_factory, dns_server, "uvloop", config=chain_config()) as p:
        yield p


def send(
    proxy: ProxyProcess, url: str, method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> tuple[int, str]:
    with RawClient("127.0.0.1", proxy.port) as c:
        res = c.request(method, url, headers or [])
    check_alive(proxy)
    return res.status, res.text


def bearer(sub: str) -> list[tuple[str, str]]:
    return [("Authorization", "Bearer " + s.sign("RS256", KEY, s.claims(sub=sub)))]


def test_rbac_jwt_principal_reads_the_payload_the_jwt_filter_verified(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    url = f"http://jwt.test:{origin.port}/echo"
    assert send(proxy, url, "POST", bearer("alice"))[0] == 200
    assert send(proxy, url, "POST", bearer("bob")) == (403, "RBAC: access denied")
    # A forged claim is no principal: only a verified payload counts.
    forged = s.sign("RS256", s.rsa_key(12), s.claims(sub="alice"))
    assert send(proxy, url, "POST", [("Authorization", f"Bearer {forged}")])[0] == 401
    assert send(proxy, url, "POST") == (403, "RBAC: access denied")  # no token: no principal


def test_a_rate_limit_keyed_on_a_verified_claim(proxy: ProxyProcess, origin: OriginServer) -> None:
    url = f"http://jwt.test:{origin.port}/echo?limit"
    assert [send(proxy, url, "GET", bearer("dave"))[0] for _ in range(3)] == [200, 200, 429]
    assert send(proxy, url, "GET", bearer("erin"))[0] == 200  # another subject, own bucket


def test_source_rules_see_the_user_proxy_authentication_verified(
    proxy: ProxyProcess, origin: OriginServer
) -> None:
    url = f"http://users.test:{origin.port}/echo"
    carol = "Basic " + base64.b64encode(b"carol:secret").decode()
    assert send(proxy, url, headers=[("Proxy-Authorization", carol)])[0] == 200
    assert send(proxy, url)[0] == 407  # authentication runs first, before the source rules
