"""Transformation config (dfproxy/config/schema/transformation.py and the policy compile in
dfproxy/filters/transformation.py): what loads, and every refusal with its field path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dfproxy.config.gloo import ConfigError, load_paths
from dfproxy.filters.transformation import CompiledStage
from tests.support import gloo_yaml

GATEWAY = gloo_yaml.gateway(name="gw", port=0)

VHOST = "spec.virtualHost.options.stagedTransformations"
ROUTE = "spec.virtualHost.routes[0].options.stagedTransformations"
TT = "requestTransforms[0].requestTransformation.transformationTemplate"


def config(route_options: str = "", vhost_options: str = "", routes: int = 1) -> str:
    route = gloo_yaml.DFP_ROUTE
    if route_options:
        route += "  options:\n" + textwrap.indent(textwrap.dedent(route_options).strip(), "    ")
        route += "\n"
    return gloo_yaml.config(
        GATEWAY, gloo_yaml.virtual_service("vs", ["*"], route * routes, vhost_options)
    )


def load(tmp_path: Path, text: str) -> dict[str, CompiledStage]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = load_paths([str(path)])
    return cfg.listeners[0].virtual_hosts[0].routes[0].policies


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_paths([str(path)])
    return info.value.errors


def stage(request: str) -> str:
    return f"""
    stagedTransformations:
      regular:
        requestTransforms:
        - requestTransformation:
            transformationTemplate:
{textwrap.indent(textwrap.dedent(request).strip(), " " * 14)}
    """


def test_a_route_without_transformations_has_no_policy(tmp_path: Path) -> None:
    assert load(tmp_path, config()) == {}


def test_stages_compile_into_their_policies(tmp_path: Path) -> None:
    policies = load(
        tmp_path,
        config(
            """
            stagedTransformations:
              inheritTransformation: true
              early:
                requestTransforms:
                - requestTransformation: {transformationTemplate: {headers: {a: {text: x}}}}
            """,
            """
            stagedTransformations:
              early:
                responseTransforms:
                - responseTransformation: {transformationTemplate: {headers: {b: {text: y}}}}
              regular:
                requestTransforms:
                - matcher: {prefix: /x}
                  requestTransformation: {transformationTemplate: {headers: {c: {text: z}}}}
            """,
        ),
    )
    assert set(policies) == {"transformation.early", "transformation.regular"}
    early = policies["transformation.early"]
    assert len(early.request) == 1 and len(early.response) == 1  # inherited the vhost's
    regular = policies["transformation.regular"]
    assert regular.request[0].matcher is not None and regular.request[0].matcher.prefix == "/x"


def test_legacy_transformations_are_the_regular_stage(tmp_path: Path) -> None:
    policies = load(
        tmp_path,
        config("""
            transformations:
              requestTransformation:
                transformationTemplate: {headers: {x: {text: '{{ header("y") }}'}}}
            """),
    )
    assert list(policies) == ["transformation.regular"]


@pytest.mark.parametrize(
    ("route_options", "vhost_options", "path", "fragments"),
    [
        (
            "",
            stage("headers: {x-foo: {text: '{{ nope() }}'}}"),
            f"{VHOST}.regular.{TT}.headers.x-foo.text",
            ("unknown function nope (at 1:4)",),
        ),
        (
            stage("body: {text: '{% if true %}'}"),
            "",
            f"{ROUTE}.regular.{TT}.body.text",
            ("missing endif",),
        ),
        (
            stage("extractors: {e: {header: x, regex: '(a', subgroup: 1}}"),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e.regex",
            ("invalid regular expression", "'(a'"),
        ),
        (
            stage("extractors: {e: {header: x, regex: 'a', subgroup: 1}}"),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e.regex",
            ("group 1 requested for regex with only 0 sub groups",),
        ),
        (
            stage(
                "extractors: {e: {header: x, regex: '(a)', subgroup: 1, mode: REPLACE_ALL,"
                " replacementText: b}}"
            ),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e",
            ("REPLACE_ALL mode set but subgroup is not 0",),
        ),
        (
            stage("extractors: {e: {header: x, regex: '(a)', mode: SINGLE_REPLACE}}"),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e",
            ("SINGLE_REPLACE mode set but no replacementText provided",),
        ),
        (
            stage("extractors: {e: {header: x, body: {}, regex: a}}"),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e",
            ("exactly one of header, body",),
        ),
        (
            stage("extractors: {e: {header: x, regex: a, mode: GUESS}}"),
            "",
            f"{ROUTE}.regular.{TT}.extractors.e.mode",
            ("EXTRACT",),
        ),
        (
            stage("headers: {content-length: {text: '1'}}"),
            "",
            f"{ROUTE}.regular.{TT}.headers.content-length",
            ("framing",),
        ),
        (
            stage("body: {text: a}\npassthrough: {}"),
            "",
            f"{ROUTE}.regular.{TT}",
            ("one body transformation", "body, passthrough"),
        ),
        (
            stage("parseBodyBehaviour: DontParse"),
            "",
            f"{ROUTE}.regular.{TT}.parseBodyBehaviour",
            ("did you mean 'parseBodyBehavior'",),
        ),
        (
            """
            stagedTransformations:
              regular:
                requestTransforms:
                - requestTransformation: {headerBodyTransform: {}}
            """,
            "",
            f"{ROUTE}.regular.requestTransforms[0].requestTransformation",
            ("headerBodyTransform is not supported",),
        ),
        (
            """
            stagedTransformations:
              early:
                requestTransforms:
                - requestTransformation: {xsltTransformation: {xslt: x}}
            """,
            "",
            f"{ROUTE}.early.requestTransforms[0].requestTransformation",
            ("xsltTransformation is not supported",),
        ),
        (
            """
            stagedTransformations:
              early:
                requestTransforms:
                - matcher: {regex: '(['}
                  requestTransformation: {transformationTemplate: {}}
            """,
            "",
            f"{ROUTE}.early.requestTransforms[0].matcher.regex",
            ("invalid regular expression",),
        ),
        (
            """
            stagedTransformations:
              regular:
                responseTransforms:
                - matchers: [{name: ':status', value: '(', regex: true}]
            """,
            "",
            f"{ROUTE}.regular.responseTransforms[0].matchers[0].value",
            ("invalid regular expression",),
        ),
        (
            """
            stagedTransformations: {regular: {}}
            transformations: {requestTransformation: {transformationTemplate: {}}}
            """,
            "",
            "spec.virtualHost.routes[0].options.transformations",
            ("not both",),
        ),
        (
            "stagedTransformations: {postRouting: {}}",
            "",
            ROUTE,
            ("postRouting", "not supported"),
        ),
    ],
)
def test_refusals_name_the_field(
    tmp_path: Path, route_options: str, vhost_options: str, path: str, fragments: tuple[str, ...]
) -> None:
    errs = errors(tmp_path, config(route_options, vhost_options))
    matching = [e for e in errs if f": {path}: " in e]
    assert matching, f"no error at {path}; got:\n" + "\n".join(errs)
    for fragment in fragments:
        assert fragment in matching[0], (fragment, matching[0])


def test_a_vhost_error_is_reported_once_for_all_routes(tmp_path: Path) -> None:
    errs = errors(tmp_path, config("", stage("headers: {x: {text: '{{'}}"), routes=3))
    assert len([e for e in errs if ".headers.x.text" in e]) == 1, errs
