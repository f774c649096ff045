"""Gloo YAML for the benchmark scripts: Gateways and a catch-all VirtualService as text.

The benches measure one option at a time, so each config is a DFP Gateway plus the option
under test (``listener``: YAML under ``httpGateway.options``; ``vhost``: the virtual host's
``options`` mapping). Kept apart from tests/ so a bench never imports the test suite.
"""

from __future__ import annotations

import textwrap

# Every request through the DFP.
DFP_ROUTE = "- matchers: [{prefix: /}]\n  routeAction: {dynamicForwardProxy: {}}"

_GATEWAY = """\
apiVersion: gateway.solo.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: gloo-system}}
spec:
  bindAddress: 127.0.0.1
  bindPort: {port}
  httpGateway:{selection}
    options:
      dynamicForwardProxy: {{}}
{listener}"""

_VIRTUAL_SERVICE = """\
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: gloo-system}}
spec:
  virtualHost:
    domains: ['*']
{vhost}    routes:
{routes}
"""


def _indented(text: str, spaces: int) -> str:
    text = textwrap.dedent(text).strip("\n")
    return textwrap.indent(text, " " * spaces) + "\n" if text else ""


def gateway(
    listener: str = "",
    *,
    name: str = "gateway-proxy",
    port: int = 8080,
    virtual_services: tuple[str, ...] = (),
) -> str:
    """A DFP Gateway on 127.0.0.1:``port``; ``virtual_services`` names the ones it serves
    (all when empty)."""
    refs = ", ".join(f"{{name: {vs}, namespace: gloo-system}}" for vs in virtual_services)
    return _GATEWAY.format(
        name=name,
        port=port,
        selection=f"\n    virtualServices: [{refs}]" if refs else "",
        listener=_indented(listener, 6),
    )


def catch_all(name: str = "all", vhost: str = "", routes: str = DFP_ROUTE) -> str:
    """A VirtualService for every domain with virtual-host ``options`` (YAML, may be empty)."""
    options = "options:\n" + _indented(vhost, 2) if vhost.strip() else ""
    return _VIRTUAL_SERVICE.format(
        name=name, vhost=_indented(options, 4), routes=_indented(routes, 4).rstrip("\n")
    )


def config(*documents: str) -> str:
    """The documents as one multi-document YAML stream."""
    return "---\n".join(documents)
