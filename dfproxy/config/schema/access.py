"""Schema of access control: Gloo ``options.rbac`` and dfproxy's ``destinationPolicy`` and
``sourcePolicy`` (docs/access-control.md).

``rbac`` is Gloo Enterprise's ExtensionSettings (``rbac.options.gloo.solo.io``): named
policies of JWT principals and permissions. Gloo has no rules on where a forward proxy may
go or on the client address, so those are dfproxy extensions in the same style: ordered,
named rules, first match wins. Each value is checked here, so a bad range or port is an
error with its field path at load time.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from dfproxy.config.schema_base import Model

Action = Literal["ALLOW", "DENY"]


def _cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR range {text!r}: {exc}") from None
    return text


def _domain(text: str) -> str:
    from dfproxy.access.rules import DomainSet

    DomainSet([text])  # raises ValueError with the reason
    return text


def _port(value: int | str) -> int | str:
    from dfproxy.access.rules import PortSet

    PortSet([value])
    return value


def _claim(value: object) -> object:
    # YAML reads `admin: true` as a boolean; the claim map holds strings (Gloo's proto).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


Cidr = Annotated[str, AfterValidator(_cidr)]
ClaimValue = Annotated[str, BeforeValidator(_claim)]
Domain = Annotated[str, AfterValidator(_domain)]
Port = Annotated[int | str, AfterValidator(_port)]
RuleName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _unique_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate rule name {name!r}")
        seen.add(name)


class DestinationRule(Model):
    """Matches when every condition given matches (absent: any)."""

    name: RuleName
    action: Action
    domains: list[Domain] | None = None  # exact, or *.suffix; "*" any
    ports: list[Port] | None = None  # 443, or "8000-8100"
    not_ports: list[Port] | None = None  # every port but these
    cidrs: list[Cidr] | None = None  # on the resolved address (and the IPv4 it embeds)
    connect: bool | None = None  # true: CONNECT tunnels only; false: plain requests only

    @model_validator(mode="after")
    def _ports_or_not(self) -> DestinationRule:
        if self.ports is not None and self.not_ports is not None:
            raise ValueError("set ports or notPorts, not both")
        return self


class DestinationPolicy(Model):
    """Where requests may go. ``secureDefaults`` appends the embedded default's rules
    (deny-metadata, deny-loopback, deny-private, connect-ports) after ``rules``."""

    disable: bool = False
    rules: list[DestinationRule] = Field(default_factory=list)
    default_action: Action = "ALLOW"
    secure_defaults: bool = False
    # CONNECT only to these ports (rule 'connect-ports'); with secureDefaults, [443].
    connect_ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = None
    shadow: bool = False  # evaluate and count, never refuse

    @model_validator(mode="after")
    def _names(self) -> DestinationPolicy:
        _unique_names([r.name for r in self.rules])
        return self


class SourceRule(Model):
    name: RuleName
    action: Action
    client_cidrs: list[Cidr] | None = None  # the downstream peer (after PROXY protocol)
    proxy_users: list[str] | None = None  # authenticated proxy user; "*" any user


class SourcePolicy(Model):
    """Who may use the route, by client address and proxy user."""

    disable: bool = False
    rules: list[SourceRule] = Field(default_factory=list)
    default_action: Action = "ALLOW"
    shadow: bool = False

    @model_validator(mode="after")
    def _names(self) -> SourcePolicy:
        _unique_names([r.name for r in self.rules])
        return self


# -- Gloo RBAC (rbac.options.gloo.solo.io) ----------------------------------------------------


class JwtPrincipal(Model):
    claims: dict[str, ClaimValue] = Field(default_factory=dict)
    provider: str = ""
    matcher: Literal["EXACT_STRING", "BOOLEAN", "LIST_CONTAINS"] = "EXACT_STRING"

    @model_validator(mode="after")
    def _check(self) -> JwtPrincipal:
        if self.provider:
            # Ignoring it would allow more than the config says.
            raise ValueError(
                "provider is not supported: dfproxy's JWT filter keeps one verified payload; "
                "leave provider empty and match the 'iss' claim instead"
            )
        if self.matcher == "BOOLEAN":
            bad = [k for k, v in self.claims.items() if v not in ("true", "false")]
            if bad:
                raise ValueError(f"matcher BOOLEAN needs 'true' or 'false' for claim {bad[0]!r}")
        return self


class Principal(Model):
    jwt_principal: JwtPrincipal


class Permissions(Model):
    path_prefix: str = ""
    methods: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class RbacPolicy(Model):
    principals: list[Principal] = Field(default_factory=list)
    permissions: Permissions | None = None
    nested_claim_delimiter: str = ""


class RbacExtensionSettings(Model):
    """Gloo ExtensionSettings: allowed when any named policy matches; on a route, it
    replaces the virtual host's settings."""

    disable: bool = False
    policies: dict[str, RbacPolicy] = Field(default_factory=dict)
