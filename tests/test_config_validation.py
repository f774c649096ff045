"""Validation of Gloo Gateway/VirtualService YAML: every bad config is refused, whole, with
errors that name the file, the document, the field path, what was found and what is expected.

Most cases go through ``dfproxy.config.gloo.load_paths`` on files written to tmp_path (it
raises ``ConfigError`` with ``.errors``); the CLI (``dfproxy validate``, ``dfproxy run -c``)
is exercised as a real subprocess at the end.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from tests.support import gloo_yaml
from tests.support.proxy import REPO_ROOT, ProxyProcess

SEEDS = Path(__file__).parent / "fixtures" / "seeds"

GATEWAY = gloo_yaml.gateway(connect=True, name="gw")

VIRTUAL_SERVICE = gloo_yaml.virtual_service("vs", ["*"], gloo_yaml.DFP_ROUTE)


def docs(*parts: str) -> str:
    """A multi-document YAML stream from dedented parts."""
    return "---\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)


def gateway(spec_yaml: str, name: str = "gw") -> str:
    body = textwrap.indent(textwrap.dedent(spec_yaml).strip("\n"), "  ")
    return (
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\n"
        f"metadata: {{name: {name}, namespace: gloo-system}}\nspec:\n{body}\n"
    )


def vs(virtual_host_yaml: str, name: str = "vs", labels: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(virtual_host_yaml).strip("\n"), "    ")
    meta = f"{{name: {name}, namespace: gloo-system{', labels: ' + labels if labels else ''}}}"
    return (
        "apiVersion: gateway.solo.io/v1\nkind: VirtualService\n"
        f"metadata: {meta}\nspec:\n  virtualHost:\n{body}\n"
    )


def errors_of(*paths: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_paths([str(p) for p in paths])
    errs = info.value.errors
    assert errs, "ConfigError without errors"
    # The exception text lists every error too (what `dfproxy run` logs).
    for e in errs:
        assert e in str(info.value)
    return errs


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    yaml: str
    document: int  # the document the error is reported against
    path: str | None  # the field path the message must contain
    fragments: tuple[str, ...]  # what the message must also contain


CASES = [
    # -- unknown fields, with a "did you mean"
    Case(
        "unknown-dnsLokupFamily",
        docs(
            gateway("""
                bindAddress: 127.0.0.1
                httpGateway:
                  options:
                    dynamicForwardProxy:
                      dnsCacheConfig: {dnsLokupFamily: V4_ONLY}
                """),
            VIRTUAL_SERVICE,
        ),
        1,
        "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.dnsLokupFamily",
        ("unknown field", "dnsLokupFamily", "did you mean 'dnsLookupFamily'"),
    ),
    Case(
        "unknown-prefx",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefx: /api}]
                  routeAction: {dynamicForwardProxy: {}}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].matchers[0].prefx",
        ("unknown field", "did you mean 'prefix'"),
    ),
    Case(
        "unknown-domians",
        docs(
            GATEWAY,
            vs("""
                domians: ['*']
                routes:
                - routeAction: {dynamicForwardProxy: {}}
                """),
        ),
        2,
        "spec.virtualHost.domians",
        ("unknown field", "did you mean 'domains'"),
    ),
    # -- durations, ranges, enums
    Case(
        "bad-duration-dns-refresh-rate",
        docs(
            gateway("""
                httpGateway:
                  options:
                    dynamicForwardProxy:
                      dnsCacheConfig: {dnsRefreshRate: 5x}
                """),
        ),
        1,
        "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.dnsRefreshRate",
        ("5x", "duration", "5s"),
    ),
    Case(
        "bad-duration-route-timeout",
        docs(
            GATEWAY,
            vs("""
                routes:
                - routeAction: {dynamicForwardProxy: {}}
                  options: {timeout: 5x}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].options.timeout",
        ("5x", "duration"),
    ),
    Case(
        "maxHosts-zero",
        docs(
            gateway("""
                httpGateway:
                  options:
                    dynamicForwardProxy:
                      dnsCacheConfig: {maxHosts: 0}
                """),
        ),
        1,
        "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.maxHosts",
        ("greater than 0", "found: 0"),
    ),
    Case(
        "bindPort-70000",
        docs(gateway("bindPort: 70000")),
        1,
        "spec.bindPort",
        ("70000", "65535"),
    ),
    Case(
        "dnsLookupFamily-V5",
        docs(
            gateway("""
                httpGateway:
                  options:
                    dynamicForwardProxy:
                      dnsCacheConfig: {dnsLookupFamily: V5}
                """),
        ),
        1,
        "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.dnsLookupFamily",
        ("V5", "V4_ONLY", "V4_PREFERRED", "ALL"),
    ),
    # -- regular expressions
    Case(
        "invalid-regex-matcher",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefix: /ok}]
                  directResponseAction: {status: 200}
                - matchers: [{exact: /ok}]
                  directResponseAction: {status: 200}
                - matchers: [{regex: '/a(b'}]
                  directResponseAction: {status: 200}
                """),
        ),
        2,
        "spec.virtualHost.routes[2].matchers[0].regex",
        ("invalid regular expression", "/a(b"),
    ),
    Case(
        "invalid-regex-header",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers:
                  - prefix: /
                    headers: [{name: x-tenant, value: '[ab', regex: true}]
                  directResponseAction: {status: 200}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].matchers[0].headers[0].value",
        ("invalid regular expression", "[ab"),
    ),
    Case(
        "invalid-regex-query",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers:
                  - prefix: /
                    queryParameters: [{name: q, value: '(x', regex: true}]
                  directResponseAction: {status: 200}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].matchers[0].queryParameters[0].value",
        ("invalid regular expression", "(x"),
    ),
    # -- matcher and route structure
    Case(
        "two-path-specifiers",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefix: /a, exact: /a}]
                  directResponseAction: {status: 200}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].matchers[0]",
        ("one path specifier", "prefix", "exact"),
    ),
    Case(
        "two-actions",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefix: /}]
                  directResponseAction: {status: 200}
                  redirectAction: {hostRedirect: b.test}
                """),
        ),
        2,
        "spec.virtualHost.routes[0]",
        ("exactly one action", "routeAction", "directResponseAction", "redirectAction"),
    ),
    Case(
        "no-action",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefix: /}]
                  directResponseAction: {status: 200}
                - matchers: [{prefix: /x}]
                """),
        ),
        2,
        "spec.virtualHost.routes[1]",
        ("exactly one action",),
    ),
    Case(
        "hostRewrite-and-autoHostRewriteHeader",
        docs(
            GATEWAY,
            vs("""
                routes:
                - routeAction:
                    dynamicForwardProxy: {hostRewrite: a.test, autoHostRewriteHeader: x-h}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].routeAction.dynamicForwardProxy",
        ("hostRewrite", "autoHostRewriteHeader"),
    ),
    # -- CONNECT
    Case(
        "connectTerminate-at-HCM-level",
        docs(
            gateway("""
                httpGateway:
                  options:
                    dynamicForwardProxy: {}
                    httpConnectionManagerSettings:
                      upgrades: [{connectTerminate: {enabled: true}}]
                """),
            VIRTUAL_SERVICE,
        ),
        1,
        "spec.httpGateway.options.httpConnectionManagerSettings.upgrades[0]",
        (
            "connect_terminate is not supported at HCM level; use 'connect' at HCM level and "
            "'connect_terminate' at route level",
        ),
    ),
    Case(
        "connectTerminate-without-connectMatcher",
        docs(
            GATEWAY,
            vs("""
                routes:
                - matchers: [{prefix: /}]
                  routeAction: {dynamicForwardProxy: {}}
                  options: {upgrades: [{connectTerminate: {enabled: true}}]}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].options.upgrades",
        ("connectTerminate", "connectMatcher"),
    ),
    # -- cross-resource checks
    Case(
        "duplicate-domain-across-virtual-services",
        docs(
            GATEWAY,
            vs(
                """
                domains: [a.test, b.test]
                routes: [{directResponseAction: {status: 200}}]
                """,
                name="first",
            ),
            vs(
                """
                domains: [c.test, a.test]
                routes: [{directResponseAction: {status: 200}}]
                """,
                name="second",
            ),
        ),
        3,
        "spec.virtualHost.domains",
        ("'a.test'", "VirtualService first", "gw"),
    ),
    Case(
        "two-gateways-same-address-port",
        docs(
            gateway("bindAddress: 127.0.0.1\nbindPort: 8081", name="one"),
            gateway("bindAddress: 127.0.0.1\nbindPort: 8081", name="two"),
        ),
        2,
        "spec.bindPort",
        ("127.0.0.1:8081", "Gateway one"),
    ),
    Case(
        "virtualServices-ref-to-missing",
        docs(
            gateway("""
                httpGateway:
                  virtualServices: [{name: vs}, {name: missing-vs, namespace: gloo-system}]
                  options: {dynamicForwardProxy: {}}
                """),
            VIRTUAL_SERVICE,
        ),
        1,
        "spec.httpGateway.virtualServices[1]",
        ("'missing-vs'",),
    ),
    Case(
        "dfp-route-without-dfp-on-gateway",
        docs(gateway("bindAddress: 127.0.0.1\nhttpGateway: {}"), VIRTUAL_SERVICE),
        2,
        "spec.virtualHost.routes[0].routeAction.dynamicForwardProxy",
        ("dynamicForwardProxy", "gw"),
    ),
    Case(
        "jwt-no-providers",
        docs(
            GATEWAY,
            vs("""
                routes: [{routeAction: {dynamicForwardProxy: {}}}]
                options: {jwt: {providers: {}}}
                """),
        ),
        2,
        "spec.virtualHost.options.jwt.providers",
        ("at least one provider is required",),
    ),
    # -- Gloo fields not built yet
    Case(
        "dlp",
        docs(
            GATEWAY,
            vs("""
                routes:
                - routeAction: {dynamicForwardProxy: {}}
                  options: {dlp: {actions: [{actionType: SSNN}]}}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].options.dlp.actions[0].actionType",
        ("'SSN'", "SSNN"),
    ),
    Case(
        "stagedTransformations",
        docs(
            GATEWAY,
            vs("""
                routes: [{routeAction: {dynamicForwardProxy: {}}}]
                options:
                  stagedTransformations: {postRouting: {requestTransforms: []}}
                """),
        ),
        2,
        "spec.virtualHost.options.stagedTransformations",
        ("postRouting", "not supported"),
    ),
    Case(
        "retries-unknown-retry-on",
        docs(
            GATEWAY,
            vs("""
                routes:
                - routeAction: {dynamicForwardProxy: {}}
                  options: {retries: {numRetries: 3, retryOn: "5xx,teapot"}}
                """),
        ),
        2,
        "spec.virtualHost.routes[0].options.retries.retryOn",
        ("unknown retryOn value teapot", "5xx"),
    ),
    Case("ssl-true", docs(gateway("ssl: true")), 1, "spec.ssl", ("not supported yet",)),
    # -- the resource itself
    Case(
        "wrong-kind",
        docs(GATEWAY, VIRTUAL_SERVICE.replace("kind: VirtualService", "kind: Upstream")),
        2,
        "kind",
        ("'Upstream'", "Gateway", "VirtualService"),
    ),
    Case(
        "wrong-apiVersion",
        docs(GATEWAY.replace("gateway.solo.io/v1", "gateway.solo.io/v2"), VIRTUAL_SERVICE),
        1,
        "apiVersion",
        ("gateway.solo.io/v2", "gateway.solo.io/v1"),
    ),
    Case(
        "non-mapping-document",
        docs(GATEWAY, "- just\n- a list\n", VIRTUAL_SERVICE),
        2,
        None,
        ("expected a mapping", "list"),
    ),
    Case(
        "scalar-document",
        docs(GATEWAY, "just a string\n"),
        2,
        None,
        ("expected a mapping",),
    ),
    Case(
        "domain-with-inner-wildcard",
        docs(
            GATEWAY,
            vs("""
                domains: ['a.*.test']
                routes: [{directResponseAction: {status: 200}}]
                """),
        ),
        2,
        "spec.virtualHost.domains[0]",
        ("a.*.test", "wildcard"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_document_is_refused_with_a_precise_error(tmp_path: Path, case: Case) -> None:
    path = write(tmp_path, case.yaml)
    errs = errors_of(path)
    where = f"{path}: document {case.document}"
    matching = [
        e for e in errs if e.startswith(where) and (case.path is None or f": {case.path}:" in e)
    ]
    assert matching, f"no error at {where} / {case.path!r}; got:\n" + "\n".join(errs)
    msg = matching[0]
    for fragment in case.fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    for e in errs:  # every message names the file and the document
        assert e.startswith(f"{path}: document "), e


# ---------------------------------------------------------------------------- whole files
def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GATEWAY + "---\nkind: [VirtualService\nmetadata: {}\n")
    errs = errors_of(path)
    assert len(errs) == 1
    assert errs[0].startswith(str(path))
    assert "invalid YAML" in errs[0]
    assert "line" in errs[0]


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    errs = errors_of(path)
    assert len(errs) == 1
    assert str(path) in errs[0]
    assert "No such file" in errs[0]


def test_empty_folder_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (folder / "README.txt").write_text("not yaml\n")
    errs = errors_of(folder)
    assert len(errs) == 1
    assert "no YAML files" in errs[0]
    assert str(folder) in errs[0], errs[0]


def test_folder_is_read_in_name_order_and_errors_name_each_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (folder / "10-gateway.yaml").write_text(GATEWAY)
    (folder / "20-vs.yml").write_text(VIRTUAL_SERVICE.replace("prefix: /", "prefx: /"))
    (folder / ".hidden.yaml").write_text("garbage: [")
    (folder / "notes.txt").write_text("garbage: [")
    errs = errors_of(folder)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{folder / '20-vs.yml'}: document 1 (VirtualService vs): ")
    assert "did you mean 'prefix'" in errs[0]


SCHEMA_ERRORS_FILE = docs(
    gateway("""
        bindAddress: 127.0.0.1
        bindPort: 70000
        httpGateway:
          options:
            dynamicForwardProxy:
              dnsCacheConfig: {dnsLokupFamily: V4_ONLY, maxHosts: 0, hostTtl: 5x}
        """),
    vs("""
        domians: ['*']
        routes:
        - matchers: [{prefx: /}]
          routeAction: {dynamicForwardProxy: {}}
        - matchers: [{prefix: /}]
          directResponseAction: {status: 200}
          redirectAction: {hostRedirect: a.test}
        - routeAction: {dynamicForwardProxy: {}}
          options: {retries: {numRetries: -1}}
        options: {jwt: {}}
        """),
)

SCHEMA_ERROR_PATHS = [
    (1, "spec.bindPort"),
    (1, "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.dnsLokupFamily"),
    (1, "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.maxHosts"),
    (1, "spec.httpGateway.options.dynamicForwardProxy.dnsCacheConfig.hostTtl"),
    (2, "spec.virtualHost.domians"),
    (2, "spec.virtualHost.routes[0].matchers[0].prefx"),
    (2, "spec.virtualHost.routes[1]"),
    (2, "spec.virtualHost.routes[2].options.retries.numRetries"),
    (2, "spec.virtualHost.options.jwt.providers"),
]


def test_every_schema_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, SCHEMA_ERRORS_FILE)
    errs = errors_of(path)
    assert len(errs) == len(SCHEMA_ERROR_PATHS), "\n".join(errs)
    for doc, field in SCHEMA_ERROR_PATHS:
        assert any(
            e.startswith(f"{path}: document {doc} ") and f": {field}: " in e for e in errs
        ), f"nothing at document {doc} {field}:\n" + "\n".join(errs)


def test_errors_of_several_files_are_reported_together(tmp_path: Path) -> None:
    a = write(tmp_path, SCHEMA_ERRORS_FILE, "a.yaml")
    b = write(tmp_path, docs(gateway("ssl: true", name="gw2")), "b.yaml")
    missing = tmp_path / "missing.yaml"
    errs = errors_of(a, b, missing)
    assert len(errs) == len(SCHEMA_ERROR_PATHS) + 2, "\n".join(errs)
    assert sum(e.startswith(str(a)) for e in errs) == len(SCHEMA_ERROR_PATHS)
    assert any(e.startswith(f"{b}: document 1 (Gateway gw2): spec.ssl: ") for e in errs)
    assert any(e.startswith(str(missing)) for e in errs)


def test_field_level_errors_are_reported_with_the_schema_errors(tmp_path: Path) -> None:
    """An invalid regex or an HCM-level connectTerminate is an error of one field of one
    document, like an unknown field: fixing a file must not take two rounds."""
    path = write(
        tmp_path,
        docs(
            gateway("""
                httpGateway:
                  options:
                    dynamicForwardProxy: {}
                    httpConnectionManagerSettings:
                      upgrades: [{connectTerminate: {}}]
                """),
            vs(
                """
                domains: [a.test]
                routes:
                - matchers: [{regex: '/a(b'}]
                  directResponseAction: {status: 200}
                """,
                name="one",
            ),
            vs(
                """
                domains: [b.test]
                routes:
                - matchers: [{prefx: /}]
                  directResponseAction: {status: 200}
                """,
                name="two",
            ),
        ),
    )
    errs = errors_of(path)
    expected = [
        (1, "spec.httpGateway.options.httpConnectionManagerSettings.upgrades[0]"),
        (2, "spec.virtualHost.routes[0].matchers[0].regex"),
        (3, "spec.virtualHost.routes[0].matchers[0].prefx"),
    ]
    for doc, field in expected:
        assert any(
            e.startswith(f"{path}: document {doc} ") and f": {field}: " in e for e in errs
        ), f"nothing at document {doc} {field}:\n" + "\n".join(errs)
    assert len(errs) == len(expected), "\n".join(errs)


def test_error_in_a_virtual_service_shared_by_two_gateways_is_reported_once(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        docs(
            gateway("bindAddress: 127.0.0.1\nbindPort: 8081\nhttpGateway: {options: {}}", "a"),
            gateway("bindAddress: 127.0.0.1\nbindPort: 8082\nhttpGateway: {options: {}}", "b"),
            vs("""
                routes:
                - matchers: [{regex: '/a(b'}]
                  directResponseAction: {status: 200}
                """),
        ),
    )
    errs = errors_of(path)
    regex_errors = [e for e in errs if ".matchers[0].regex:" in e]
    assert len(regex_errors) == 1, "\n".join(errs)


# ---------------------------------------------------------------------------- good configs
@pytest.mark.parametrize("seed", sorted(p.name for p in SEEDS.glob("*.yaml")))
def test_every_seed_fixture_loads(seed: str) -> None:
    config = load_paths([str(SEEDS / seed)])
    assert config.listeners
    assert config.version and config.version != "embedded-default"
    assert str(SEEDS / seed) in config.source


def test_no_virtual_service_gives_the_default_one(tmp_path: Path) -> None:
    config = load_paths([str(write(tmp_path, GATEWAY))])
    [listener] = config.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 8080)
    assert listener.dfp is not None and listener.connect_enabled
    [vh] = listener.virtual_hosts
    assert vh.domains == ["*"]
    connect, forward = vh.routes
    assert connect.connect_terminate and connect.action == "dfp"
    assert [m.connect for m in connect.matchers] == [True]
    assert forward.action == "dfp" and not forward.connect_terminate
    assert [m.prefix for m in forward.matchers] == ["/"]


