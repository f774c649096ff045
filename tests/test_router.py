"""Unit tests for dfproxy.router: virtual-host domain order and route matchers.

The matchers only read a few attributes of a Stream; FakeStream provides exactly those
(``is_connect``, ``method``, ``path_only()``, ``query_params()``, ``request_header()``,
``route_host()``), with the same semantics as dfproxy.stream.Stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl

import pytest

from dfproxy.router import (
    MATCH_ALL,
    HeaderMatcher,
    Matcher,
    QueryMatcher,
    Route,
    RouteTable,
    VirtualHost,
)

if TYPE_CHECKING:
    from dfproxy.stream import Stream


@dataclass
class FakeStream:
    path: str = "/"
    method: bytes = b"GET"
    host: str = "example.com"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    is_connect: bool = False

    def path_only(self) -> str:
        return self.path.partition("?")[0]

    def query_params(self) -> dict[str, str]:
        q = self.path.partition("?")[2]
        return dict(parse_qsl(q, keep_blank_values=True)) if q else {}

    def request_header(self, lname: bytes) -> bytes | None:
        if lname == b"host":
            return self.host.encode()
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None

    def request_header_joined(self, lname: bytes) -> bytes | None:
        if lname in (b"host", b":authority"):
            return self.host.encode()
        values = [v for n, v in self.headers if n.lower() == lname]
        return b",".join(values) if values else None

    def route_host(self) -> str:
        return self.host.lower()

    matcher: object = None


def S(*args: object, **kwargs: object) -> Stream:  # noqa: N802 - reads like a constructor
    return cast("Stream", FakeStream(*args, **kwargs))  # type: ignore[arg-type]


def route(name: str, *matchers: Matcher) -> Route:
    return Route(name=name, matchers=list(matchers) or [MATCH_ALL], action=None)


def vhost(name: str, *domains: str) -> VirtualHost:
    return VirtualHost(name, list(domains), [route(f"{name}-route")])


def table(*vhosts: VirtualHost) -> RouteTable:
    return RouteTable(list(vhosts))


def vh_name(t: RouteTable, host: str) -> str | None:
    vh = t.find_vhost(host)
    return None if vh is None else vh.name


# ============================================================================ domains
@pytest.fixture
def full_table() -> RouteTable:
    return table(
        vhost("default", "*"),
        vhost("prefix-short", "api.*"),
        vhost("prefix-long", "api.foo.*"),
        vhost("suffix-short", "*.com"),
        vhost("suffix-long", "*.foo.com"),
        vhost("exact", "api.foo.com"),
    )


def test_exact_beats_every_wildcard(full_table: RouteTable) -> None:
    assert vh_name(full_table, "api.foo.com") == "exact"


def test_suffix_wildcard_beats_prefix_wildcard(full_table: RouteTable) -> None:
    # "*.foo.com" and "api.*" both match; suffix wildcards come first.
    assert vh_name(full_table, "api.x.foo.com") == "suffix-long"


def test_longest_suffix_wildcard_first(full_table: RouteTable) -> None:
    assert vh_name(full_table, "www.foo.com") == "suffix-long"
    assert vh_name(full_table, "www.bar.com") == "suffix-short"


def test_longest_prefix_wildcard_first(full_table: RouteTable) -> None:
    assert vh_name(full_table, "api.foo.org") == "prefix-long"
    assert vh_name(full_table, "api.bar.org") == "prefix-short"


def test_star_is_last(full_table: RouteTable) -> None:
    assert vh_name(full_table, "other.org") == "default"


def test_order_does_not_depend_on_declaration_order() -> None:
    t = table(
        vhost("exact", "api.foo.com"),
        vhost("suffix-long", "*.foo.com"),
        vhost("suffix-short", "*.com"),
        vhost("prefix-long", "api.foo.*"),
        vhost("prefix-short", "api.*"),
        vhost("default", "*"),
    )
    assert vh_name(t, "api.foo.com") == "exact"
    assert vh_name(t, "www.foo.com") == "suffix-long"
    assert vh_name(t, "www.bar.com") == "suffix-short"
    assert vh_name(t, "api.foo.org") == "prefix-long"
    assert vh_name(t, "api.bar.org") == "prefix-short"
    assert vh_name(t, "zzz") == "default"


def test_wildcard_never_matches_empty_string() -> None:
    suffix = table(vhost("suffix", "*.foo.com"))
    assert vh_name(suffix, "foo.com") is None  # "*.foo.com" needs something before ".foo.com"
    assert vh_name(suffix, ".foo.com") is None  # the "*" would match the empty string
    assert vh_name(suffix, "x.foo.com") == "suffix"
    prefix = table(vhost("prefix", "foo.*"))
    assert vh_name(prefix, "foo.") is None
    assert vh_name(prefix, "foo") is None
    assert vh_name(prefix, "foo.x") == "prefix"


def test_suffix_wildcard_without_dot() -> None:
    """``*-bar.foo.com`` is a plain suffix (Envoy allows it)."""
    t = table(vhost("dash", "*-bar.foo.com"))
    assert vh_name(t, "x-bar.foo.com") == "dash"
    assert vh_name(t, "-bar.foo.com") is None
    assert vh_name(t, "xbar.foo.com") is None


def test_no_match_without_default() -> None:
    t = table(vhost("a", "a.com"))
    assert vh_name(t, "b.com") is None
    assert t.select(S(host="b.com")) is None


def test_only_default() -> None:
    t = table(vhost("default", "*"))
    assert t.only_default
    assert vh_name(t, "anything:1234") == "default"
    assert vh_name(t, "") == "default"


def test_domains_are_case_insensitive() -> None:
    t = table(vhost("exact", "API.Foo.COM"), vhost("suffix", "*.Bar.COM"))
    # find_vhost receives a lower-cased host (route_host() lowers it)
    assert vh_name(t, "api.foo.com") == "exact"
    assert vh_name(t, "x.bar.com") == "suffix"
    assert t.select(S(host="API.FOO.COM")) is not None


def test_port_stripped_when_domain_has_none() -> None:
    t = table(vhost("exact", "foo.com"), vhost("suffix", "*.bar.com"), vhost("prefix", "baz.*"))
    assert vh_name(t, "foo.com:8080") == "exact"
    assert vh_name(t, "x.bar.com:8080") == "suffix"
    assert vh_name(t, "baz.org:8080") == "prefix"


def test_domain_with_port_matches_exactly() -> None:
    t = table(vhost("with-port", "foo.com:8080"), vhost("bare", "foo.com"), vhost("any", "*"))
    assert vh_name(t, "foo.com:8080") == "with-port"
    assert vh_name(t, "foo.com:9090") == "bare"
    assert vh_name(t, "foo.com") == "bare"


def test_domain_with_port_does_not_match_other_port_without_bare_domain() -> None:
    t = table(vhost("with-port", "foo.com:8080"), vhost("any", "*"))
    assert vh_name(t, "foo.com:9090") == "any"
    assert vh_name(t, "foo.com") == "any"


def test_ipv6_port_stripping() -> None:
    t = table(vhost("v6", "[::1]"), vhost("any", "*"))
    assert vh_name(t, "[::1]:8080") == "v6"
    assert vh_name(t, "[::1]") == "v6"
    assert vh_name(t, "[::2]:8080") == "any"


def test_connect_target_is_routed_by_host_port() -> None:
    t = table(vhost("exact", "tunnel.example:443"), vhost("bare", "other.example"))
    assert vh_name(t, "tunnel.example:443") == "exact"
    assert vh_name(t, "other.example:443") == "bare"


# ============================================================================ matchers
@pytest.mark.parametrize(
    ("path", "ok"),
    [("/api", True), ("/api/x", True), ("/apix", True), ("/ap", False), ("/API", False)],
)
def test_prefix(path: str, ok: bool) -> None:
    assert Matcher(prefix="/api").matches(S(path=path)) is ok


def test_prefix_ignores_query() -> None:
    m = Matcher(prefix="/api/v1")
    assert m.matches(S(path="/api/v1?x=1"))
    assert not m.matches(S(path="/api?/v1"))


def test_match_all() -> None:
    assert MATCH_ALL.matches(S(path="/"))
    assert MATCH_ALL.matches(S(path="/anything?q=1"))


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/exact", True), ("/exact?q=1", True), ("/exact/", False), ("/exac", False)],
)
def test_exact(path: str, ok: bool) -> None:
    assert Matcher(exact="/exact").matches(S(path=path)) is ok


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/users/42", True),
        ("/users/42?x=y", True),  # the query is not part of the matched path
        ("/users/42/", False),  # full match, not search
        ("/x/users/42", False),
        ("/users/", False),
    ],
)
def test_regex_is_full_match(path: str, ok: bool) -> None:
    assert Matcher(regex=re.compile(r"/users/[0-9]+")).matches(S(path=path)) is ok


def test_case_insensitive_prefix_and_exact() -> None:
    assert Matcher(prefix="/API", case_sensitive=False).matches(S(path="/api/x"))
    assert Matcher(prefix="/api", case_sensitive=False).matches(S(path="/ApI/x"))
    assert not Matcher(prefix="/API").matches(S(path="/api/x"))
    assert Matcher(exact="/Foo", case_sensitive=False).matches(S(path="/fOO"))
    assert not Matcher(exact="/Foo").matches(S(path="/foo"))


def test_connect_matcher_only_matches_connect() -> None:
    connect = Matcher(connect=True)
    tunnel = S(path="", is_connect=True, method=b"CONNECT", host="h:443")
    assert connect.matches(tunnel)
    assert not connect.matches(S(path="/"))
    # HTTP/1.1 CONNECT has no path: a path matcher never matches it.
    assert not MATCH_ALL.matches(tunnel)
    assert not Matcher(exact="").matches(tunnel)


def test_methods() -> None:
    m = Matcher(prefix="/", methods=frozenset({b"GET", b"HEAD"}))
    assert m.matches(S(method=b"GET"))
    assert m.matches(S(method=b"HEAD"))
    assert not m.matches(S(method=b"POST"))
    assert Matcher(connect=True, methods=frozenset({b"CONNECT"})).matches(
        S(method=b"CONNECT", is_connect=True, path="")
    )


def test_header_present() -> None:
    m = Matcher(prefix="/", headers=(HeaderMatcher(b"x-flag"),))
    assert m.matches(S(headers=[(b"X-Flag", b"")]))
    assert m.matches(S(headers=[(b"x-flag", b"anything")]))
    assert not m.matches(S(headers=[(b"x-other", b"1")]))


def test_header_exact_value() -> None:
    m = Matcher(prefix="/", headers=(HeaderMatcher(b"x-env", "prod"),))
    assert m.matches(S(headers=[(b"X-Env", b"prod")]))
    assert not m.matches(S(headers=[(b"X-Env", b"production")]))
    assert not m.matches(S(headers=[(b"X-Env", b"Prod")]))
    assert not m.matches(S())


def test_header_regex_full_match() -> None:
    h = HeaderMatcher(b"x-v", "v[0-9]+", regex=True, _pattern=re.compile("v[0-9]+"))
    m = Matcher(prefix="/", headers=(h,))
    assert m.matches(S(headers=[(b"x-v", b"v12")]))
    assert not m.matches(S(headers=[(b"x-v", b"v12a")]))
    assert not m.matches(S(headers=[(b"x-v", b"av1")]))
    assert not m.matches(S())


def test_header_invert() -> None:
    m = Matcher(prefix="/", headers=(HeaderMatcher(b"x-env", "prod", invert=True),))
    assert not m.matches(S(headers=[(b"x-env", b"prod")]))
    assert m.matches(S(headers=[(b"x-env", b"dev")]))
    # absent: Envoy's matchHeaders never matches a value matcher, inverted or not
    assert not m.matches(S())
    present_inverted = Matcher(prefix="/", headers=(HeaderMatcher(b"x-a", invert=True),))
    assert present_inverted.matches(S())
    assert not present_inverted.matches(S(headers=[(b"x-a", b"1")]))
    rx = HeaderMatcher(b"x-v", "v.*", regex=True, invert=True, _pattern=re.compile("v.*"))
    assert not Matcher(prefix="/", headers=(rx,)).matches(S(headers=[(b"x-v", b"v1")]))
    assert Matcher(prefix="/", headers=(rx,)).matches(S(headers=[(b"x-v", b"w1")]))


def test_all_header_conditions_must_hold() -> None:
    m = Matcher(prefix="/", headers=(HeaderMatcher(b"a", "1"), HeaderMatcher(b"b", "2")))
    assert m.matches(S(headers=[(b"a", b"1"), (b"b", b"2")]))
    assert not m.matches(S(headers=[(b"a", b"1")]))
    assert not m.matches(S(headers=[(b"a", b"1"), (b"b", b"3")]))


def test_header_matcher_on_host() -> None:
    m = Matcher(prefix="/", headers=(HeaderMatcher(b"host", "api.example.com"),))
    assert m.matches(S(host="api.example.com"))
    assert not m.matches(S(host="other.example.com"))


def test_query_parameters() -> None:
    present = Matcher(prefix="/", query=(QueryMatcher("debug"),))
    assert present.matches(S(path="/?debug"))
    assert present.matches(S(path="/?debug=1&x=2"))
    assert not present.matches(S(path="/?x=1"))
    assert not present.matches(S(path="/"))

    exact = Matcher(prefix="/", query=(QueryMatcher("v", "2"),))
    assert exact.matches(S(path="/p?v=2"))
    assert not exact.matches(S(path="/p?v=20"))
    assert not exact.matches(S(path="/p"))

    rx = Matcher(
        prefix="/", query=(QueryMatcher("id", "[0-9]+", regex=True, _pattern=re.compile("[0-9]+")),)
    )
    assert rx.matches(S(path="/?id=123"))
    assert not rx.matches(S(path="/?id=12a"))
    assert not rx.matches(S(path="/?other=1"))


def test_path_and_conditions_combined() -> None:
    m = Matcher(
        prefix="/api",
        methods=frozenset({b"POST"}),
        headers=(HeaderMatcher(b"x-a", "1"),),
        query=(QueryMatcher("q"),),
    )
    ok = S(path="/api/x?q=1", method=b"POST", headers=[(b"x-a", b"1")])
    assert m.matches(ok)
    assert not m.matches(S(path="/other?q=1", method=b"POST", headers=[(b"x-a", b"1")]))
    assert not m.matches(S(path="/api/x?q=1", method=b"GET", headers=[(b"x-a", b"1")]))
    assert not m.matches(S(path="/api/x?q=1", method=b"POST"))
    assert not m.matches(S(path="/api/x", method=b"POST", headers=[(b"x-a", b"1")]))


# ============================================================================ routes
def test_route_matches_if_any_matcher_matches() -> None:
    r = route("r", Matcher(exact="/a"), Matcher(prefix="/b"))
    assert r.matches(S(path="/a"))
    assert r.matches(S(path="/b/c"))
    assert not r.matches(S(path="/c"))


def test_first_matching_route_wins() -> None:
    vh = VirtualHost(
        "v",
        ["*"],
        [
            route("connect", Matcher(connect=True)),
            route("specific", Matcher(prefix="/api")),
            route("catch-all", MATCH_ALL),
            route("never", Matcher(prefix="/api/x")),
        ],
    )
    t = table(vh)

    def selected(s: Stream) -> str | None:
        r = t.select(s)
        return None if r is None else r.name

    assert selected(S(path="/api/x")) == "specific"
    assert selected(S(path="/other")) == "catch-all"
    assert selected(S(path="", is_connect=True, method=b"CONNECT", host="h:443")) == "connect"


def test_select_uses_vhost_then_route() -> None:
    t = table(
        VirtualHost("a", ["a.example"], [route("a-api", Matcher(prefix="/api"))]),
        VirtualHost("any", ["*"], [route("any-all", MATCH_ALL)]),
    )
    r = t.select(S(host="a.example:8080", path="/api/1"))
    assert r is not None and r.name == "a-api"
    # the vhost matched but no route did: no fallback to another vhost (Envoy: 404)
    assert t.select(S(host="a.example", path="/other")) is None
    r = t.select(S(host="b.example", path="/other"))
    assert r is not None and r.name == "any-all"


def test_empty_route_table() -> None:
    t = table()
    assert t.find_vhost("x") is None
    assert t.select(S()) is None
