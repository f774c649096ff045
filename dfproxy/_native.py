"""The hot path compiled to C with mypyc, and the guarantee that stale C never runs.

The modules in ``COMPILED`` are ordinary, fully typed Python. ``python -m dfproxy._build_native``
(run by ``make run``, ``make test`` and ``make bench``) compiles them in place with
mypyc, the compiler mypy ships and black and mypy themselves are built with; the resulting
extension modules sit beside their sources and Python imports them first. The build writes
``_native.json``: the SHA-256 of every compiled source.

At import of the package, ``select()`` compares that record with the sources on disk. When a
source changed since the build (or ``DFPROXY_PURE=1`` is set, or nothing was built), every
module of the list is loaded from its ``.py`` instead: the compiled group is used whole or not
at all, so compiled and interpreted copies of one class never meet. The interpreted path is the
same code and is tested (``make test`` runs a pass with ``DFPROXY_PURE=1``).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
MANIFEST = PACKAGE_DIR / "_native.json"

# Everything a proxied request runs through (measured with bench/hotpath.py and py-spy).
COMPILED = (
    "dfproxy.access_log",
    "dfproxy.cluster",
    "dfproxy.downstream",
    "dfproxy.dns.cache",
    "dfproxy.filters.dynamic_forward_proxy",
    "dfproxy.flow_control",
    "dfproxy.http.authority",
    "dfproxy.http.headers",
    "dfproxy.listener",
    "dfproxy.stats",
    "dfproxy.stream",
    "dfproxy.upstream.circuit_breaker",
    "dfproxy.upstream.connection",
    "dfproxy.upstream.pool",
)

# mypyc's shared library for the group: dfproxy/_hotpath__mypyc.<abi>.so, in the package.
GROUP = "dfproxy._hotpath"
SHARED_LIB = "_hotpath__mypyc"

# Set by select(): whether the compiled modules are in use, and if not, why.
active = False
reason = "not selected yet"


def source_path(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def source_hashes() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in COMPILED}


def built_hashes() -> dict[str, str] | None:
    """The source hashes the last build recorded, or None (no build, or a broken record)."""
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    hashes = data.get("sources") if isinstance(data, dict) else None
    return hashes if isinstance(hashes, dict) else None


def extensions() -> list[Path]:
    """Every extension module in the package (all of them are a build's)."""
    found = {
        p
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for p in PACKAGE_DIR.rglob("*" + suffix)
    }
    return sorted(found)


def build_problem() -> str | None:
    """Why the compiled modules on disk are not a build of these sources, or None."""
    built = built_hashes()
    if built is None:
        return "not built (python -m dfproxy._build_native)"
    # foo.cpython-311-x86_64-linux-gnu.so -> foo, beside foo.py
    present = {p.with_name(p.name.split(".", 1)[0]): p for p in extensions()}
    expected = {source_path(m).with_suffix(""): m for m in COMPILED}
    missing = [m for base, m in expected.items() if base not in present]
    if missing:
        return f"no compiled module for {missing[0]}"
    stray = [p for b, p in present.items() if b not in expected and b.name != SHARED_LIB]
    if stray:
        return f"{stray[0].relative_to(ROOT)} is not in the compiled list"
    current = source_hashes()
    stale = [m for m in COMPILED if built.get(m) != current[m]]
    if stale:
        return f"{source_path(stale[0]).relative_to(ROOT)} changed since the build"
    return None


def check() -> tuple[bool, str]:
    """(whether the compiled modules may be used, why)."""
    if os.environ.get("DFPROXY_PURE", "") not in ("", "0"):
        return False, "DFPROXY_PURE is set"
    problem = build_problem()
    return (False, problem) if problem else (True, "compiled with mypyc")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads every module of the package from its ``.py`` file even where an extension exists."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("dfproxy."):
            return None
        source = source_path(fullname)
        if not source.is_file():
            return None  # a package (its __init__.py is never compiled) or no such module
        return importlib.util.spec_from_file_location(fullname, source)


def select() -> None:
    """Decide once, before any listed module is imported."""
    global active, reason
    active, reason = check()
    if not active and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())
