"""DLP configuration (dfproxy.config.schema.dlp and the compile half of dfproxy.filters.dlp):
where ``dlp`` may go, the listener-rules / route-override semantics, and every refusal with
its field path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.filters.dlp import CompiledDlp


def gateway(listener_dlp: str = "") -> str:
    opts = "      dynamicForwardProxy: {}\n"
    if listener_dlp:
        opts += "      dlp:\n" + textwrap.indent(textwrap.dedent(listener_dlp).strip(), "        ")
        opts += "\n"
    return (
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\n"
        "metadata: {name: gw, namespace: gloo-system}\n"
        "spec:\n  bindAddress: 127.0.0.1\n  httpGateway:\n    options:\n" + opts
    )


def vs(route_dlp: str = "", vhost_dlp: str = "") -> str:
    text = (
        "apiVersion: gateway.solo.io/v1\nkind: VirtualService\n"
        "metadata: {name: vs, namespace: gloo-system}\n"
        "spec:\n  virtualHost:\n    routes:\n"
        "    - matchers: [{prefix: /a}]\n      routeAction: {dynamicForwardProxy: {}}\n"
    )
    if route_dlp:
        text += "      options:\n        dlp:\n"
        text += textwrap.indent(textwrap.dedent(route_dlp).strip(), "          ") + "\n"
    text += "    - matchers: [{prefix: /}]\n      routeAction: {dynamicForwardProxy: {}}\n"
    if vhost_dlp:
        text += "    options:\n      dlp:\n"
        text += textwrap.indent(textwrap.dedent(vhost_dlp).strip(), "        ") + "\n"
    return text


def load(tmp_path: Path, *docs: str) -> list[CompiledDlp | None]:
    path = tmp_path / "c.yaml"
    path.write_text("---\n".join(docs))
    cfg = load_paths([str(path)])
    routes = cfg.listeners[0].virtual_hosts[0].routes
    return [r.policies.get("dlp") for r in routes]


def errors(tmp_path: Path, *docs: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text("---\n".join(docs))
    with pytest.raises(ConfigError) as info:
        load_paths([str(path)])
    return info.value.errors


def test_no_dlp_builds_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, gateway(), vs()) == [None, None]


def test_the_seed_route_options(tmp_path: Path) -> None:
    a, b = load(
        tmp_path, gateway(), vs("actions: [{actionType: SSN}, {actionType: ALL_CREDIT_CARDS}]")
    )
    assert a is not None and b is None
    assert a.body and not a.logs
    ((matcher, plan),) = a.rules
    assert matcher is None and [x.name for x in plan.actions] == ["ssn", "all_credit_cards"]


def test_route_overrides_vhost_and_vhost_overrides_listener(tmp_path: Path) -> None:
    a, b = load(
        tmp_path,
        gateway("dlpRules: [{actions: [{actionType: VISA}]}]\nenabledFor: ALL"),
        vs("actions: [{actionType: SSN}]", vhost_dlp="actions: [{actionType: AMEX}]"),
    )
    assert a is not None and b is not None
    assert [x.name for x in a.rules[0][1].actions] == ["ssn"]
    assert [x.name for x in b.rules[0][1].actions] == ["amex"]
    # The override is complete: enabledFor comes from the vhost/route config, not the listener.
    assert b.body and not b.logs


def test_listener_rules_keep_their_matchers_in_order(tmp_path: Path) -> None:
    a, _ = load(
        tmp_path,
        gateway("""
            enabledFor: ACCESS_LOGS
            dlpRules:
            - matcher: {prefix: /a/secret}
              actions: [{actionType: SSN}]
            - actions: [{actionType: VISA}]
            """),
        vs(),
    )
    assert a is not None and a.logs and not a.body
    (m1, p1), (m2, p2) = a.rules
    assert m1 is not None and m1.prefix == "/a/secret"
    assert m2 is not None and m2.prefix == "/" and not m2.connect  # no matcher: prefix /
    assert [x.name for x in p1.actions] == ["ssn"] and [x.name for x in p2.actions] == ["visa"]


def test_key_value_only_config_has_no_body_filter(tmp_path: Path) -> None:
    a, _ = load(
        tmp_path,
        gateway(),
        vs("enabledFor: ALL\nactions: [{actionType: KEYVALUE, keyValueAction: {keyToMask: x-a}}]"),
    )
    assert a is not None and a.logs and not a.body


def test_custom_and_key_value_actions_compile(tmp_path: Path) -> None:
    a, _ = load(
        tmp_path,
        gateway(),
        vs("""
            enabledFor: ALL
            actions:
            - customAction:
                name: pets
                maskChar: Y
                percent: {value: 60}
                regex: [hello]
                regexActions: [{regex: '"name":[^"]*"([^"]*)"', subgroup: 1}]
            - actionType: KEYVALUE
              keyValueAction: {keyToMask: X-Request-Id, maskChar: '*', percent: 100}
            - {actionType: SSN, shadow: true}
            """),
    )
    assert a is not None
    custom, kv, ssn = a.rules[0][1].actions
    assert custom.name == "pets" and len(custom.rules) == 2 and custom.rules[1].groups == (1,)
    assert custom.rules[0].percent == 60
    assert kv.key == b"x-request-id" and kv.percent == 100
    assert all(r.table is None for r in ssn.rules)


ROUTE = "spec.virtualHost.routes[0].options.dlp"


@pytest.mark.parametrize(
    ("route_dlp", "path", "fragment"),
    [
        (
            "actions: [{actionType: KEYVALUE, keyValueAction: {keyToMask: x-a}}]",
            f"{ROUTE}.actions[0].actionType",
            "ACCESS_LOGS or ALL",
        ),
        (
            "enabledFor: ALL\nactions: [{actionType: KEYVALUE}]",
            f"{ROUTE}.actions[0].keyValueAction.keyToMask",
            "needs keyToMask",
        ),
        (
            "enabledFor: ALL\n"
            "actions: [{actionType: KEYVALUE, keyValueAction: {keyToMask: ':path'}}]",
            f"{ROUTE}.actions[0].keyValueAction.keyToMask",
            "pseudo-headers",
        ),
        (
            "actions: [{customAction: {regexActions: [{regex: '(abc'}]}}]",
            f"{ROUTE}.actions[0].customAction.regexActions[0].regex",
            "invalid regular expression",
        ),
        (
            "actions: [{customAction: {regex: ['a(?=b)']}}]",
            f"{ROUTE}.actions[0].customAction.regex[0]",
            "invalid regular expression",
        ),
        (
            "actions: [{customAction: {regexActions: [{regex: 'a(b)', subgroup: 2}]}}]",
            f"{ROUTE}.actions[0].customAction.regexActions[0].subgroup",
            "subgroup 2",
        ),
        (
            "actions: [{customAction: {regex: [a], percent: {value: 101}}}]",
            f"{ROUTE}.actions[0].customAction.percent.value",
            "less than or equal to 100",
        ),
        (
            "actions: [{customAction: {regex: [a], percent: -1}}]",
            f"{ROUTE}.actions[0].customAction.percent.value",
            "greater than or equal to 0",
        ),
        (
            "actions: [{customAction: {regex: [a], maskChar: XY}}]",
            f"{ROUTE}.actions[0].customAction.maskChar",
            "one byte",
        ),
        ("actions: [{actionType: PASSPORT}]", f"{ROUTE}.actions[0].actionType", "'SSN'"),
        (
            "actions: [{actionType: CUSTOM}]",
            f"{ROUTE}.actions[0].customAction",
            "needs customAction",
        ),
        (
            "actions: [{actionType: SSN, customAction: {regex: [a]}}]",
            f"{ROUTE}.actions[0].customAction",
            "needs actionType CUSTOM",
        ),
        ("enabledFor: SOMETIMES\nactions: [{actionType: SSN}]", f"{ROUTE}.enabledFor", "'ALL'"),
        (
            "actions: [{actionTyp: SSN}]",
            f"{ROUTE}.actions[0].actionTyp",
            "did you mean 'actionType'",
        ),
    ],
)
def test_bad_route_config_is_refused_with_its_field_path(
    tmp_path: Path, route_dlp: str, path: str, fragment: str
) -> None:
    errs = errors(tmp_path, gateway(), vs(route_dlp))
    assert any(f": {path}: " in e and fragment in e for e in errs), errs


def test_bad_listener_config_is_refused_with_its_field_path(tmp_path: Path) -> None:
    errs = errors(
        tmp_path,
        gateway("""
            dlpRules:
            - matcher: {regex: '/(a'}
              actions: [{actionType: KEYVALUE, keyValueAction: {keyToMask: x-a}}]
            """),
        vs(),
    )
    base = "spec.httpGateway.options.dlp.dlpRules[0]"
    assert any(f"{base}.matcher.regex: invalid regular expression" in e for e in errs), errs
    assert any(f"{base}.actions[0].actionType: KEYVALUE" in e for e in errs), errs
    assert all("(Gateway gw)" in e for e in errs)


def test_validate_cli_names_the_dlp_field_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "---\n".join([gateway(), vs("actions: [{customAction: {regex: ['(unclosed']}}]")])
    )
    r = subprocess.run(
        [sys.executable, "-m", "dfproxy", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert f"{ROUTE}.actions[0].customAction.regex[0]: invalid regular expression" in out
    assert "missing )" in out
