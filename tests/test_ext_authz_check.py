"""dfproxy.auth.ext_authz_check: the check request and the decision, without sockets."""

from __future__ import annotations

import re

from dfproxy.auth.ext_authz_check import CheckConfig, build_check, decide


def config(**kw: object) -> CheckConfig:
    base: dict[str, object] = dict(
        server_uri="http://auth:9000",
        path_prefix="/check",
        allowed_headers=frozenset({b"authorization", b"x-a"}),
        allowed_regex=(re.compile(rb"x-re-.*", re.I),),
        headers_to_add=((b"x-add", b"1"),),
        upstream_headers=frozenset({b"x-user"}),
        upstream_append=frozenset({b"x-tag"}),
        client_headers=None,
        user_id_header=None,
        timeout=0.2,
        failure_mode_allow=False,
        status_on_error=403,
        cache_ttl=0.0,
        cache_max=10,
        stat_prefix="",
    )
    base.update(kw)
    return CheckConfig(**base)  # type: ignore[arg-type]


def test_check_request_carries_method_path_host_and_allowed_headers() -> None:
    headers = [
        (b"X-A", b"a"),
        (b"X-Re-Thing", b"r"),
        (b"X-Other", b"o"),
        (b"Authorization", b"Bearer x"),
        (b"X-Add", b"client"),
        (b"Content-Length", b"5"),
    ]
    c = build_check(config(), b"POST", b"/p?q=1", b"h.test", headers, is_connect=False)
    assert (c.method, c.url, c.host) == (b"POST", "http://auth:9000/check/p?q=1", "h.test")
    assert c.headers == (
        (b"x-a", b"a"),
        (b"x-re-thing", b"r"),
        (b"authorization", b"Bearer x"),
        (b"x-add", b"1"),
    )  # POST: the client adds Content-Length: 0 itself
    g = build_check(config(), b"GET", b"/p", b"h.test", [], is_connect=False)
    assert g.headers[-1] == (b"content-length", b"0")
    assert g.cache_key != c.cache_key


def test_connect_is_checked_as_a_get() -> None:
    c = build_check(config(path_prefix=""), b"CONNECT", b"", b"h:443", [], is_connect=True)
    assert (c.method, c.url, c.host) == (b"GET", "http://auth:9000/", "h:443")
    assert (b"x-forwarded-method", b"CONNECT") in c.headers


def test_200_allows_with_upstream_headers() -> None:
    d = decide(
        config(),
        200,
        [(b"X-User", b"u1"), (b"x-user", b"u2"), (b"X-Tag", b"t"), (b"X-Other", b"o")],
        b"",
    )
    assert d.allowed and d.cacheable
    assert d.headers == (
        (b"x-user", b"u1", False),
        (b"x-user", b"u2", True),
        (b"x-tag", b"t", True),
    )


def test_other_statuses_deny_with_the_service_answer() -> None:
    answer = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"2"),
        (b"Connection", b"keep-alive"),
        (b"WWW-Authenticate", b"Bearer"),
        (b"X-Why", b"no"),
        (b"Host", b"auth"),
    ]
    d = decide(config(), 401, answer, b"{}")
    assert not d.allowed and d.status == 401 and d.body == b"{}" and d.cacheable
    assert d.content_type == b"application/json"
    assert [n for n, _, _ in d.headers] == [b"www-authenticate", b"x-why"]
    limited = decide(config(client_headers=frozenset({b"x-nothing"})), 403, answer, b"")
    assert [n for n, _, _ in limited.headers] == [b"www-authenticate"]
    assert not decide(config(), 204, [], b"").allowed  # only 200 allows (Envoy)
    assert not decide(config(), 503, [], b"").cacheable