def test_no_gateway_gives_the_default_one(tmp_path: Path) -> None:
    config = load_paths([str(write(tmp_path, VIRTUAL_SERVICE))])
    [listener] = config.listeners
    assert listener.dfp is not None
    assert listener.connect_enabled
    [vh] = listener.virtual_hosts
    assert vh.name == "gloo-system.vs"


def test_virtual_service_selector_and_refs_select_by_label_and_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        docs(
            gateway(
                """
                bindAddress: 127.0.0.1
                bindPort: 8081
                httpGateway:
                  virtualServiceSelector: {app: fwd}
                  options: {dynamicForwardProxy: {}}
                """,
                name="by-label",
            ),
            gateway(
                """
                bindAddress: 127.0.0.1
                bindPort: 8082
                httpGateway:
                  virtualServices: [{name: unlabelled}]
                  options: {dynamicForwardProxy: {}}
                """,
                name="by-ref",
            ),
            vs(
                "domains: ['*']\nroutes: [{directResponseAction: {status: 200}}]",
                name="labelled",
                labels="{app: fwd}",
            ),
            vs(
                "domains: ['*']\nroutes: [{directResponseAction: {status: 201}}]",
                name="unlabelled",
                labels="{app: other}",
            ),
        ),
    )
    config = load_paths([str(path)])
    by_name = {spec.name: spec for spec in config.listeners}
    assert [vh.name for vh in by_name["by-label"].virtual_hosts] == ["gloo-system.labelled"]
    assert [vh.name for vh in by_name["by-ref"].virtual_hosts] == ["gloo-system.unlabelled"]


