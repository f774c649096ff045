"""The access-control policy family for dfproxy.policies: ``rbac``, ``sourcePolicy`` and
``destinationPolicy`` compiled per route, built into the access filters.

Override rule (Gloo's for options): the most specific level that sets a family wins, whole
(route over virtual host over listener); ``disable: true`` there turns the family off for
the route. ``rbac`` exists on virtual hosts and routes (as in Gloo); the dfproxy families
also on the listener (``httpGateway.options``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfproxy.access import compile as comp
from dfproxy.access.filter import AccessStats, DestinationFilter, SourceFilter
from dfproxy.access.rules import AccessPolicy, DestinationRules
from dfproxy.filters import HttpFilter
from dfproxy.policies import BuildContext, Levels, Report

NAME = "access"


def _pick(levels: Levels, attr: str, listener_level: bool = True) -> Any | None:
    """The most specific setting of ``attr``, or None (absent, or disabled there)."""
    for opts in (levels.route, levels.vhost, levels.listener if listener_level else None):
        value = getattr(opts, attr, None) if opts is not None else None
        if value is not None:
            return None if value.disable else value
    return None


class AccessControlPolicy:
    name = NAME

    def compile(self, levels: Levels, report: Report) -> AccessPolicy | None:
        src = _pick(levels, "source_policy")
        rb = _pick(levels, "rbac", listener_level=False)
        dst = _pick(levels, "destination_policy")
        if src is None and rb is None and dst is None:
            return None
        return AccessPolicy(
            source=comp.source(src) if src is not None else None,
            rbac=comp.rbac(rb) if rb is not None else None,
            destination=comp.destination(dst) if dst is not None else None,
        )

    def build(self, compiled: AccessPolicy, ctx: BuildContext) -> Sequence[HttpFilter]:
        route = _route_spec(compiled, ctx)
        stats = AccessStats(ctx.runtime.stats, f"http.{ctx.listener.name}.rbac.")
        filters: list[HttpFilter] = []
        destination: DestinationRules | None = compiled.destination
        forwards = route is None or route.action == "dfp"
        if destination is not None and not forwards:
            destination = None  # a direct response or redirect goes nowhere
        if compiled.source is not None or compiled.rbac is not None:
            filters.append(
                SourceFilter(compiled.source, compiled.rbac, stats, count_allowed=not destination)
            )
        if destination is not None:
            # The check before DNS sees the name and port the client sent; a route that
            # rewrites the host, or a TLS cluster that changes the default port, decides
            # only after DNS, on what is actually resolved.
            pre_dns = not (route is not None and (route.host_rewrite or route.host_rewrite_header))
            if ctx.cluster is not None and ctx.cluster.default_port != 80:
                pre_dns = False
            filters.append(DestinationFilter(destination, stats, pre_dns=pre_dns))
        return filters


def _route_spec(compiled: AccessPolicy, ctx: BuildContext) -> Any | None:
    """The RouteSpec this compiled policy belongs to (found by identity)."""
    for vh in ctx.listener.virtual_hosts:
        for r in vh.routes:
            if r.policies.get(NAME) is compiled:
                return r
    return None


POLICY = AccessControlPolicy()
