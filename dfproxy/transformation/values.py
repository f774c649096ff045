"""JSON values as inja sees them (nlohmann::json): printing, truthiness, comparison, paths.

Templates work on Python's JSON values (str, int, float, bool, None, list, dict); these
functions give them nlohmann's semantics where Python's differ (``True == 1``, ordering
across types, printing).
"""

from __future__ import annotations

import json
from typing import Any

Value = Any  # a JSON value: str, int, float, bool, None, list, dict


class RenderError(Exception):
    """A template that cannot be rendered for this request (answered 400 "bad request")."""


def dump(value: Value) -> str:
    """nlohmann ``dump()``: compact, keys sorted (its objects are std::map), UTF-8 kept."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def to_text(value: Value, escape: bool = False) -> str:
    """How inja prints a value (renderer ``print_data``)."""
    if value.__class__ is str:
        return json.dumps(value, ensure_ascii=False)[1:-1] if escape else value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value.__class__ is int:
        return str(value)
    return dump(value)


def truthy(value: Value) -> bool:
    """inja ``truthy``: json::empty() is false for every string, so "" is true."""
    if value is True or value is False:
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if value is None:
        return False
    if isinstance(value, list | dict):
        return bool(value)
    return True


def _is_num(v: Value) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def equal(a: Value, b: Value) -> bool:
    """nlohmann ``==``: numbers compare by value, other types only with their own type."""
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    return bool(a == b)


# nlohmann's order between types: null < boolean < number < object < array < string.
def _rank(v: Value) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        return 1
    if _is_num(v):
        return 2
    if isinstance(v, dict):
        return 3
    if isinstance(v, list):
        return 4
    return 5


def less(a: Value, b: Value) -> bool:
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return ra < rb
    if ra in (1, 2, 5):
        return bool(a < b)
    return False


def contains(container: Value, item: Value) -> bool:
    if isinstance(container, list):
        return any(equal(x, item) for x in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    return False


def lookup(data: Value, parts: list[str]) -> tuple[bool, Value]:
    cur = data
    for p in parts:
        if isinstance(cur, dict):
            if p not in cur:
                return False, None
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            return False, None
    return True, cur
