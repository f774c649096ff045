"""Access rules, compiled at config load, and the decisions they make. Pure: no I/O.

Destination and source rules are ordered lists, first match wins, as a firewall reads them
(the answer names the rule that decided, so a 403 says why); a request no rule matches gets
the policy's default action. A rule matches when every condition it sets matches; a
condition left out matches anything.

Destination rules are checked after DNS on each address the proxy would connect to, as
Envoy's ``resolved_address_filter`` does (reference §3.1): an address whose first matching
rule denies is dropped, and only when none is left is the request refused. Before DNS the
same list can already refuse a name when no address could change the answer
(``decide_name``): a denied name is then never resolved.

Gloo RBAC (``options.rbac``) is an allow list: a request passes when some policy matches
(any of its principals, and its permissions), else 403 "RBAC: access denied" (Envoy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dfproxy.access.addresses import CidrSet, Form

ALLOW, DENY = "ALLOW", "DENY"
UNDECIDED = None  # decide_name: the answer depends on the addresses


class DomainSet:
    """Exact names and ``*.suffix`` wildcards (``*.example.com`` matches ``a.example.com``
    and ``a.b.example.com``, not ``example.com``: Envoy's suffix wildcard); ``*`` is any."""

    __slots__ = ("exact", "suffixes", "any")

    def __init__(self, patterns: Iterable[str]) -> None:
        """Raises ValueError for a pattern with a wildcard anywhere but a leading ``*.``."""
        exact: set[str] = set()
        suffixes: list[str] = []
        self.any = False
        for raw in patterns:
            p = raw.strip().lower()
            if p == "*":
                self.any = True
                continue
            p = p[:-1] if p.endswith(".") and len(p) > 1 else p  # an absolute name
            if p.startswith("*.") and "*" not in p[2:] and len(p) > 2 and p[2] != ".":
                suffixes.append(p[1:])
            elif "*" in p or not p:
                raise ValueError(
                    f"invalid domain {raw!r}: an exact name, or '*.' followed by a suffix"
                )
            else:
                exact.add(p)
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)

    def matches(self, name: str) -> bool:
        """``name`` lower-case; one trailing dot (an absolute name) is ignored."""
        if self.any:
            return True
        if name.endswith("."):
            name = name[:-1]
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


class PortSet:
    """Ports and ``low-high`` ranges; ``invert`` matches every port outside them."""

    __slots__ = ("ports", "ranges", "invert")

    def __init__(self, items: Iterable[int | str], invert: bool = False) -> None:
        """Raises ValueError for a port outside 1-65535 or a range written badly."""
        ports: set[int] = set()
        ranges: list[tuple[int, int]] = []
        for item in items:
            if isinstance(item, int):
                low = high = item
            else:
                text = item.strip()
                low_s, sep, high_s = text.partition("-")
                if not (low_s.strip().isdigit() and (not sep or high_s.strip().isdigit())):
                    raise ValueError(f"invalid port {item!r}: a number or a range like 8000-8100")
                low = int(low_s)
                high = int(high_s) if sep else low
            if not (1 <= low <= high <= 65535):
                raise ValueError(f"invalid port {item!r}: ports are 1-65535, low before high")
            if low == high:
                ports.add(low)
            else:
                ranges.append((low, high))
        self.ports = frozenset(ports)
        self.ranges = tuple(ranges)
        self.invert = invert

    def matches(self, port: int) -> bool:
        hit = port in self.ports or any(lo <= port <= hi for lo, hi in self.ranges)
        return hit is not self.invert


@dataclass(eq=False)
class DestinationRule:
    name: str
    allow: bool
    domains: DomainSet | None = None
    ports: PortSet | None = None
    cidrs: CidrSet | None = None
    connect: bool | None = None  # True: CONNECT tunnels only; False: plain requests only
    builtin: bool = False  # made by compile.py (secure defaults), not written in a config

    def matches_request(self, name: str, port: int, connect: bool) -> bool:
        """The conditions that do not look at the address."""
        if self.connect is not None and self.connect is not connect:
            return False
        if self.ports is not None and not self.ports.matches(port):
            return False
        return self.domains is None or self.domains.matches(name)


