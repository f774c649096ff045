"""From the schema models (dfproxy.config.schema.access) to the compiled rules (rules.py).

Runs at config load; every range and pattern is parsed here once, never per request.
The embedded default's secure rules are defined here too (``SECURE_RULES``), so a user
config asks for the same protection with ``destinationPolicy.secureDefaults``.
"""

from __future__ import annotations

from dfproxy.access.addresses import CidrSet
from dfproxy.access.rules import (
    ALLOW,
    AccessPolicy,
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
from dfproxy.config.schema import access as schema

# The embedded default's address rules (docs/access-control.md), in order. Link-local
# (where cloud metadata services live: AWS/GCP/Azure 169.254.169.254, AWS IPv6
# fd00:ec2::254) first, so a metadata address is named as such. "::" and 0.0.0.0/8 reach
# the local host on Linux, so they count as loopback/private.
SECURE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deny-metadata", ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")),
    ("deny-loopback", ("127.0.0.0/8", "::1/128", "::/128")),
    (
        "deny-private",
        (
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "0.0.0.0/8",
            "fc00::/7",
        ),
    ),
)
CONNECT_PORTS_RULE = "connect-ports"
DEFAULT_CONNECT_PORTS = (443,)


def connect_ports_rule(ports: tuple[int, ...]) -> DestinationRule:
    """CONNECT to any port but ``ports`` is denied (tunnels are for TLS, RFC 9110 §9.3.6
    warns that CONNECT to arbitrary ports makes the proxy a relay for any protocol)."""
    return DestinationRule(
        CONNECT_PORTS_RULE,
        allow=False,
        ports=PortSet(ports, invert=True),
        connect=True,
        builtin=True,
    )


def secure_rules(connect_ports: tuple[int, ...] = DEFAULT_CONNECT_PORTS) -> list[DestinationRule]:
    rules = [
        DestinationRule(name, allow=False, cidrs=CidrSet(c), builtin=True)
        for name, c in SECURE_RULES
    ]
    rules.append(connect_ports_rule(connect_ports))
    return rules


def destination(p: schema.DestinationPolicy) -> DestinationRules:
    rules = [
        DestinationRule(
            r.name,
            allow=r.action == ALLOW,
            domains=DomainSet(r.domains) if r.domains is not None else None,
            ports=(
                PortSet(r.ports)
                if r.ports is not None
                else PortSet(r.not_ports, invert=True)
                if r.not_ports is not None
                else None
            ),
            cidrs=CidrSet(r.cidrs) if r.cidrs is not None else None,
            connect=r.connect,
        )
        for r in p.rules
    ]
    # connectPorts set (even to []) lists every port CONNECT may reach; left out, it is 443
    # with secureDefaults and any port without.
    ports = None if p.connect_ports is None else tuple(p.connect_ports)
    if p.secure_defaults:
        rules += secure_rules(DEFAULT_CONNECT_PORTS if ports is None else ports)
    elif ports is not None:
        rules.append(connect_ports_rule(ports))
    default = DestinationRule("default", allow=p.default_action == ALLOW)
    return DestinationRules(rules, default, shadow=p.shadow)


def source(p: schema.SourcePolicy) -> SourceRules:
    rules = []
    for r in p.rules:
        users = frozenset(r.proxy_users) if r.proxy_users is not None else None
        rules.append(
            SourceRule(
                r.name,
                allow=r.action == ALLOW,
                client_cidrs=CidrSet(r.client_cidrs) if r.client_cidrs is not None else None,
                proxy_users=users,
                any_user=users is not None and "*" in users,
            )
        )
    return SourceRules(rules, SourceRule("default", p.default_action == ALLOW), shadow=p.shadow)


def rbac(settings: schema.RbacExtensionSettings) -> RbacPolicies:
    policies = []
    for name, p in sorted(settings.policies.items()):
        perms = p.permissions
        policies.append(
            RbacPolicy(
                name,
                [
                    JwtPrincipal(dict(pr.jwt_principal.claims), pr.jwt_principal.matcher)
                    for pr in p.principals
                ],
                path_prefix=perms.path_prefix if perms else "",
                methods=frozenset(m.upper().encode() for m in perms.methods)
                if perms
                else frozenset(),
                delimiter=p.nested_claim_delimiter,
            )
        )
    return RbacPolicies(policies)


def embedded_default(connect_ports: tuple[int, ...] = DEFAULT_CONNECT_PORTS) -> AccessPolicy:
    """The embedded config's policy: the secure rules, then allow."""
    return AccessPolicy(
        destination=DestinationRules(
            secure_rules(connect_ports), DestinationRule("default", allow=True)
        )
    )
