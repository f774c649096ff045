"""Gloo's inja templates, compiled once at config load into Python closures.

Gloo renders ``transformationTemplate`` texts with inja 3.4 plus its own functions
(envoy-gloo ``inja_transformer.cc``). What is understood here, exactly as inja does it:

* text with ``{{ expression }}``, ``{% if e %}`` / ``{% else if e %}`` / ``{% else %}`` /
  ``{% endif %}`` and ``{# comments #}``; a ``-`` just inside a delimiter (``{{-``, ``-%}``)
  trims the whitespace on that side;
* expressions: ``"strings"`` (JSON escapes), numbers, ``true``/``false``/``null``,
  ``[a, b]``, variables, calls ``f(a, b)``, ``== != < <= > >= in``, ``and or not``, ``( )``;
* variables name JSON paths in the template's data (the parsed body, with extractor values
  merged in): ``a.b`` (dot notation) or, with ``advancedTemplates``, the JSON pointer
  ``a/b``; a missing variable is a render error ("variable 'a.b' not found");
* truthiness is inja's: false, null, 0 and empty arrays/objects are false; every string,
  even "", is true;
* printing: a string as is (JSON-escaped without quotes when ``escapeCharacters``), null as
  nothing, anything else as compact JSON with sorted keys (nlohmann ``dump()``).

Functions: Gloo's ``header``, ``request_header``, ``extraction``, ``body``, ``context``,
``env``, ``base64_encode``, ``base64_decode``, ``substring``, ``replace_with_random``,
``raw_string``, and inja's ``length``, ``lower``, ``upper``, ``default``, ``exists``,
``existsIn``, ``at``, ``first``, ``last``, ``int``, ``float``, ``join``. An unknown
function, a wrong argument count or a syntax error is a TemplateError at config load,
with its line and column; render errors (RenderError) become a 400 for the request.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable

from dfproxy.transformation.functions import PURE, SCOPED, text_arg
from dfproxy.transformation.values import (
    RenderError,
    Value,
    contains,
    dump,
    equal,
    less,
    lookup,
    to_text,
    truthy,
)

__all__ = ["Compiler", "RenderError", "Scope", "Template", "TemplateError", "dump", "to_text"]


class TemplateError(ValueError):
    """A template that cannot be compiled; the message ends with "(at line:col)"."""


class Scope:
    """What one rendering sees. The transformation fills it per request or response."""

    __slots__ = ("data", "header", "request_header", "extractions", "body", "json_body", "randoms")

    def __init__(
        self,
        header: Callable[[str], str],
        request_header: Callable[[str], str],
        body: Callable[[], str],
        data: dict[str, Value] | None = None,
        json_body: Value = None,
        extractions: dict[str, str] | None = None,
    ) -> None:
        self.header = header
        self.request_header = request_header
        self.body = body
        self.data = data if data is not None else {}
        self.json_body = json_body
        self.extractions = extractions if extractions is not None else {}
        self.randoms: dict[str, str] | None = None


Expr = Callable[[Scope], Value]
Part = Callable[[Scope], str]


def _where(src: str, pos: int) -> str:
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return f"{line}:{col}"


def _random_for(scope: Scope, pattern: str) -> str:
    # 128 random bits, base64 without padding; the same for every use of one pattern while
    # one transformation renders.
    randoms = scope.randoms
    if randoms is None:
        randoms = scope.randoms = {}
    value = randoms.get(pattern)
    if value is None:
        value = randoms[pattern] = base64.b64encode(os.urandom(16)).decode().rstrip("=")
    return value


_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\\n]|\\.)*")
    |(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<id>[A-Za-z_@][A-Za-z0-9_.\-/@]*)
    |(?P<op>==|!=|<=|>=|[<>(),\[\]])""",
    re.X,
)
_OPEN = re.compile(r"\{\{|\{%|\{#")
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


