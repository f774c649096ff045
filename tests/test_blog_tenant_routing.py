"""The flagship case end to end: the Gloo blog's multi-tenant VirtualService (seed 001,
tests/fixtures/blog/tenant_routing.yaml) in a real proxy, driven by curl as the blog does.

The chain, in order: the JWT filter verifies an RS256 token from ``Authorization: Bearer``
and copies ``tenantId`` into ``x-mypaas-tenant-id``; a regular-stage transformation builds
``x-mypaas-tenant-backend`` from it; the dynamic forward proxy routes on that header
(``autoHostRewriteHeader``) to a name the test DNS server resolves; DLP masks SSNs and card
numbers in the response. The blog's lenient ``allowMissingOrFailedJwt: true`` is run as
written, and once more with ``validationPolicy: REQUIRE_VALID`` for the refusals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from dfproxy.config.gloo import load_paths
from tests import jwt_support as s
from tests.helpers import check_alive, module_dns_server, module_proxy
from tests.support.clients import CurlResult, curl
from tests.support.dns_server import DNSTestServer
from tests.support.origin import OriginServer
from tests.support.proxy import ProxyProcess

FIXTURE = Path(__file__).parent / "fixtures" / "blog" / "tenant_routing.yaml"
KEY = s.rsa_key(7)
OTHER_KEY = s.rsa_key(8)
ISSUER = "mypaas.test"
SECRET_TEXT = "ssn 123-45-6789, card 4397945340344828, visa 4111-1111-1111-1111."
MASKED_TEXT = "ssn XXX-XX-X789, card XXXXXXXXXXXX4828, visa XXXX-XXXX-XXXX-1111."


def blog_yaml(origin_port: int, strict: bool = False) -> str:
    """The fixture with the test's public key and origin port filled in; ``strict`` swaps
    the blog's lenient policy for REQUIRE_VALID."""
    pem = (
        KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    body = "\n".join(line for line in pem.splitlines() if not line.startswith("-----"))
    text = FIXTURE.read_text()
    indent = " " * 18
    text = text.replace("@PUBLIC_KEY_BODY@", body.replace("\n", "\n" + indent))
    text = text.replace("@ORIGIN_PORT@", str(origin_port))
    if strict:
        text = text.replace("allowMissingOrFailedJwt: true", "validationPolicy: REQUIRE_VALID")
    return text


def token(key: object = KEY, **overrides: object) -> str:
    now = int(time.time())
    payload = {
        "sub": "1234567890",
        "name": "John Doe",
        "tenantId": "tenant-1",
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": "frontend",
        **overrides,
    }
    return s.sign("RS256", key, payload)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with module_dns_server() as server:
        server.set("tenant-1.mypaas.test", ["127.0.0.1"])
        server.set_error("tenant-gone.mypaas.test", "NXDOMAIN")
        yield server


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    server = OriginServer().start()
    try:
        yield server
    finally:
        server.stop()


def _proxy(
    tmp_path_factory: pytest.TempPathFactory,
    dns: DNSTestServer,
    origin: OriginServer,
    strict: bool,
) -> Iterator[ProxyProcess]:
    with module_proxy(tmp_path_factory, dns, "uvloop", config=blog_yaml(origin.port, strict)) as p:
        yield p


@pytest.fixture(scope="module")
def blog_proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, origin: OriginServer
) -> Iterator[ProxyProcess]:
    yield from _proxy(tmp_path_factory, dns_server, origin, strict=False)


@pytest.fixture(scope="module")
def strict_proxy(
    tmp_path_factory: pytest.TempPathFactory, dns_server: DNSTestServer, origin: OriginServer
) -> Iterator[ProxyProcess]:
    yield from _proxy(tmp_path_factory, dns_server, origin, strict=True)


