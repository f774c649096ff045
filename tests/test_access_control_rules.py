"""Access control without sockets: address forms, numeric spellings, rule matching and
decisions (dfproxy/access/addresses.py, rules.py, compile.py, cli.py), and the filters
driven with a stand-in stream (the JWT payload and proxy user placed in its state, as the
JWT and proxy-auth filters leave them)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from dfproxy.access import cli as access_cli
from dfproxy.access import compile as comp
from dfproxy.access.addresses import CidrSet, forms, peer_forms
from dfproxy.access.filter import AccessStats, DestinationFilter, SourceFilter
from dfproxy.access.policy import NAME
from dfproxy.access.rules import (
    UNDECIDED,
    DestinationRule,
    DestinationRules,
    DomainSet,
    JwtPrincipal,
    PortSet,
    RbacPolicies,
    RbacPolicy,
    SourceRule,
    SourceRules,
)
from dfproxy.config.model import default_config
from dfproxy.dns.cache import DnsHostInfo
from dfproxy.filters import CONTINUE, STOP
from dfproxy.http.authority import Authority, numeric_ipv4
from dfproxy.stats import StatsStore

LOOPBACK = CidrSet(["127.0.0.0/8", "::1/128"])


# ---------------------------------------------------------------------------- spellings
@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "127.0.0.1.", "0177.1"]
)
def test_numeric_spellings_of_loopback(host: str) -> None:
    assert numeric_ipv4(host) == "127.0.0.1"


@pytest.mark.parametrize(
    "host", ["example.com", "1password.com", "256.1.1.1", "1.2.3.4.5", "08.1", "1..2", "1e9"]
)
def test_names_are_not_numeric(host: str) -> None:
    assert numeric_ipv4(host) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:7f00:1",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:7f00:1::",  # 6to4
        "2002:7f00:0001:ffff::1",
        "64:ff9b::7f00:1",  # NAT64 well-known prefix
        "64:ff9b::127.0.0.1",
        "64:ff9b:1::7f00:1",  # NAT64 local-use
    ],
)
def test_every_form_of_loopback_is_in_the_loopback_ranges(address: str) -> None:
    assert LOOPBACK.matches(forms(address))


@pytest.mark.parametrize("address", ["128.0.0.1", "::2", "2001:db8::7f00:1", "2003:7f00:1::"])
def test_other_addresses_are_not(address: str) -> None:
    assert not LOOPBACK.matches(forms(address))


def _counters(store: StatsStore) -> dict[str, int]:
    return {name: c.value for name, c in store.counters.items()}


def test_unspecified_v6_has_no_embedded_v4() -> None:
    assert forms("::") == ((6, 0),)


def test_ipv6_zone_is_ignored() -> None:
    assert CidrSet(["fe80::/10"]).matches(forms("fe80::1%eth0"))


def test_peer_forms() -> None:
    assert peer_forms("127.0.0.1:5000") == forms("127.0.0.1")
    assert peer_forms("[::1]:5000") == forms("::1")
    assert peer_forms("::1:5000") == forms("::1")  # HttpConnection's unbracketed v6 peer
    assert peer_forms("") == ()
    assert peer_forms("unix:0") == ()


def test_cidr_set_rejects_host_bits() -> None:
    with pytest.raises(ValueError):
        CidrSet(["127.0.0.1/8"])


# ---------------------------------------------------------------------------- matchers
def test_domain_set() -> None:
    d = DomainSet(["api.example.com", "*.corp.example"])
    assert d.matches("api.example.com")
    assert d.matches("api.example.com.")  # absolute name
    assert not d.matches("x.api.example.com")
    assert d.matches("a.corp.example") and d.matches("a.b.corp.example")
    assert not d.matches("corp.example")  # Envoy: the suffix wildcard needs a label
    assert not d.matches("evilcorp.example")
    assert DomainSet(["*"]).matches("anything")


@pytest.mark.parametrize("bad", ["a.*.com", "*foo.com", "", "*."])
def test_domain_set_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        DomainSet([bad])


def test_port_set() -> None:
    p = PortSet([443, "8000-8100"])
    assert p.matches(443) and p.matches(8000) and p.matches(8100)
    assert not p.matches(80) and not p.matches(8101)
    inverted = PortSet([443], invert=True)
    assert inverted.matches(80) and not inverted.matches(443)


@pytest.mark.parametrize("bad", [0, 65536, "9-1", "a-b", "80-"])
def test_port_set_rejects(bad: int | str) -> None:
    with pytest.raises(ValueError):
        PortSet([bad])


# ---------------------------------------------------------------------------- decisions
def _rules() -> DestinationRules:
    return DestinationRules(
        [
            DestinationRule("deny-name", False, domains=DomainSet(["blocked.test"])),
            DestinationRule("allow-two", True, cidrs=CidrSet(["127.0.0.2/32"])),
            DestinationRule("deny-loopback", False, cidrs=LOOPBACK),
            DestinationRule("deny-port", False, ports=PortSet([25])),
        ],
        DestinationRule("default", True),
    )


def test_first_matching_rule_decides() -> None:
    r = _rules()
    assert r.decide("blocked.test", 80, False, forms("127.0.0.2")).name == "deny-name"
    assert r.decide("two.test", 80, False, forms("127.0.0.2")).name == "allow-two"
    assert r.decide("one.test", 80, False, forms("127.0.0.1")).name == "deny-loopback"
    assert r.decide("pub.test", 25, False, forms("192.0.2.1")).name == "deny-port"
    assert r.decide("pub.test", 80, False, forms("192.0.2.1")).name == "default"


def test_decide_name_before_dns() -> None:
    r = _rules()
    assert r.decide_name("blocked.test", 80, False).name == "deny-name"
    assert r.decide_name("pub.test", 80, False) is UNDECIDED  # an address rule allows first
    only_denies = DestinationRules(
        [
            DestinationRule("deny-loopback", False, cidrs=LOOPBACK),
            DestinationRule("deny-port", False, ports=PortSet([25])),
        ],
        DestinationRule("default", True),
    )
    # An address rule that denies cannot turn a later denial into an allow.
    assert only_denies.decide_name("pub.test", 25, False).name == "deny-port"
    assert only_denies.decide_name("pub.test", 80, False) is UNDECIDED


def test_secure_defaults() -> None:
    policy = comp.embedded_default()
    r = policy.destination
    assert r is not None

    def name(address: str, port: int = 80, connect: bool = False) -> str:
        assert r is not None
        return r.decide("h.test", port, connect, forms(address)).name

    assert name("169.254.169.254") == "deny-metadata"
    assert name("fd00:ec2::254") == "deny-metadata"
    assert name("fe80::1") == "deny-metadata"
    assert name("127.0.0.1") == "deny-loopback"
    assert name("::ffff:127.0.0.1") == "deny-loopback"
    assert name("::") == "deny-loopback"
    for private in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0", "fd12::1"):
        assert name(private) == "deny-private", private
    assert name("64:ff9b::a01:203") == "deny-private"  # NAT64 of 10.1.2.3
    assert name("192.0.2.1") == "default"
    assert name("192.0.2.1", 443, True) == "default"
    assert name("192.0.2.1", 22, True) == "connect-ports"
    assert r.decide_name("h.test", 8000, True).name == "connect-ports"


# ---------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("text", "address", "port", "ok"),
    [
        ("127.0.0.0/8", "127.9.9.9", 1234, True),
        ("::1", "::1", 1, True),
        ("127.0.0.2:9000", "127.0.0.2", 9000, True),
        ("127.0.0.2:9000", "127.0.0.2", 9001, False),
        ("[::1]:8080", "::1", 8080, True),
        ("2130706433", "127.0.0.1", 80, True),
    ],
)
def test_allow_destination_addresses(text: str, address: str, port: int, ok: bool) -> None:
    rule = access_cli.allow_destination(text)
    assert rule.allow
    assert rule.cidrs is not None and rule.cidrs.matches(forms(address))
    assert rule.matches_request("x", port, False) is ok
    assert rule.matches_request("x", port, True) is ok  # CONNECT alike


def test_allow_destination_names() -> None:
    rule = access_cli.allow_destination("*.corp.example:8443")
    assert rule.matches_request("a.corp.example", 8443, True)
    assert not rule.matches_request("a.corp.example", 443, True)
    assert access_cli.allow_destination("api.internal").matches_request("api.internal", 1, False)


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "a.*.b", "host:99999", "[::1", ""])
def test_allow_destination_rejects(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--allow-destination"):
        access_cli.allow_destination(bad)


def test_cli_flags_on_the_embedded_default() -> None:
    config = default_config()
    access_cli.apply(config, True, ["127.0.0.2"], [8443])
    for route in config.listeners[0].virtual_hosts[0].routes:
        r = route.policies[NAME].destination
        assert r.decide("h", 80, False, forms("127.0.0.2")).allow
        assert r.decide("h", 80, False, forms("127.0.0.1")).name == "deny-loopback"
        assert r.decide("h", 8443, True, forms("192.0.2.1")).allow
        assert r.decide("h", 8444, True, forms("192.0.2.1")).name == "connect-ports"


def test_cli_flags_leave_a_user_config_without_policy_alone() -> None:
    config = default_config()
    access_cli.apply(config, False, ["127.0.0.2"], [])
    assert all(NAME not in r.policies for r in config.listeners[0].virtual_hosts[0].routes)


# ---------------------------------------------------------------------------- Gloo RBAC
def test_jwt_principal_matchers() -> None:
    payload: dict[str, Any] = {
        "sub": "alice",
        "admin": True,
        "groups": ["dev", "ops"],
        "org": {"team": "egress"},
    }
    assert JwtPrincipal({"sub": "alice"}).matches(payload, "")
    assert not JwtPrincipal({"sub": "bob"}).matches(payload, "")
    assert not JwtPrincipal({"sub": "alice", "iss": "x"}).matches(payload, "")  # all claims
    assert JwtPrincipal({"admin": "true"}, "BOOLEAN").matches(payload, "")
    assert not JwtPrincipal({"admin": "false"}, "BOOLEAN").matches(payload, "")
    assert not JwtPrincipal({"admin": "true"}).matches(payload, "")  # not a string claim
    assert JwtPrincipal({"groups": "ops"}, "LIST_CONTAINS").matches(payload, "")
    assert not JwtPrincipal({"groups": "qa"}, "LIST_CONTAINS").matches(payload, "")
    assert JwtPrincipal({"org.team": "egress"}).matches(payload, ".")
    assert not JwtPrincipal({"org.team": "egress"}).matches(payload, "")
    assert not JwtPrincipal({"sub": "alice"}).matches(None, "")


def test_rbac_policies_any_policy_allows() -> None:
    policies = RbacPolicies(
        [
            RbacPolicy("admins", [JwtPrincipal({"sub": "alice"})]),
            RbacPolicy("readers", [], path_prefix="/public", methods=frozenset({b"GET"})),
        ]
    )
    assert policies.allowed({"sub": "alice"}, "/private", b"POST")
    assert policies.allowed(None, "/public/x", b"GET")
    assert not policies.allowed(None, "/public/x", b"POST")
    assert not policies.allowed({"sub": "bob"}, "/private", b"GET")


# ---------------------------------------------------------------------------- the filters
class _Listener:
    name = "test"


class _Conn:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.listener = _Listener()


class FakeStream:
    """What the access filters read from a Stream, and a captured local reply."""

    def __init__(
        self,
        peer: str = "127.0.0.1:5000",
        state: dict[str, object] | None = None,
        authority: Authority | None = None,
        connect: bool = False,
        method: bytes = b"GET",
        path: str = "/",
    ) -> None:
        self.conn = _Conn(peer)
        self.filter_state = state
        self.authority = authority
        self.is_connect = connect
        self.method = method
        self.target = b"http://x/"
        self.path = path
        self.host: DnsHostInfo | None = None
        self.details = ""
        self.reply: tuple[int, bytes] | None = None

    def path_only(self) -> str:
        return self.path

    def send_local_reply(self, status: int, body: bytes, **_: object) -> None:
        self.reply = (status, body)


def _stats() -> tuple[StatsStore, AccessStats]:
    store = StatsStore()
    return store, AccessStats(store, "http.test.rbac.")


def _source(*rules: SourceRule, default: bool = True) -> SourceRules:
    return SourceRules(list(rules), SourceRule("default", default))


def test_source_filter_client_cidr() -> None:
    store, stats = _stats()
    f = SourceFilter(
        _source(SourceRule("deny-lab", False, client_cidrs=CidrSet(["127.0.0.0/8"]))),
        None,
        stats,
        True,
    )
    s = FakeStream("127.0.0.1:4000")
    assert f.on_request_headers(s) == STOP
    assert s.reply == (403, b"source denied by rule 'deny-lab' (127.0.0.1)")
    assert s.details == "rbac_access_denied_matched_policy[deny-lab]"
    s6 = FakeStream("[2001:db8::1]:4000")
    assert f.on_request_headers(s6) == CONTINUE
    assert s6.reply is None
    counters = _counters(store)
    assert counters["http.test.rbac.denied"] == 1
    assert counters["http.test.rbac.allowed"] == 1
    assert counters["http.test.rbac.policy.deny-lab.denied"] == 1


def test_source_filter_client_cidr_v6_allow_list() -> None:
    _, stats = _stats()
    f = SourceFilter(
        _source(SourceRule("office", True, client_cidrs=CidrSet(["2001:db8::/32"])), default=False),
        None,
        stats,
        True,
    )
    assert f.on_request_headers(FakeStream("[2001:db8::7]:1")) == CONTINUE
    s = FakeStream("192.0.2.1:1")
    assert f.on_request_headers(s) == STOP
    assert s.reply == (403, b"source denied by rule 'default' (192.0.2.1)")


def test_source_filter_proxy_user() -> None:
    _, stats = _stats()
    f = SourceFilter(
        _source(
            SourceRule("staff", True, proxy_users=frozenset({"alice"})),
            SourceRule("deny-known", False, proxy_users=frozenset({"*"}), any_user=True),
            default=False,
        ),
        None,
        stats,
        True,
    )
    assert f.on_request_headers(FakeStream(state={"proxy_user": "alice"})) == CONTINUE
    bob = FakeStream(state={"proxy_user": "bob"})
    assert f.on_request_headers(bob) == STOP
    assert bob.reply == (403, b"source denied by rule 'deny-known' (127.0.0.1, user bob)")
    anonymous = FakeStream()
    assert f.on_request_headers(anonymous) == STOP
    assert anonymous.reply == (403, b"source denied by rule 'default' (127.0.0.1)")


def test_source_filter_jwt_claim_through_rbac() -> None:
    store, stats = _stats()
    rbac = RbacPolicies([RbacPolicy("team", [JwtPrincipal({"team": "egress"})])])
    f = SourceFilter(None, rbac, stats, True)
    ok = FakeStream(state={"jwt_payload": {"team": "egress", "sub": "a"}})
    assert f.on_request_headers(ok) == CONTINUE
    other = FakeStream(state={"jwt_payload": {"team": "web"}})
    assert f.on_request_headers(other) == STOP
    assert other.reply == (403, b"RBAC: access denied")
    none = FakeStream()
    assert f.on_request_headers(none) == STOP
    assert _counters(store)["http.test.rbac.denied"] == 2


def test_source_filter_shadow_counts_but_allows() -> None:
    store, stats = _stats()
    rules = SourceRules(
        [SourceRule("deny-all", False, client_cidrs=CidrSet(["0.0.0.0/0"]))],
        SourceRule("default", True),
        shadow=True,
    )
    s = FakeStream()
    assert SourceFilter(rules, None, stats, True).on_request_headers(s) == CONTINUE
    assert s.reply is None
    counters = _counters(store)
    assert counters["http.test.rbac.shadow_denied"] == 1
    assert counters["http.test.rbac.denied"] == 0


def _host(key: str, port: int, *ips: str) -> DnsHostInfo:
    host = DnsHostInfo(key, port)
    host.addresses = [(ip, 10 if ":" in ip else 2) for ip in ips]
    host.resolved = True
    return host


def test_destination_filter_keeps_only_allowed_addresses() -> None:
    _, stats = _stats()
    f = DestinationFilter(_rules(), stats, pre_dns=True)
    host = _host("both.test:80", 80, "127.0.0.1", "127.0.0.2")
    s = FakeStream()
    s.host = host
    assert f.on_upstream_host(s) == CONTINUE
    assert s.host is not host
    assert s.host.addresses == [("127.0.0.2", 2)]
    assert s.host.key == host.key
    pinned = s.host
    # The same address list again: the same pinned host (no work per request).
    s2 = FakeStream()
    s2.host = host
    f.on_upstream_host(s2)
    assert s2.host is pinned
    # A refresh that brings a new list is checked again; the pinned copy never changes.
    host.addresses = [("127.0.0.1", 2)]
    s3 = FakeStream()
    s3.host = host
    assert f.on_upstream_host(s3) == STOP
    assert s3.reply == (403, b"destination denied by rule 'deny-loopback' (127.0.0.1:80)")
    assert pinned.addresses == [("127.0.0.2", 2)]


def test_destination_filter_before_dns() -> None:
    _, stats = _stats()
    f = DestinationFilter(_rules(), stats, pre_dns=True)
    s = FakeStream(authority=Authority("blocked.test", 80, False))
    assert f.on_request_headers(s) == STOP
    assert s.reply == (403, b"destination denied by rule 'deny-name' (blocked.test:80)")
    numeric = FakeStream(authority=Authority("2130706433", 80, False))
    assert f.on_request_headers(numeric) == CONTINUE  # after DNS
    off = DestinationFilter(_rules(), stats, pre_dns=False)
    assert off.on_request_headers(FakeStream(authority=s.authority)) == CONTINUE


def test_destination_filter_shadow_mode_never_refuses() -> None:
    store, stats = _stats()
    r = _rules()
    shadow = DestinationRules(r.rules, r.default, shadow=True)
    f = DestinationFilter(shadow, stats, pre_dns=True)
    host = _host("one.test:80", 80, "127.0.0.1")
    s = FakeStream(authority=Authority("blocked.test", 80, False))
    assert f.on_request_headers(s) == CONTINUE  # counted once, after DNS
    s.host = host
    assert f.on_upstream_host(s) == CONTINUE
    assert s.reply is None and s.host is host
    counters = _counters(store)
    assert counters["http.test.rbac.shadow_denied"] == 1
    assert counters["http.test.rbac.denied"] == 0
    assert counters["http.test.rbac.policy.deny-loopback.denied"] == 1


def test_ipv4_mapped_is_only_its_ipv4_address() -> None:
    """A dual-stack socket connects ``::ffff:a.b.c.d`` to a.b.c.d: IPv6 ranges never match
    it (``::/0`` allowing it would open every IPv4 destination), IPv4 ranges do, and a range
    written in the mapped notation is the IPv4 range it denotes."""
    assert forms("::ffff:127.0.0.1") == ((4, 0x7F000001),)
    assert not CidrSet(["::/0"]).matches(forms("::ffff:127.0.0.1"))
    assert CidrSet(["127.0.0.0/8"]).matches(forms("::ffff:7f00:1"))
    mapped = CidrSet(["::ffff:127.0.0.0/104"])
    assert mapped.matches(forms("127.0.0.9")) and mapped.matches(forms("::ffff:127.0.0.9"))
    assert not mapped.matches(forms("128.0.0.1"))
    assert mapped.texts == ["127.0.0.0/8"]


@pytest.mark.parametrize("secure", [False, True])
def test_empty_connect_ports_is_no_port(secure: bool) -> None:
    """An explicit ``connectPorts: []`` denies every CONNECT (with secureDefaults too, where
    leaving it out means [443]); plain requests are not affected."""
    from dfproxy.config.schema.access import DestinationPolicy

    rules = comp.destination(
        DestinationPolicy.model_validate({"connectPorts": [], "secureDefaults": secure})
    )
    assert rules.decide("pub.test", 443, True, forms("192.0.2.1")).name == "connect-ports"
    assert rules.decide("pub.test", 443, False, forms("192.0.2.1")).allow
    default = comp.destination(DestinationPolicy.model_validate({"secureDefaults": secure}))
    assert default.decide("pub.test", 443, True, forms("192.0.2.1")).allow
    assert default.decide("pub.test", 22, True, forms("192.0.2.1")).allow is not secure
