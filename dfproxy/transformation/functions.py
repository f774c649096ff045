"""The functions Gloo templates call that need nothing but their arguments: Gloo's own
(envoy-gloo ``inja_transformer.cc``: base64, substring, raw_string) and inja's builtins.
Functions that read the request (header, body, ...) are built by the template compiler.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

from dfproxy.transformation.values import RenderError, Value, to_text


def text_arg(name: str, v: Value) -> str:
    if v.__class__ is not str:
        raise RenderError(f"{name}: expected a string argument, got {to_text(v) or 'null'}")
    return v


def encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b64_encode(s: str) -> str:
    return base64.b64encode(encode(s)).decode()


def _b64_decode(s: str) -> str:
    # Envoy Base64::decode: padded input only; anything invalid gives "".
    try:
        return decode(binascii.a2b_base64(encode(s), strict_mode=True))
    except (binascii.Error, ValueError):
        return ""


def _substring(s: Value, start: Value, length: Value = -1) -> str:
    # envoy-gloo substring_callback: non-integer positions give ""; len <= 0 or past the end
    # means "to the end".
    text = text_arg("substring", s)
    if not isinstance(start, int) or isinstance(start, bool):
        return ""
    if not isinstance(length, int) or isinstance(length, bool):
        return ""
    if start < 0 or start >= len(text):
        return ""
    if length <= 0 or start + length > len(text):
        return text[start:]
    return text[start : start + length]


def _raw_string(v: Value) -> str:
    return json.dumps(text_arg("raw_string", v), ensure_ascii=False)[1:-1]


def _length(v: Value) -> int:
    if isinstance(v, str | list | dict):
        return len(v)
    raise RenderError("length: expected a string, array or object")


def _at(obj: Value, key: Value) -> Value:
    try:
        if isinstance(obj, list) and isinstance(key, int) and not isinstance(key, bool):
            return obj[key]
        if isinstance(obj, dict) and isinstance(key, str):
            return obj[key]
    except (IndexError, KeyError):
        pass
    raise RenderError(f"at: no element {to_text(key)}")


def _first_last(index: int) -> Callable[[Value], Value]:
    def pick(v: Value) -> Value:
        if isinstance(v, list) and v:
            return v[index]
        raise RenderError("first/last: expected a non-empty array")

    return pick


def _to_int(v: Value) -> int:
    try:
        return int(v) if not isinstance(v, str) else int(float(v))
    except (TypeError, ValueError):
        raise RenderError(f"int: cannot convert {to_text(v)!r}") from None


def _to_float(v: Value) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise RenderError(f"float: cannot convert {to_text(v)!r}") from None


def _join(v: Value, sep: Value) -> str:
    if not isinstance(v, list):
        raise RenderError("join: expected an array")
    return text_arg("join", sep).join(to_text(x) for x in v)


# name -> (min args, max args, implementation over evaluated arguments). Functions that need
# the scope (header, body, ...) or lazy arguments (default, exists) are built by the Compiler.
PURE: dict[str, tuple[int, int, Callable[..., Value]]] = {
    "base64_encode": (1, 1, lambda s: _b64_encode(text_arg("base64_encode", s))),
    "base64_decode": (1, 1, lambda s: _b64_decode(text_arg("base64_decode", s))),
    "substring": (2, 3, _substring),
    "raw_string": (1, 1, _raw_string),
    "length": (1, 1, _length),
    "lower": (1, 1, lambda s: text_arg("lower", s).lower()),
    "upper": (1, 1, lambda s: text_arg("upper", s).upper()),
    "at": (2, 2, _at),
    "first": (1, 1, _first_last(0)),
    "last": (1, 1, _first_last(-1)),
    "int": (1, 1, _to_int),
    "float": (1, 1, _to_float),
    "join": (2, 2, _join),
    "existsIn": (2, 2, lambda o, k: isinstance(o, dict) and isinstance(k, str) and k in o),
}
SCOPED = {
    "header": (1, 1),
    "request_header": (1, 1),
    "extraction": (1, 1),
    "env": (1, 1),
    "body": (0, 0),
    "context": (0, 0),
    "replace_with_random": (2, 2),
    "default": (2, 2),
    "exists": (1, 1),
}
FUNCTIONS = frozenset(PURE) | frozenset(SCOPED)