def test_use_proxy_proto_is_accepted(tmp_path: Path) -> None:
    """useProxyProto was "not supported yet"; it is implemented now (PROXY protocol v1/v2)."""
    config = load_paths([str(write(tmp_path, docs(gateway("useProxyProto: true"))))])
    assert config.listeners[0].use_proxy_protocol


def test_version_changes_with_the_content(tmp_path: Path) -> None:
    path = write(tmp_path, GATEWAY)
    v1 = load_paths([str(path)]).version
    assert load_paths([str(path)]).version == v1
    path.write_text(GATEWAY.replace("8080", "8081"))
    assert load_paths([str(path)]).version != v1


# ---------------------------------------------------------------------------- the CLI
def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )


def test_validate_cli_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = write(tmp_path, SCHEMA_ERRORS_FILE, "bad.yaml")
    good = SEEDS / "dfp_basic.yaml"
    r = run_cli("validate", str(good), str(bad))
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("- ")]
    assert len(lines) == len(SCHEMA_ERROR_PATHS), r.stderr
    assert f"{len(SCHEMA_ERROR_PATHS)} configuration errors" in r.stderr
    for doc, field in SCHEMA_ERROR_PATHS:
        assert any(f"{bad}: document {doc} " in ln and f": {field}: " in ln for ln in lines), field
    assert "did you mean 'dnsLookupFamily'" in r.stderr
    assert "configuration OK" not in r.stdout


