"""A compiled transformationTemplate (dfproxy/transformation/transformer.py): extractor modes
over RE2, header operations and their order, JSON body parsing, mergeExtractorsToBody,
dynamic metadata, and what needs the body. Pure: a dict-backed Message, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dfproxy.config.schema.transformation import TransformationTemplate
from dfproxy.transformation.transformer import (
    BodyParseError,
    CompiledTransformation,
    Extractor,
    RenderError,
    compile_template,
)


class Msg:
    """Headers as a list of (lower-case name, value), as the filter's adapters behave."""

    def __init__(self, headers: list[tuple[str, str]], request: dict[str, str] | None = None):
        self.headers = list(headers)
        self.request = request or {}

    def get(self, name: str) -> str:
        return next((v for n, v in self.headers if n == name), "")

    def request_get(self, name: str) -> str:
        return self.request.get(name, "")

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def append(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def remove(self, name: str) -> None:
        self.headers = [(n, v) for n, v in self.headers if n != name]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


def compiled(spec: dict[str, Any], escape: bool = False) -> CompiledTransformation:
    errors: list[tuple[str, str]] = []
    t = compile_template(
        TransformationTemplate.model_validate(spec),
        escape,
        lambda path, msg: errors.append((path, msg)),
        env={},
    )
    assert t is not None, errors
    return t


def errors_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    t = compile_template(
        TransformationTemplate.model_validate(spec),
        False,
        lambda path, msg: errors.append((path, msg)),
        env={},
    )
    assert t is None
    return errors


# ---------------------------------------------------------------------------- extractors
@pytest.mark.parametrize(
    ("regex", "group", "mode", "replacement", "value", "expected"),
    [
        # EXTRACT: the regex must match the whole source; no match gives "".
        ("/service/(.*)", 1, "EXTRACT", None, "/service/foo.test", "foo.test"),
        ("/service/(.*)", 0, "EXTRACT", None, "/service/foo", "/service/foo"),
        ("/service/(.*)", 1, "EXTRACT", None, "/api/service/foo", ""),
        ("foo", 0, "EXTRACT", None, "foobar", ""),
        ("(.*foo=([^&]*).*)", 2, "EXTRACT", None, "/p?a=1&foo=bar&b=2", "bar"),
        ("(a)?b", 1, "EXTRACT", None, "b", ""),  # an unmatched group is ""
        # SINGLE_REPLACE: the subgroup of a whole-input match is replaced, else unchanged.
        ("/v1/(.*)", 1, "SINGLE_REPLACE", "XX", "/v1/users", "/v1/XX"),
        ("/v1/(.*)", 1, "SINGLE_REPLACE", "XX", "/v2/users", "/v2/users"),
        ("v1", 0, "SINGLE_REPLACE", "v2", "/v1/users", "/v1/users"),  # not the whole input
        # REPLACE_ALL: every non-empty match, with $1 / $& / $$ in the replacement.
        ("[0-9]", 0, "REPLACE_ALL", "#", "a1b22c", "a#b##c"),
        ("([a-z])([0-9])", 0, "REPLACE_ALL", "$2$1", "a1-b2", "1a-2b"),
        ("x", 0, "REPLACE_ALL", "[$&] $$", "axb", "a[x] $b"),
        ("q*", 0, "REPLACE_ALL", "!", "aqb", "a!b"),  # empty matches are not replaced
        ("nomatch", 0, "REPLACE_ALL", "!", "abc", "abc"),
    ],
)
def test_extractor_modes(
    regex: str, group: int, mode: str, replacement: str | None, value: str, expected: str
) -> None:
    assert Extractor("e", "x", regex, group, mode, replacement).run(value) == expected


def test_re2_has_no_catastrophic_backtracking() -> None:
    # A backtracking engine takes exponential time here; RE2 is linear in the input.
    ex = Extractor("e", "x", "(a+)+$", 1, "EXTRACT", None)
    assert ex.run("a" * 100_000 + "b") == ""
    assert ex.run("a" * 100_000) == "a" * 100_000
    ex = Extractor("e", "x", "(x+x+)+y", 0, "REPLACE_ALL", "!")
    assert ex.run("x" * 50_000) == "x" * 50_000


def test_extractor_group_and_regex_errors() -> None:
    with pytest.raises(ValueError, match="group 2 requested for regex with only 1 sub groups"):
        Extractor("e", "x", "(a)", 2, "EXTRACT", None)
    with pytest.raises(ValueError, match="invalid regular expression: missing \\)"):
        Extractor("e", "x", "(a", 0, "EXTRACT", None)
    # RE2 has no backreferences: rejected at config load, not at request time.
    with pytest.raises(ValueError, match="invalid regular expression"):
        Extractor("e", "x", r"(a)\1", 0, "EXTRACT", None)


# ---------------------------------------------------------------------------- headers
def test_header_operations_in_envoy_gloo_order() -> None:
    t = compiled(
        {
            "parseBodyBehavior": "DontParse",
            "headers": {
                "x-new": {"text": '{{ header("x-in") }}-new'},
                "x-in": {"text": "replaced"},
                "x-gone": {"text": "{% if false %}x{% endif %}"},  # empty: removed
            },
            "headersToRemove": ["X-Drop"],
            "headersToAppend": [
                {"key": "x-multi", "value": {"text": "two"}},
                {"key": "x-skip", "value": {"text": ""}},  # empty: nothing added
            ],
        }
    )
    msg = Msg([("x-in", "v"), ("x-gone", "1"), ("x-drop", "1"), ("x-multi", "one")])
    assert t.run(msg, b"", None) is None
    assert msg.get("x-new") == "v-new"  # rendered before x-in was replaced (map order)
    assert msg.all("x-in") == ["replaced"]
    assert msg.all("x-gone") == [] and msg.all("x-drop") == [] and msg.all("x-skip") == []
    assert msg.all("x-multi") == ["one", "two"]
    assert not t.needs_body


def test_header_value_with_crlf_is_refused() -> None:
    t = compiled(
        {
            "extractors": {"h": {"header": "in", "regex": "(?s)(.*)", "subgroup": 1}},
            "headers": {"x": {"text": "{{ h }}"}},
        }
    )
    with pytest.raises(RenderError, match="CR, LF or NUL"):
        t.run(Msg([("in", "a\r\nx-injected: 1")]), b"", None)


def test_extractors_by_bare_name_and_extraction() -> None:
    t = compiled(
        {
            "extractors": {
                "destination": {"header": ":path", "regex": "/service/(.*)", "subgroup": 1},
                "foo.bar": {"header": "x-h", "regex": "(.*)", "subgroup": 1},
            },
            "headers": {
                "x-destination": {"text": "{{ destination }}"},
                "x-nested": {"text": '{{ foo.bar }}/{{ extraction("foo.bar") }}'},
            },
        }
    )
    assert not t.needs_body  # bare names are the extractors, not the body
    msg = Msg([(":path", "/service/a.test:80"), ("x-h", "v")])
    t.run(msg, b"", None)
    assert msg.get("x-destination") == "a.test:80"
    assert msg.get("x-nested") == "v/v"


# ---------------------------------------------------------------------------- bodies
def test_json_body_parse_and_errors() -> None:
    t = compiled({"headers": {"x-name": {"text": "{{ user.name }}"}}})
    assert t.needs_body and t.needs_json
    msg = Msg([])
    t.run(msg, b'{"user": {"name": "ann"}}', None)
    assert msg.get("x-name") == "ann"
    with pytest.raises(BodyParseError, match="body is not valid JSON"):
        t.run(Msg([]), b"{nope", None)
    # inja strings are double-quoted only: a single quote is a config error.
    errs = errors_of({"headers": {"x": {"text": "{{ default(user, 'none') }}"}}})
    assert errs == [("headers.x.text", 'unexpected "\'" (at 1:18)')]


def test_ignore_error_on_parse_leaves_context_null() -> None:
    t = compiled(
        {
            "ignoreErrorOnParse": True,
            "body": {"text": "{% if context() %}json{% else %}raw={{ body() }}{% endif %}"},
        }
    )
    assert t.run(Msg([]), b"{nope", None) == b"raw={nope"
    assert t.run(Msg([]), b'{"a":1}', None) == b"json"


def test_empty_body_is_not_parsed() -> None:
    t = compiled({"body": {"text": "[{{ context() }}]"}})
    assert t.run(Msg([]), b"", None) == b"[]"


def test_merge_extractors_to_body_nests_dotted_names() -> None:
    t = compiled(
        {
            "extractors": {
                "user.id": {"header": "x-user", "regex": "u-([0-9]+)", "subgroup": 1},
                "top": {"header": "x-top", "regex": ".*"},
            },
            "mergeExtractorsToBody": {},
        }
    )
    out = t.run(Msg([("x-user", "u-7"), ("x-top", "T")]), b'{"keep": [1]}', None)
    assert out == b'{"keep":[1],"top":"T","user":{"id":"7"}}'
    assert t.run(Msg([]), b"", None) == b'{"top":"","user":{"id":""}}'
    with pytest.raises(RenderError, match="not an object"):
        t.run(Msg([]), b"[1, 2]", None)


def test_body_extractor_and_dont_parse() -> None:
    t = compiled(
        {
            "parseBodyBehavior": "DontParse",
            "extractors": {
                "id": {"body": {}, "regex": r"[\s\S]*id: ([0-9]{4})[\s\S]*", "subgroup": 1}
            },
            "headers": {"x-id": {"text": "{{ id }}"}},
        }
    )
    assert t.needs_body and not t.needs_json
    msg = Msg([])
    assert t.run(msg, b"hello\nid: 4423\nbye", None) is None
    assert msg.get("x-id") == "4423"


def test_passthrough_never_needs_the_body() -> None:
    t = compiled({"passthrough": {}, "headers": {"x": {"text": "{{ body() }}|"}}})
    assert not t.needs_body
    msg = Msg([])
    t.run(msg, b"", None)
    assert msg.get("x") == "|"


def test_headers_see_the_original_body() -> None:
    t = compiled(
        {
            "parseBodyBehavior": "DontParse",
            "body": {"text": "new"},
            "headers": {"x-old": {"text": "{{ body() }}"}},
        }
    )
    msg = Msg([])
    assert t.run(msg, b"old", None) == b"new"
    assert msg.get("x-old") == "old"


def test_dynamic_metadata_goes_to_the_state_dict() -> None:
    t = compiled(
        {
            "parseBodyBehavior": "DontParse",
            "dynamicMetadataValues": [
                {"key": "tenant", "value": {"text": '{{ header("x-t") }}'}},
                {
                    "metadataNamespace": "ns",
                    "key": "n",
                    "value": {"text": "[1]"},
                    "jsonToProto": True,
                },
                {"key": "empty", "value": {"text": ""}},
            ],
        }
    )
    state: dict[str, object] = {}
    t.run(Msg([("x-t", "t1")]), b"", state)
    assert state == {
        "dynamic_metadata": {"io.solo.transformation": {"tenant": "t1"}, "ns": {"n": [1]}}
    }


def test_escape_characters_applies_to_the_body_template() -> None:
    t = compiled(
        {
            "parseBodyBehavior": "DontParse",
            "extractors": {"v": {"header": "x", "regex": ".*"}},
            "body": {"text": '{"v": "{{ v }}"}'},
        },
        escape=True,
    )
    out = t.run(Msg([("x", 'a"b')]), b"", None)
    assert out is not None
    assert json.loads(out) == {"v": 'a"b'}


# ---------------------------------------------------------------------------- config errors
def test_compile_errors_carry_their_subpath() -> None:
    errs = errors_of(
        {
            "headers": {"x-foo": {"text": "{{ nope() }}"}},
            "headersToAppend": [{"key": "x-a", "value": {"text": "{% if %}"}}],
            "body": {"text": "{{"},
            "extractors": {"e": {"header": "h", "regex": "(", "subgroup": 0}},
            "dynamicMetadataValues": [{"key": "k", "value": {"text": "{{ 1 +"}}],
        }
    )
    paths = [p for p, _ in errs]
    assert paths == [
        "extractors.e.regex",
        "headers.x-foo.text",
        "headersToAppend[0].value.text",
        "body.text",
        "dynamicMetadataValues[0].value.text",
    ]
    assert "unknown function nope (at 1:4)" in errs[1][1]
