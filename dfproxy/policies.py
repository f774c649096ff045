"""Policies: the option families that become request/response filters (JWT, transformations,
DLP, rate limits, access control, ...), validated at config load and built per route.

A policy has two halves. ``compile`` runs when the config loads: it reads the options a route
inherits (listener, virtual host, route; ``Levels``), applies Gloo's override rules, compiles
templates and regexes, and reports every problem with its field path, so a bad policy is a
config error and never a runtime surprise. ``build`` runs when a Runtime is made from the
config: it turns the compiled value into filters, with the runtime's loop, stats and shared
clients (``BuildContext``).

The request filter chain of a route is the policies in ``_MODULES`` order, then the dynamic
forward proxy filter (which the router adds itself). The order follows Gloo's filter stages:
authentication of the proxy user, early transformations, JWT (authN), external authorization
and RBAC (authZ), rate limits, regular transformations; DLP acts on the response.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dfproxy.cluster import DfpCluster
    from dfproxy.config.model import ListenerSpec
    from dfproxy.filters import HttpFilter
    from dfproxy.runtime import Runtime

# Where each Policy instance is, as "module" (its ``POLICY``) or "module:NAME", in
# request-chain order.
_MODULES: tuple[str, ...] = (
    "dfproxy.filters.proxy_auth",  # first: who the client is, before anything else runs
    "dfproxy.filters.transformation:EARLY",  # Gloo stagedTransformations.early
    "dfproxy.filters.jwt",  # Gloo jwtStaged.beforeExtAuth (and the deprecated vhost jwt)
    "dfproxy.filters.ext_authz",  # after JWT (authN), before RBAC and rate limits
    "dfproxy.filters.jwt:AFTER_EXT_AUTH",  # Gloo jwtStaged.afterExtAuth
    "dfproxy.access.policy",  # RBAC and source rules; destination rules after DNS
    "dfproxy.filters.ratelimit",  # local buckets and Redis-backed limits (may read JWT claims)
    "dfproxy.filters.transformation:REGULAR",  # stagedTransformations.regular, before DFP
    "dfproxy.filters.dlp",  # masks responses (response hooks run in reverse: it sees them first)
)


class Report(Protocol):
    """Where compile errors go (the config loader's error list)."""

    def add(self, where: str, path: str, message: str) -> None: ...


@dataclass(frozen=True)
class Levels:
    """The options a route inherits, each with the document and path it came from.

    ``gateway`` is the Gateway's ``spec.options`` (ListenerOptions), ``listener`` its
    ``spec.httpGateway.options`` (HttpListenerOptions); ``vhost`` and ``route`` come from the
    VirtualService. Any may be None. The embedded default route has no VirtualService
    (``vs_where`` empty, ``route_index`` -1).
    """

    gateway: Any
    listener: Any
    gateway_where: str
    vhost: Any
    route: Any
    vs_where: str
    route_index: int
    route_name: str
    # Other resources a policy may reference, by "Kind/namespace/name" (the config loader's
    # Document: ``.where`` and ``.resource``), e.g. RateLimitConfig.
    resources: dict[str, Any] = field(default_factory=dict)

    gateway_path = "spec.options"
    listener_path = "spec.httpGateway.options"
    vhost_path = "spec.virtualHost.options"

    @property
    def route_path(self) -> str:
        return f"spec.virtualHost.routes[{self.route_index}].options"


@dataclass
class BuildContext:
    """What building a route's filters may use: the runtime (loop, stats, ``shared``
    objects kept across reloads), the listener and its DFP cluster (for fetches that go
    through our own upstream code)."""

    runtime: Runtime
    listener: ListenerSpec
    cluster: DfpCluster | None
    route_name: str


class Policy(Protocol):
    """One option family. ``name`` keys its compiled value in ``RouteSpec.policies``."""

    name: str

    def compile(self, levels: Levels, report: Report) -> Any | None:
        """The compiled policy for a route, or None when the route has none."""
        ...

    def build(self, compiled: Any, ctx: BuildContext) -> Sequence[HttpFilter]:
        """The filters that enforce ``compiled`` on one route."""
        ...


_registered: tuple[Policy, ...] | None = None


def registered() -> tuple[Policy, ...]:
    """Every policy, in chain order (imported on first use)."""
    global _registered
    if _registered is None:
        found = []
        for entry in _MODULES:
            module, _, attr = entry.partition(":")
            found.append(getattr(importlib.import_module(module), attr or "POLICY"))
        _registered = tuple(found)
    return _registered


def compile_route(levels: Levels, report: Report) -> dict[str, Any]:
    """Compile every policy that applies to one route; errors go to ``report``."""
    out: dict[str, Any] = {}
    for policy in registered():
        compiled = policy.compile(levels, report)
        if compiled is not None:
            out[policy.name] = compiled
    return out


def build_route(policies: dict[str, Any], ctx: BuildContext) -> list[HttpFilter]:
    """The request filters of one route, in chain order (the DFP filter comes after)."""
    filters: list[HttpFilter] = []
    if not policies:
        return filters
    for policy in registered():
        compiled = policies.get(policy.name)
        if compiled is not None:
            filters.extend(policy.build(compiled, ctx))
    return filters