class _Lexer:
    """Tokens of one ``{{ }}`` or ``{% %}`` tag: (kind, text, offset)."""

    @staticmethod
    def tag(
        src: str, pos: int, close: str, opened_at: int
    ) -> tuple[list[tuple[str, str, int]], int, bool]:
        tokens: list[tuple[str, str, int]] = []
        n = len(src)
        while True:
            while pos < n and src[pos] in " \t\r\n":
                pos += 1
            if pos >= n:
                opener = src[opened_at : opened_at + 2]
                raise TemplateError(f"unclosed '{opener}' (at {_where(src, opened_at)})")
            if src.startswith("-" + close, pos):
                return tokens, pos + 1 + len(close), True
            if src.startswith(close, pos):
                return tokens, pos + len(close), False
            m = _TOKEN.match(src, pos)
            if m is None:
                what = "unterminated string" if src[pos] == '"' else f"unexpected {src[pos]!r}"
                raise TemplateError(f"{what} (at {_where(src, pos)})")
            kind = m.lastgroup or "op"
            text = m.group()
            if kind == "id" and text in _KEYWORDS:
                kind = "kw"
            tokens.append((kind, text, pos))
            pos = m.end()


class _Parser:
    """Recursive descent over one tag's tokens, building closures."""

    def __init__(self, src: str, tokens: list[tuple[str, str, int]], t: Compiler) -> None:
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.t = t

    def error(self, message: str, pos: int | None = None) -> TemplateError:
        if pos is None:
            pos = (
                self.tokens[self.i][2]
                if self.i < len(self.tokens)
                else (self.tokens[-1][2] + len(self.tokens[-1][1]) if self.tokens else 0)
            )
        return TemplateError(f"{message} (at {_where(self.src, pos)})")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[1] == text and tok[0] in ("op", "kw"):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.take(text):
            tok = self.peek()
            found = repr(tok[1]) if tok else "the end of the tag"
            raise self.error(f"expected {text!r}, found {found}")

    def whole(self) -> Expr:
        if not self.tokens:
            raise self.error("empty expression")
        e = self.expr()
        if self.i < len(self.tokens):
            raise self.error(f"unexpected {self.tokens[self.i][1]!r}")
        return e

    def expr(self) -> Expr:
        left = self.conj()
        while self.take("or"):
            a, b = left, self.conj()
            left = _or(a, b)
        return left

    def conj(self) -> Expr:
        left = self.neg()
        while self.take("and"):
            a, b = left, self.neg()
            left = _and(a, b)
        return left

    def neg(self) -> Expr:
        if self.take("not"):
            a = self.neg()
            return lambda s: not truthy(a(s))
        return self.comparison()

    def comparison(self) -> Expr:
        a = self.primary()
        tok = self.peek()
        if tok is None or tok[1] not in ("==", "!=", "<", "<=", ">", ">=", "in"):
            return a
        self.i += 1
        b = self.primary()
        op = tok[1]
        if op == "==":
            return lambda s: equal(a(s), b(s))
        if op == "!=":
            return lambda s: not equal(a(s), b(s))
        if op == "<":
            return lambda s: less(a(s), b(s))
        if op == ">":
            return lambda s: less(b(s), a(s))
        if op == "<=":
            return lambda s: not less(b(s), a(s))
        if op == ">=":
            return lambda s: not less(a(s), b(s))
        return lambda s: contains(b(s), a(s))

    def primary(self) -> Expr:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a value")
        kind, text, pos = tok
        self.i += 1
        if kind == "str":
            try:
                value: Value = json.loads(text)
            except ValueError:
                raise self.error("invalid string literal", pos) from None
            return lambda s: value
        if kind == "num":
            num = float(text) if any(c in text for c in ".eE") else int(text)
            return lambda s: num
        if kind == "kw":
            if text in ("true", "false", "null"):
                const = {"true": True, "false": False, "null": None}[text]
                return lambda s: const
            raise self.error(f"unexpected {text!r}", pos)
        if text == "(":
            e = self.expr()
            self.expect(")")
            return e
        if text == "[":
            items: list[Expr] = []
            if not self.take("]"):
                items.append(self.expr())
                while self.take(","):
                    items.append(self.expr())
                self.expect("]")
            return lambda s: [e(s) for e in items]
        if kind == "id":
            if self.take("("):
                args: list[tuple[Expr, tuple[str, str, int] | None]] = []
                if not self.take(")"):
                    while True:
                        first = self.peek()
                        start = self.i
                        arg = self.expr()
                        literal = (
                            first if self.i == start + 1 and first and first[0] == "str" else None
                        )
                        args.append((arg, literal))
                        if self.take(")"):
                            break
                        self.expect(",")
                return self.t.call(text, args, pos, self)
            return self.t.variable(text, pos)
        raise self.error(f"unexpected {text!r}", pos)


