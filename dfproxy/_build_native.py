"""Compile the hot path (dfproxy/_native.py's COMPILED) in place with mypyc.

    python -m dfproxy._build_native [--require]   compile unless the build matches the sources
    python -m dfproxy._build_native --status      compiled or interpreted, and why

Without ``--require`` a failed build (no C compiler, no mypyc) is reported and leaves the
interpreted modules in use; ``make test`` requires the build.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dfproxy._native import (
    COMPILED,
    GROUP,
    MANIFEST,
    ROOT,
    build_problem,
    check,
    extensions,
    source_hashes,
    source_path,
)


def build(require: bool) -> int:
    """Compile COMPILED in place unless the manifest matches the sources already."""
    if build_problem() is None:
        print("dfproxy: compiled hot path is up to date")
        return 0
    try:
        from mypyc.build import mypycify
        from setuptools import setup
    except ImportError as exc:
        return _build_failed(f"mypyc or setuptools missing ({exc})", require)
    current = source_hashes()
    MANIFEST.unlink(missing_ok=True)
    for old in extensions():
        old.unlink()  # an earlier build's, possibly of modules no longer in the list
    paths = [str(source_path(m).relative_to(ROOT)) for m in COMPILED]
    print(f"dfproxy: compiling {len(paths)} hot-path modules with mypyc (about a minute)")
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        setup(
            name="dfproxy-native",
            ext_modules=mypycify(paths, opt_level="3", debug_level="0", group_name=GROUP),
            script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/native"],
        )
    except (SystemExit, Exception) as exc:  # setuptools reports failures as SystemExit
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            pass
        else:
            return _build_failed(f"compilation failed: {exc}", require)
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(json.dumps({"sources": current}, indent=1, sort_keys=True) + "\n")
    print("dfproxy: compiled hot path built")
    return 0


def _build_failed(why: str, require: bool) -> int:
    print(f"dfproxy: {why}; the hot path stays interpreted", file=sys.stderr)
    return 1 if require else 0


def main(argv: Sequence[str]) -> int:
    if "--status" in argv:
        ok, why = check()
        print(("compiled: " if ok else "interpreted: ") + why)
        return 0
    return build(require="--require" in argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