def blog_curl(proxy: ProxyProcess, path: str, bearer: str | None) -> CurlResult:
    """The blog's command: ``curl $(glooctl proxy url)/ -H "Host:" -H "Authorization: ..."``."""
    args = [f"http://127.0.0.1:{proxy.port}{path}", "-H", "Host:"]
    if bearer is not None:
        args += ["-H", f"Authorization: Bearer {bearer}"]
    result = curl(*args)
    check_alive(proxy)
    return result


def test_the_blog_yaml_loads_unchanged_apart_from_key_and_names(tmp_path: Path) -> None:
    path = tmp_path / "blog.yaml"
    path.write_text(blog_yaml(8000))
    config = load_paths([str(path)])
    (route,) = config.listeners[0].virtual_hosts[0].routes
    assert route.host_rewrite_header == "x-mypaas-tenant-backend"
    assert {"jwt", "transformation.regular", "dlp"} <= set(route.policies), route.policies


def test_a_tenant_token_reaches_its_backend_with_the_claim_and_the_token(
    blog_proxy: ProxyProcess, origin: OriginServer, dns_server: DNSTestServer
) -> None:
    result = blog_curl(blog_proxy, "/echo", token())
    assert result.http_code == 200, result.stdout
    seen = {name.lower(): value for name, value in json.loads(result.stdout)["headers"]}
    assert seen["x-mypaas-tenant-id"] == "tenant-1"
    assert seen["x-mypaas-tenant-backend"] == f"tenant-1.mypaas.test:{origin.port}"
    assert seen["host"] == f"tenant-1.mypaas.test:{origin.port}"
    assert seen["authorization"].startswith("Bearer ")  # keepToken: true
    assert any(q.name == "tenant-1.mypaas.test" for q in dns_server.queries)


@pytest.mark.parametrize("framing", ["cl", "chunked", "close"])
def test_ssns_and_card_numbers_are_masked_in_the_response(
    blog_proxy: ProxyProcess, framing: str
) -> None:
    result = blog_curl(blog_proxy, f"/say/{framing}?text={quote(SECRET_TEXT)}&chunk=7", token())
    assert result.http_code == 200
    assert result.stdout.decode() == MASKED_TEXT


def test_the_blog_lenient_policy_lets_a_bad_token_through_without_a_tenant(
    blog_proxy: ProxyProcess,
) -> None:
    # allowMissingOrFailedJwt: the request continues, but no tenant claim was verified, so
    # the backend name is ".mypaas.test": not a resolvable tenant. A client-sent tenant
    # header never survives (the JWT filter removes it before the template reads it).
    for bearer in (None, token(OTHER_KEY)):
        args = [f"http://127.0.0.1:{blog_proxy.port}/echo", "-H", "Host:"]
        args += ["-H", "x-mypaas-tenant-id: tenant-1"]
        if bearer is not None:
            args += ["-H", f"Authorization: Bearer {bearer}"]
        result = curl(*args)
        assert result.http_code == 503, result.stdout
        assert result.stdout == b"DNS resolution failure"
    check_alive(blog_proxy)


@pytest.mark.parametrize(
    ("bearer", "status", "body"),
    [
        (None, 401, "Jwt is missing"),
        (token(exp=int(time.time()) - 3600), 401, "Jwt is expired"),
        (token(iss="evil.test"), 401, "Jwt issuer is not configured"),
        (token(OTHER_KEY), 401, "Jwt verification fails"),
        (token(aud="backend"), 403, "Audiences in Jwt are not allowed"),
        (token(tenantId="tenant-gone"), 503, "DNS resolution failure"),
    ],
    ids=["missing", "expired", "wrong-issuer", "wrong-key", "wrong-audience", "no-backend"],
)
def test_refusals_give_their_documented_status(
    strict_proxy: ProxyProcess, bearer: str | None, status: int, body: str
) -> None:
    result = blog_curl(strict_proxy, "/echo", bearer)
    assert (result.http_code, result.stdout.decode()) == (status, body)