def _or(a: Expr, b: Expr) -> Expr:
    return lambda s: truthy(a(s)) or truthy(b(s))


def _and(a: Expr, b: Expr) -> Expr:
    return lambda s: truthy(a(s)) and truthy(b(s))


def _const(text: str) -> Part:
    return lambda s: text


class Compiler:
    """Compiles the templates of one transformation (they share its notation and env)."""

    def __init__(
        self, advanced: bool = False, escape: bool = False, env: dict[str, str] | None = None
    ):
        self.advanced = advanced
        self.escape = escape
        self.env = dict(os.environ) if env is None else env
        # What the compiled templates read, so the transformation knows whether it needs the
        # request body: root names of variables, and the functions called.
        self.variables: set[str] = set()
        self.functions: set[str] = set()
        self.src = ""

    def _split(self, name: str) -> list[str]:
        if self.advanced:
            return [p for p in name.split("/") if p != ""]
        return [p for p in re.split(r"[./]", name) if p != ""]

    def variable(self, name: str, pos: int) -> Expr:
        parts = self._split(name)
        if not parts:
            raise TemplateError(f"invalid variable name {name!r} (at {_where(self.src, pos)})")
        self.variables.add(parts[0])
        where = _where(self.src, pos)
        if len(parts) == 1:
            key = parts[0]

            def one(s: Scope) -> Value:
                data = s.data
                if key in data:
                    return data[key]
                raise RenderError(f"variable '{name}' not found (at {where})")

            return one

        def path(s: Scope) -> Value:
            found, value = lookup(s.data, parts)
            if not found:
                raise RenderError(f"variable '{name}' not found (at {where})")
            return value

        return path

    def call(
        self,
        name: str,
        args: list[tuple[Expr, tuple[str, str, int] | None]],
        pos: int,
        parser: _Parser,
    ) -> Expr:
        arity = SCOPED.get(name) or (PURE[name][:2] if name in PURE else None)
        if arity is None:
            raise parser.error(f"unknown function {name}", pos)
        lo, hi = arity
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            noun = "argument" if want == "1" else "arguments"
            raise parser.error(f"function {name} takes {want} {noun}, got {len(args)}", pos)
        self.functions.add(name)
        exprs = [a for a, _ in args]
        literal = json.loads(args[0][1][1]) if args and args[0][1] is not None else None
        if name in PURE:
            fn = PURE[name][2]
            if len(exprs) == 1:
                a0 = exprs[0]
                return lambda s: fn(a0(s))
            return lambda s: fn(*[e(s) for e in exprs])
        if name in ("header", "request_header"):
            if literal is not None:
                lname = literal.lower()
                if name == "header":
                    return lambda s: s.header(lname)
                return lambda s: s.request_header(lname)
            a0 = exprs[0]
            attr = name
            return lambda s: getattr(s, attr)(text_arg(name, a0(s)).lower())
        if name == "extraction":
            if literal is not None:
                key = literal
                return lambda s: s.extractions.get(key, "")
            a0 = exprs[0]
            return lambda s: s.extractions.get(text_arg(name, a0(s)), "")
        if name == "env":
            env = self.env
            if literal is not None:
                value = env.get(literal, "")
                return lambda s: value
            a0 = exprs[0]
            return lambda s: env.get(text_arg(name, a0(s)), "")
        if name == "body":
            return lambda s: s.body()
        if name == "context":
            return lambda s: s.json_body
        if name == "replace_with_random":
            a0, a1 = exprs
            return lambda s: _replace_random(s, a0(s), a1(s))
        if name == "exists":
            a0 = exprs[0]
            return lambda s: lookup(s.data, self._split(text_arg(name, a0(s))))[0]
        # default(value, fallback): the fallback when the value is a missing variable.
        a0, a1 = exprs

        def default(s: Scope) -> Value:
            try:
                return a0(s)
            except RenderError:
                return a1(s)

        return default

    def compile(self, src: str) -> Template:
        """Compile one template text. Raises TemplateError."""
        self.src = src
        # Blocks being built: (parts, kind, branches) where branches collects if/else.
        root: list[Part] = []
        stack: list[tuple[list[Part], list[tuple[Expr | None, list[Part]]], int]] = []
        parts = root
        pos = 0
        trim_next = False
        while True:
            m = _OPEN.search(src, pos)
            text = src[pos : m.start() if m else len(src)]
            if trim_next:
                text = text.lstrip()
            if m is not None and src.startswith("-", m.end()):
                text = text.rstrip()
            if text:
                parts.append(_const(text))
            if m is None:
                break
            opened = m.start()
            start = m.end() + (1 if src.startswith("-", m.end()) else 0)
            kind = m.group()
            if kind == "{#":
                end = src.find("#}", start)
                if end < 0:
                    raise TemplateError(f"unclosed comment (at {_where(src, opened)})")
                trim_next = end > start and src[end - 1] == "-"
                pos = end + 2
                continue
            tokens, pos, trim_next = _Lexer.tag(src, start, "}}" if kind == "{{" else "%}", opened)
            if kind == "{{":
                e = _Parser(src, tokens, self).whole()
                parts.append(self._output(e))
                continue
            if not tokens:
                raise TemplateError(f"empty statement (at {_where(src, opened)})")
            word = tokens[0][1]
            if word == "if":
                branches: list[tuple[Expr | None, list[Part]]] = []
                cond = _Parser(src, tokens[1:], self).whole()
                block: list[Part] = []
                branches.append((cond, block))
                stack.append((parts, branches, opened))
                parts = block
            elif word == "else":
                if not stack:
                    raise TemplateError(f"else without if (at {_where(src, opened)})")
                branches = stack[-1][1]
                if branches[-1][0] is None:
                    raise TemplateError(f"else after else (at {_where(src, opened)})")
                block = []
                if len(tokens) > 1:
                    if tokens[1][1] != "if":
                        raise TemplateError(
                            f"expected 'if' or the end of the tag after else "
                            f"(at {_where(src, tokens[1][2])})"
                        )
                    branches.append((_Parser(src, tokens[2:], self).whole(), block))
                else:
                    branches.append((None, block))
                parts = block
            elif word == "endif":
                if not stack or len(tokens) > 1:
                    raise TemplateError(f"endif without if (at {_where(src, opened)})")
                outer, branches, _ = stack.pop()
                outer.append(_if_part(branches))
                parts = outer
            else:
                raise TemplateError(
                    f"unknown statement {word!r}: dfproxy supports if, else if, else, endif "
                    f"(at {_where(src, tokens[0][2])})"
                )
        if stack:
            raise TemplateError(f"unmatched if: missing endif (at {_where(src, stack[-1][2])})")
        return Template(src, root)

    def _output(self, e: Expr) -> Part:
        escape = self.escape

        def out(s: Scope) -> str:
            v = e(s)
            if v.__class__ is str and not escape:
                return v
            return to_text(v, escape)

        return out


