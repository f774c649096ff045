"""Access-control configuration: the schema (dfproxy/config/schema/access.py) refuses bad
ranges, ports, patterns and Gloo RBAC fields with their field paths; the override rule
(route over virtual host over listener); and the command-line flags."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dfproxy.access.addresses import forms
from dfproxy.access.filter import DestinationFilter
from dfproxy.access.policy import NAME
from dfproxy.access.rules import AccessPolicy
from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.runtime import Runtime
from dfproxy.stats import StatsStore
from tests.support import gloo_yaml
from tests.support.proxy import REPO_ROOT


def config(tmp_path: Path, vhost_options: str, route_options: str = "", listener: str = "") -> Path:
    route = gloo_yaml.DFP_ROUTE
    if route_options:
        route += "  options:\n"
        route += textwrap.indent(textwrap.dedent(route_options).strip("\n"), "    ") + "\n"
    path = tmp_path / "c.yaml"
    path.write_text(
        gloo_yaml.config(
            gloo_yaml.gateway(listener, name="gw"),
            gloo_yaml.virtual_service("vs", ["*"], route, vhost_options),
        )
    )
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_paths([str(path)])
    return info.value.errors


def policy(path: Path) -> AccessPolicy:
    cfg = load_paths([str(path)])
    compiled = cfg.listeners[0].virtual_hosts[0].routes[0].policies.get(NAME)
    assert isinstance(compiled, AccessPolicy)
    return compiled


VH = "spec.virtualHost.options"


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, cidrs: [127.0.0.1/8]}]}",
            f"{VH}.destinationPolicy.rules[0].cidrs[0]",
            "invalid CIDR range '127.0.0.1/8'",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, cidrs: [nope]}]}",
            f"{VH}.destinationPolicy.rules[0].cidrs[0]",
            "invalid CIDR range 'nope'",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, ports: [80, 70000]}]}",
            f"{VH}.destinationPolicy.rules[0].ports[1]",
            "ports are 1-65535",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, ports: ['9-1']}]}",
            f"{VH}.destinationPolicy.rules[0].ports[0]",
            "invalid port '9-1'",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, domains: ['a.*.com']}]}",
            f"{VH}.destinationPolicy.rules[0].domains[0]",
            "invalid domain 'a.*.com'",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: BLOCK}]}",
            f"{VH}.destinationPolicy.rules[0].action",
            "'ALLOW' or 'DENY'",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY, ports: [1], notPorts: [2]}]}",
            f"{VH}.destinationPolicy.rules[0]",
            "set ports or notPorts, not both",
        ),
        (
            "destinationPolicy: {rules: [{name: a, action: DENY}, {name: a, action: DENY}]}",
            f"{VH}.destinationPolicy",
            "duplicate rule name 'a'",
        ),
        (
            "destinationPolicy: {connectPorts: [0]}",
            f"{VH}.destinationPolicy.connectPorts[0]",
            "greater than or equal to 1",
        ),
        (
            "destinationPolicy: {rules: [{name: 'has space', action: DENY}]}",
            f"{VH}.destinationPolicy.rules[0].name",
            "should match pattern",
        ),
        (
            "destinationPolicy: {rulez: []}",
            f"{VH}.destinationPolicy.rulez",
            "did you mean 'rules'?",
        ),
        (
            "sourcePolicy: {rules: [{name: a, action: DENY, clientCidrs: ['10.0.0.0/33']}]}",
            f"{VH}.sourcePolicy.rules[0].clientCidrs[0]",
            "invalid CIDR range '10.0.0.0/33'",
        ),
        (
            "rbac: {policies: {p: {principals: [{jwtPrincipal: {claims: {a: b}, provider: x}}]}}}",
            f"{VH}.rbac.policies.p.principals[0].jwtPrincipal",
            "provider is not supported",
        ),
        (
            "rbac: {policies: {p: {principals: [{jwtPrincipal: {claims: {a: maybe}, "
            "matcher: BOOLEAN}}]}}}",
            f"{VH}.rbac.policies.p.principals[0].jwtPrincipal",
            "matcher BOOLEAN needs 'true' or 'false' for claim 'a'",
        ),
        (
            "rbac: {policies: {p: {principals: [{jwtPrincipal: {matcher: REGEX}}]}}}",
            f"{VH}.rbac.policies.p.principals[0].jwtPrincipal.matcher",
            "'EXACT_STRING', 'BOOLEAN' or 'LIST_CONTAINS'",
        ),
        (
            "rbac: {policies: {p: {permissions: {pathPrefx: /a}}}}",
            f"{VH}.rbac.policies.p.permissions.pathPrefx",
            "unknown field 'pathPrefx'",
        ),
    ],
)
def test_bad_values_name_their_field(tmp_path: Path, options: str, path: str, message: str) -> None:
    errs = errors(config(tmp_path, options))
    assert any(f": {path}: " in e and message in e for e in errs), errs


def test_rbac_is_no_longer_unsupported_but_not_on_the_listener(tmp_path: Path) -> None:
    # Gloo has rbac on virtual hosts and routes only.
    errs = errors(config(tmp_path, "", listener="rbac: {policies: {}}"))
    assert any("spec.httpGateway.options.rbac: unknown field 'rbac'" in e for e in errs), errs
    assert policy(config(tmp_path, "rbac: {policies: {p: {}}}")).rbac is not None


def test_route_overrides_vhost_overrides_listener(tmp_path: Path) -> None:
    listener = (
        "destinationPolicy: {rules: [{name: from-listener, action: DENY, cidrs: [10.0.0.0/8]}]}"
    )
    vhost = "destinationPolicy: {rules: [{name: from-vhost, action: DENY, cidrs: [10.0.0.0/8]}]}"
    route = "destinationPolicy: {rules: [{name: from-route, action: DENY, cidrs: [10.0.0.0/8]}]}"

    def decided(p: AccessPolicy) -> str:
        assert p.destination is not None
        return p.destination.decide("h", 80, False, forms("10.1.1.1")).name

    assert decided(policy(config(tmp_path, "", listener=listener))) == "from-listener"
    assert decided(policy(config(tmp_path, vhost, listener=listener))) == "from-vhost"
    assert decided(policy(config(tmp_path, vhost, route, listener=listener))) == "from-route"
    disabled = config(tmp_path, vhost, "destinationPolicy: {disable: true}", listener=listener)
    cfg = load_paths([str(disabled)])
    assert NAME not in cfg.listeners[0].virtual_hosts[0].routes[0].policies


def test_secure_defaults_in_a_user_config(tmp_path: Path) -> None:
    p = policy(
        config(
            tmp_path,
            """
            destinationPolicy:
              secureDefaults: true
              connectPorts: [443, 8443]
              rules: [{name: allow-lab, action: ALLOW, cidrs: [10.9.0.0/16]}]
            """,
        )
    )
    d = p.destination
    assert d is not None
    assert d.decide("h", 80, False, forms("10.9.1.1")).name == "allow-lab"
    assert d.decide("h", 80, False, forms("10.8.1.1")).name == "deny-private"
    assert d.decide("h", 80, False, forms("169.254.169.254")).name == "deny-metadata"
    assert d.decide("h", 8443, True, forms("192.0.2.1")).allow
    assert d.decide("h", 22, True, forms("192.0.2.1")).name == "connect-ports"


def test_a_user_config_without_access_options_has_no_policy(tmp_path: Path) -> None:
    cfg = load_paths([str(config(tmp_path, ""))])
    assert NAME not in cfg.listeners[0].virtual_hosts[0].routes[0].policies


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--allow-destination", "10.0.0.1/8"), ("--allow-connect-port", "0")],
)
def test_bad_flags_are_refused(flag: str, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dfproxy", "run", flag, value],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert flag in proc.stderr.decode()


def test_the_check_before_dns_is_off_where_the_route_rewrites_the_host(tmp_path: Path) -> None:
    """The name the client sent is not the one resolved: only the check after DNS counts."""
    path = config(
        tmp_path, "destinationPolicy: {rules: [{name: a, action: DENY, domains: [x.test]}]}"
    )
    text = path.read_text().replace(
        "    - matchers: [{prefix: /}]\n      routeAction: {dynamicForwardProxy: {}}\n",
        "    - matchers: [{prefix: /rw}]\n"
        "      routeAction: {dynamicForwardProxy: {hostRewrite: y.test}}\n"
        "    - matchers: [{prefix: /}]\n      routeAction: {dynamicForwardProxy: {}}\n",
    )
    path.write_text(text)
    loop = asyncio.new_event_loop()
    try:
        runtime = Runtime(load_paths([str(path)]), loop, StatsStore(), None)
        _, listener = runtime.listeners[0]
        routes = listener.routes.vhosts[0].routes
        found = {
            r.name: f.pre_dns
            for r in routes
            for f in r.chain.filters
            if isinstance(f, DestinationFilter)
        }
        assert found == {"route-0": False, "route-1": True}
        runtime.close()
    finally:
        loop.close()