@dataclass(eq=False)
class DestinationRules:
    """An ordered destination rule list and its default (``default`` is a rule too, so every
    decision names one)."""

    rules: list[DestinationRule]
    default: DestinationRule
    shadow: bool = False  # evaluate and count, never refuse (Envoy shadow_rules)

    def decide_name(self, name: str, port: int, connect: bool) -> DestinationRule | None:
        """The rule that decides for every address of ``name``, or UNDECIDED when the
        answer depends on the addresses. An address rule that denies is passed over: it can
        only deny what a later rule would deny too (the later rule is then named)."""
        address_denies = False
        for rule in self.rules:
            if not rule.matches_request(name, port, connect):
                continue
            if rule.cidrs is not None:
                if rule.allow:
                    return UNDECIDED  # some address may be allowed
                address_denies = True
            elif rule.allow and address_denies:
                return UNDECIDED  # some address may be denied
            else:
                return rule
        default = self.default
        return UNDECIDED if default.allow and address_denies else default

    def decide(
        self, name: str, port: int, connect: bool, address: tuple[Form, ...]
    ) -> DestinationRule:
        """The first rule matching a request to ``name:port`` at one address."""
        for rule in self.rules:
            if rule.matches_request(name, port, connect) and (
                rule.cidrs is None or rule.cidrs.matches(address)
            ):
                return rule
        return self.default


@dataclass(eq=False)
class SourceRule:
    name: str
    allow: bool
    client_cidrs: CidrSet | None = None
    proxy_users: frozenset[str] | None = None  # "*": any authenticated user
    any_user: bool = False

    def matches(self, peer: tuple[Form, ...], user: str | None) -> bool:
        if self.client_cidrs is not None and not self.client_cidrs.matches(peer):
            return False
        if self.proxy_users is not None:
            if user is None:
                return False
            if not self.any_user and user not in self.proxy_users:
                return False
        return True


@dataclass(eq=False)
class SourceRules:
    rules: list[SourceRule]
    default: SourceRule
    shadow: bool = False

    def decide(self, peer: tuple[Form, ...], user: str | None) -> SourceRule:
        for rule in self.rules:
            if rule.matches(peer, user):
                return rule
        return self.default


# -- Gloo RBAC ------------------------------------------------------------------------------

EXACT_STRING, BOOLEAN, LIST_CONTAINS = "EXACT_STRING", "BOOLEAN", "LIST_CONTAINS"
_MISSING = object()


def claim_value(payload: Mapping[str, object], claim: str, delimiter: str) -> object:
    """The claim ``claim`` of a JWT payload; with a delimiter, ``a.b`` is payload["a"]["b"]
    (Gloo nestedClaimDelimiter). _MISSING when absent."""
    if claim in payload or not delimiter:
        return payload.get(claim, _MISSING)
    value: object = payload
    for part in claim.split(delimiter):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def claim_matches(value: object, expected: str, matcher: str) -> bool:
    """Gloo JWTPrincipal.ClaimMatcher: EXACT_STRING compares a string claim; BOOLEAN a
    true/false claim with "true"/"false"; LIST_CONTAINS wants a list holding the string."""
    if matcher == BOOLEAN:
        return isinstance(value, bool) and value is (expected == "true")
    if matcher == LIST_CONTAINS:
        return isinstance(value, list) and expected in value
    return isinstance(value, str) and value == expected


@dataclass(eq=False)
class JwtPrincipal:
    claims: dict[str, str]
    matcher: str = EXACT_STRING

    def matches(self, payload: Mapping[str, object] | None, delimiter: str) -> bool:
        if payload is None:
            return False
        return all(
            claim_matches(claim_value(payload, claim, delimiter), expected, self.matcher)
            for claim, expected in self.claims.items()
        )


@dataclass(eq=False)
class RbacPolicy:
    name: str
    principals: list[JwtPrincipal]  # empty: any requester
    path_prefix: str = ""
    methods: frozenset[bytes] = field(default_factory=frozenset)
    delimiter: str = ""

    def matches(self, payload: Mapping[str, object] | None, path: str, method: bytes) -> bool:
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.methods and method not in self.methods:
            return False
        if not self.principals:
            return True
        return any(p.matches(payload, self.delimiter) for p in self.principals)


@dataclass(eq=False)
class RbacPolicies:
    """Gloo ExtensionSettings.policies: allowed when any policy matches."""

    policies: list[RbacPolicy]

    def allowed(self, payload: Mapping[str, object] | None, path: str, method: bytes) -> bool:
        return any(p.matches(payload, path, method) for p in self.policies)


@dataclass(eq=False)
class AccessPolicy:
    """What one route enforces (the compiled value the policy registry keeps)."""

    source: SourceRules | None = None
    rbac: RbacPolicies | None = None
    destination: DestinationRules | None = None
