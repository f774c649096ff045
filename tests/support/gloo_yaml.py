"""Gloo Gateway YAML for the integration tests: one Gateway and VirtualServices as text.

    GATEWAY = gateway(connect=True)
    text = config(GATEWAY, virtual_service("rl", ["rl.test"], ROUTES, "ratelimit: {...}"))

``routes`` and ``options`` are YAML written as the test reads best (indented or not, with a
leading newline or not): they are dedented and put at their place under ``virtualHost``, so a
test file keeps its own routes readable and shares only the envelope.
"""

from __future__ import annotations

import json
import textwrap

__all__ = ["DFP_ROUTE", "DFP_ROUTES", "config", "gateway", "virtual_service"]

# Every request through the DFP.
DFP_ROUTE = """\
- matchers: [{prefix: /}]
  routeAction: {dynamicForwardProxy: {}}
"""
# The same, with CONNECT terminated (tunnelled) by the proxy.
DFP_ROUTES = (
    """\
- matchers: [{connectMatcher: {}}]
  routeAction: {dynamicForwardProxy: {}}
  options: {upgrades: [{connectTerminate: {enabled: true}}]}
"""
    + DFP_ROUTE
)


def _block(yaml_text: str, indent: int) -> str:
    """``yaml_text`` dedented, stripped of blank edges and indented by ``indent`` spaces."""
    return textwrap.indent(textwrap.dedent(yaml_text).strip("\n"), " " * indent) + "\n"


def gateway(
    options: str = "",
    *,
    connect: bool = False,
    name: str = "gateway-proxy",
    port: int = 8080,
) -> str:
    """A Gateway on 127.0.0.1:``port`` with ``dynamicForwardProxy: {}``, CONNECT upgrades
    when ``connect``, and ``options`` (YAML) added under ``httpGateway.options``."""
    text = (
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\n"
        f"metadata: {{name: {name}, namespace: gloo-system}}\n"
        f"spec:\n  bindAddress: 127.0.0.1\n  bindPort: {port}\n"
        "  httpGateway:\n    options:\n      dynamicForwardProxy: {}\n"
    )
    if connect:
        text += "      httpConnectionManagerSettings:\n"
        text += "        upgrades: [{connect: {enabled: true}}]\n"
    if options:
        text += _block(options, 6)
    return text


def virtual_service(
    name: str, domains: str | list[str], routes: str = DFP_ROUTES, options: str = ""
) -> str:
    """A VirtualService ``name`` for ``domains`` (one or a list) with ``routes`` (a YAML list)
    and virtual-host ``options`` (YAML mapping, none when empty)."""
    domain_list = [domains] if isinstance(domains, str) else domains
    text = (
        "apiVersion: gateway.solo.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: gloo-system}}\n"
        f"spec:\n  virtualHost:\n    domains: {json.dumps(domain_list)}\n"
        "    routes:\n" + _block(routes, 4)
    )
    if options:
        text += "    options:\n" + _block(options, 6)
    return text


def config(*documents: str) -> str:
    """The documents as one multi-document YAML stream."""
    return "---\n".join(documents)
