"""The inja template compiler (dfproxy/transformation/template.py): every function and syntax
form Gloo templates use, inja's printing and truthiness, and errors with their positions."""

from __future__ import annotations

import base64
import re

import pytest

from dfproxy.transformation.template import Compiler, RenderError, Scope, TemplateError

HEADERS = {"x-tenant": "tenant-1", ":status": "404", "x-empty": ""}
REQUEST = {"x-req": "from-request"}
DATA = {
    "a": {"b": [1, 2, {"c": "d"}]},
    "user": {"name": "ann", "age": 7, "admin": False, "tags": []},
    "n": 0,
    "f": 1.5,
    "nothing": None,
    "dest": "extracted",
}


def scope(body: str = '{"k": 1}', **kw: object) -> Scope:
    s = Scope(
        header=lambda n: HEADERS.get(n, ""),
        request_header=lambda n: REQUEST.get(n, ""),
        body=lambda: body,
        data=dict(DATA),
        json_body={"k": 1},
        extractions={"ex": "E"},
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def render(text: str, advanced: bool = False, escape: bool = False, **kw: object) -> str:
    c = Compiler(advanced=advanced, escape=escape, env={"REGION": "eu-1"})
    return c.compile(text).render(scope(**kw))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # The blog seed's template.
        ('{{ header("x-tenant") }}.mypaas.io', "tenant-1.mypaas.io"),
        ('{{ header("X-Tenant") }}', "tenant-1"),  # names are case-insensitive
        ('{{ header("absent") }}|', "|"),
        ('{{ request_header("x-req") }}', "from-request"),
        ('{{ extraction("ex") }}{{ extraction("none") }}', "E"),
        ("{{ dest }}", "extracted"),  # extractor values by bare name
        ('{{ env("REGION") }}{{ env("UNSET_VAR") }}', "eu-1"),
        ("{{ body() }}", '{"k": 1}'),
        ("{{ context() }}", '{"k":1}'),
        ("{{ a.b.2.c }} {{ user.name }}", "d ann"),
        ("{{ a }}", '{"b":[1,2,{"c":"d"}]}'),  # compact JSON, as nlohmann dump()
        ("{{ user }}", '{"admin":false,"age":7,"name":"ann","tags":[]}'),  # keys sorted
        ("{{ nothing }}|{{ n }}|{{ f }}|{{ user.admin }}", "|0|1.5|false"),
        ('{{ base64_encode("user:pass") }}', base64.b64encode(b"user:pass").decode()),
        ('{{ base64_decode("dXNlcjpwYXNz") }}', "user:pass"),
        ('{{ base64_decode("not base64!") }}|', "|"),  # Envoy: invalid gives ""
        ('{{ substring("hello", 1, 3) }}', "ell"),
        ('{{ substring("hello", 1) }}', "ello"),
        ('{{ substring("hello", 1, 0) }}', "ello"),  # len <= 0: to the end
        ('{{ substring("hello", 3, 10) }}', "lo"),  # past the end: to the end
        ('{{ substring("hello", 5) }}|{{ substring("hello", -1) }}|', "||"),
        ('{{ substring("hello", "1") }}|', "|"),  # a non-integer position gives ""
        ('{{ raw_string("say \\"hi\\"\\n") }}', 'say \\"hi\\"\\n'),
        ('{{ upper("a") }}{{ lower("B") }}{{ length("abc") }}{{ length(a.b) }}', "Ab33"),
        ('{{ default(missing.var, "fallback") }} {{ default(dest, "x") }}', "fallback extracted"),
        ('{{ exists("user.name") }} {{ exists("user.nope") }}', "true false"),
        ('{{ existsIn(user, "age") }} {{ at(a.b, 1) }} {{ first(a.b) }}', "true 2 1"),
        ('{{ join(["x", "y"], "-") }} {{ int("42") }} {{ float(2) }}', "x-y 42 2.0"),
        # Comments and whitespace control.
        ("a{# a comment #}b", "ab"),
        ("a  {{- dest -}}  b", "aextractedb"),
        ("a  {%- if true -%}  x  {%- endif -%}  b", "axb"),
    ],
)
def test_functions_and_values(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{% if header(":status") == "404" %}missing{% else %}{{ body() }}{% endif %}', "missing"),
        ('{% if header(":status") != "404" %}x{% else if dest == "extracted" %}y{% endif %}', "y"),
        ("{% if false %}a{% else if false %}b{% else %}c{% endif %}", "c"),
        ("{% if user.age == 7 and not user.admin %}ok{% endif %}", "ok"),
        ("{% if n or user.admin %}yes{% else %}no{% endif %}", "no"),
        ("{% if (n or true) and 1 == 1.0 %}yes{% endif %}", "yes"),
        ('{% if 1 == "1" %}same{% else %}types differ{% endif %}', "types differ"),
        ("{% if user.age > 5 %}gt{% endif %}{% if user.age <= 7 %}le{% endif %}", "gtle"),
        ('{% if "b" in ["a", "b"] %}in{% endif %}', "in"),
        # inja truthiness: every string is true, even ""; null, 0, [] and {} are false.
        ('{% if header("x-empty") %}string{% endif %}', "string"),
        ("{% if nothing %}a{% else %}b{% endif %}{% if user.tags %}c{% else %}d{% endif %}", "bd"),
        # Nested blocks.
        (
            "{% if true %}<{% if false %}no{% else %}{{ dest }}{% endif %}>{% endif %}",
            "<extracted>",
        ),
    ],
)
def test_conditionals(template: str, expected: str) -> None:
    assert render(template) == expected