def test_validate_cli_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    r = run_cli("validate", str(SEEDS / "dfp_connect.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("configuration OK (version ")
    assert "listener gateway-proxy" in r.stdout
    assert "gloo-system.forward-proxy-vs" in r.stdout
    assert "CONNECT terminated" in r.stdout


def test_run_with_a_bad_config_exits_2_without_listening(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    bad = write(
        tmp_path,
        docs(GATEWAY, VIRTUAL_SERVICE.replace("prefix: /", "regex: '/a(b'")),
        "bad.yaml",
    )
    p = proxy_factory("-c", str(bad), wait_ready=False)
    assert p.wait(15) == 2
    err = p.stderr_text()
    assert "Traceback" not in err
    assert (
        f"{bad}: document 2 (VirtualService vs): spec.virtualHost.routes[0].matchers[0].regex"
        in err
    )
    assert "invalid regular expression" in err
    assert not p.ports_file.exists()
    assert not re.search(r"listener \S+ on ", err)


def test_run_with_a_gateway_on_a_taken_port_fails_cleanly(
    tmp_path: Path, proxy_factory: Callable[..., ProxyProcess]
) -> None:
    """A second Gateway whose bindPort is taken: the proxy exits non-zero with one clear
    line naming the address, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        second = gateway(f"bindAddress: 127.0.0.1\nbindPort: {port}", name="second")
        path = write(tmp_path, docs(GATEWAY, second), "taken.yaml")
        p = proxy_factory("-c", str(path), wait_ready=False)
        code = p.wait(15)
    err = p.stderr_text()
    assert code != 0
    assert f"127.0.0.1:{port}" in err or f"('127.0.0.1', {port})" in err, err
    assert "Traceback" not in err, err
    assert not p.ports_file.exists()