def _replace_random(s: Scope, source: Value, pattern: Value) -> str:
    text = text_arg("replace_with_random", source)
    pat = text_arg("replace_with_random", pattern)
    if not pat:
        return text
    return text.replace(pat, _random_for(s, pat))


def _if_part(branches: list[tuple[Expr | None, list[Part]]]) -> Part:
    compiled = [(cond, _join_parts(block)) for cond, block in branches]

    def choose(s: Scope) -> str:
        for cond, render in compiled:
            if cond is None or truthy(cond(s)):
                return render(s)
        return ""

    return choose


def _join_parts(parts: list[Part]) -> Part:
    if not parts:
        return lambda s: ""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        # The common "{{ header(...) }}.suffix": one concatenation, no list (0.2 µs).
        a, b = parts
        return lambda s: a(s) + b(s)
    frozen = tuple(parts)
    return lambda s: "".join([p(s) for p in frozen])


class Template:
    """A compiled template: ``render(scope)`` returns the text (raises RenderError)."""

    __slots__ = ("source", "render", "constant")

    def __init__(self, source: str, parts: list[Part]) -> None:
        self.source = source
        self.render: Part = _join_parts(parts)
        # The text when the template has no tag at all (rendered without a scope).
        self.constant: str | None = source if _OPEN.search(source) is None else None