def test_advanced_templates_use_json_pointers() -> None:
    assert render("{{ a/b/2/c }} {{ user/name }}", advanced=True) == "d ann"
    # In pointer notation a dot is part of the key.
    with pytest.raises(RenderError, match="variable 'user.name' not found"):
        render("{{ user.name }}", advanced=True)


def test_escape_characters_json_escapes_printed_strings() -> None:
    s = scope()
    s.data["q"] = 'a "quoted"\nline'
    c = Compiler(escape=True, env={})
    assert c.compile("{{ q }}").render(s) == 'a \\"quoted\\"\\nline'
    assert Compiler(env={}).compile("{{ q }}").render(s) == 'a "quoted"\nline'


def test_replace_with_random_is_stable_within_one_render() -> None:
    t = Compiler(env={}).compile(
        '{{ replace_with_random("id-X", "X") }} {{ replace_with_random("X", "X") }}'
    )
    first, second = t.render(scope()).split()
    assert first.startswith("id-") and first[3:] == second
    assert re.fullmatch(r"[A-Za-z0-9+/]{22}", second)  # 128 bits, base64 without padding
    assert t.render(scope()).split()[1] != second  # a new value for the next request


def test_functions_read_the_scope_lazily() -> None:
    calls: list[str] = []
    s = scope()
    s.body = lambda: calls.append("body") or "B"  # type: ignore[func-returns-value]
    t = Compiler(env={}).compile('{% if false %}{{ body() }}{% endif %}{{ header("x-tenant") }}')
    assert t.render(s) == "tenant-1"
    assert calls == []


def test_compiler_records_what_templates_read() -> None:
    c = Compiler(env={})
    c.compile('{{ header("a") }}{{ user.name }}{% if context() %}{% endif %}')
    assert c.variables == {"user"}
    assert c.functions == {"header", "context"}


def test_render_errors() -> None:
    with pytest.raises(RenderError, match=r"variable 'missing' not found \(at 1:4\)"):
        render("{{ missing }}")
    with pytest.raises(RenderError, match=r"variable 'a.b.9' not found \(at 2:5\)"):
        render("x\nab{{a.b.9}}")
    with pytest.raises(RenderError, match="substring: expected a string"):
        render("{{ substring(n, 1) }}")
    with pytest.raises(RenderError, match="raw_string: expected a string"):
        render("{{ raw_string(n) }}")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ header( }}", "expected a value (at 1:11)"),
        ('{{ nope("x") }}', "unknown function nope (at 1:4)"),
        ("{{ header() }}", "function header takes 1 argument, got 0 (at 1:4)"),
        ('{{ substring("a") }}', "function substring takes 2 to 3 arguments, got 1 (at 1:4)"),
        ("{% if true %}x", "unmatched if: missing endif (at 1:1)"),
        ("x{% endif %}", "endif without if (at 1:2)"),
        ("{% else %}", "else without if (at 1:1)"),
        ("{% if 1 %}{% else %}{% else %}{% endif %}", "else after else (at 1:21)"),
        ("{% for x in y %}{% endfor %}", "unknown statement 'for'"),
        ("a\n  {{ 1 + 2 }}", "unexpected '+' (at 2:8)"),
        ('{{ "open', "unterminated string (at 1:4)"),
        ("x {{ dest", "unclosed '{{' (at 1:3)"),
        ("{# never closed", "unclosed comment (at 1:1)"),
        ("{{ }}", "empty expression"),
        ("{{ a b }}", "unexpected 'b' (at 1:6)"),
        ("{% %}", "empty statement (at 1:1)"),
    ],
)
def test_compile_errors_give_the_position(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Compiler(env={}).compile(template)
    assert message in str(info.value)


def test_template_without_tags_is_constant() -> None:
    t = Compiler(env={}).compile("just text")
    assert t.constant == "just text"
    assert t.render(scope()) == "just text"
    assert Compiler(env={}).compile("{{ dest }}").constant is None
