"""Command-line access options: ``--allow-destination`` and ``--allow-connect-port``.

The embedded config (no ``-c``) gets the secure destination rules (compile.SECURE_RULES and
CONNECT to 443 only); these flags open it up. With ``-c`` they add the same allow rules in
front of every destination policy the config has (a config without one forwards anywhere,
as Envoy does, and needs no flag).
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import replace

from dfproxy.access import compile as comp
from dfproxy.access.addresses import CidrSet
from dfproxy.access.policy import NAME
from dfproxy.access.rules import AccessPolicy, DestinationRule, DomainSet, PortSet
from dfproxy.config.model import ProxyConfig
from dfproxy.http.authority import AuthorityError, numeric_ipv4, split_host_port


def allow_destination(text: str) -> DestinationRule:
    """One ``--allow-destination`` value as an allow rule: a CIDR or address
    (``127.0.0.0/8``, ``::1``, ``[::1]:8080``, ``127.0.0.1:9000``) or a name with an optional
    port (``api.internal``, ``*.corp.example:8443``, ``*:8443``). Raises
    argparse.ArgumentTypeError."""
    value = text.strip()
    name = f"allow-destination:{value}"
    try:
        if "/" in value:
            return DestinationRule(name, allow=True, cidrs=CidrSet([value]))
        try:
            ipaddress.ip_address(value)  # a bare IPv6 address has colons but no port
            return DestinationRule(name, allow=True, cidrs=CidrSet([value]))
        except ValueError:
            pass
        host, port = split_host_port(value)
        ports = PortSet([port]) if port is not None else None
        ip = numeric_ipv4(host.lower())
        try:
            ipaddress.ip_address(host)
            ip = host
        except ValueError:
            pass
        if ip is not None:
            return DestinationRule(name, allow=True, cidrs=CidrSet([ip]), ports=ports)
        return DestinationRule(name, allow=True, domains=DomainSet([host]), ports=ports)
    except (ValueError, AuthorityError) as exc:
        raise argparse.ArgumentTypeError(
            f"--allow-destination {text!r}: expected CIDR, address[:port] or host[:port] ({exc})"
        ) from None


def checked_destination(text: str) -> str:
    """argparse type: the text, once it parses (workers get it again as text)."""
    allow_destination(text)
    return text


def connect_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--allow-connect-port {text!r}: a port 1-65535")
    return int(text)


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--allow-destination",
        action="append",
        default=[],
        type=checked_destination,
        metavar="CIDR|HOST[:PORT]",
        help="allow a destination the access rules deny (the embedded default denies "
        "loopback, private and link-local addresses); repeatable",
    )
    run.add_argument(
        "--allow-connect-port",
        action="append",
        default=[],
        type=connect_port,
        metavar="PORT",
        help="allow CONNECT to this port too (the embedded default allows 443); repeatable",
    )


def apply(
    config: ProxyConfig,
    embedded: bool,
    allow_texts: list[str],
    connect_ports: list[int],
) -> None:
    """Give the embedded config its secure default, then the flags' rules to every
    destination policy."""
    allow = [allow_destination(t) for t in allow_texts]
    ports = tuple(sorted({*comp.DEFAULT_CONNECT_PORTS, *connect_ports}))
    for listener in config.listeners:
        for vh in listener.virtual_hosts:
            for route in vh.routes:
                policy = route.policies.get(NAME)
                if embedded and policy is None:
                    policy = comp.embedded_default(ports)
                if policy is None or policy.destination is None:
                    continue
                rules = policy.destination.rules
                if connect_ports:
                    rules = [
                        comp.connect_ports_rule(tuple(sorted({*r.ports.ports, *connect_ports})))
                        # Only the built-in rule: a config's rule may carry its name.
                        if r.builtin and r.name == comp.CONNECT_PORTS_RULE and r.ports is not None
                        else r
                        for r in rules
                    ]
                dest = replace(policy.destination, rules=[*allow, *rules])
                route.policies[NAME] = AccessPolicy(policy.source, policy.rbac, dest)
