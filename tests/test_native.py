"""The compiled hot path is used only when it matches the sources (dfproxy/_native.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfproxy import _native

PROBE = (
    "import json, dfproxy._native as n, dfproxy.stream as s, dfproxy.http.headers as h;"
    "print(json.dumps([n.active, n.reason, s.__file__, h.__file__]))"
)


def probe(root: Path, **env: str) -> tuple[bool, str, str, str]:
    run_env = {k: v for k, v in os.environ.items() if k != "DFPROXY_PURE"}
    run_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=root, env=run_env, capture_output=True, check=True
    )
    active, reason, stream_file, headers_file = json.loads(out.stdout)
    return active, reason, stream_file, headers_file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package with its build, to change behind the build's back."""
    if not _native.check()[0]:
        pytest.skip("needs the compiled hot path built from these sources")
    shutil.copytree(
        _native.PACKAGE_DIR, tmp_path / "dfproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_pure_mode_loads_every_module_from_source() -> None:
    active, reason, stream_file, headers_file = probe(_native.ROOT, DFPROXY_PURE="1")
    assert not active and reason == "DFPROXY_PURE is set"
    assert stream_file.endswith("stream.py") and headers_file.endswith("headers.py")


def test_built_tree_uses_the_compiled_modules(tree: Path) -> None:
    active, reason, stream_file, _ = probe(tree)
    assert active, reason
    assert stream_file.endswith(".so")


def test_a_changed_source_switches_the_whole_group_to_source(tree: Path) -> None:
    source = tree / "dfproxy" / "http" / "headers.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    active, reason, stream_file, headers_file = probe(tree)
    assert not active
    assert reason == "dfproxy/http/headers.py changed since the build"
    # Not only the edited module: compiled and interpreted copies of a class never mix.
    assert stream_file.endswith("stream.py") and headers_file.endswith("headers.py")


def test_an_extension_left_by_an_older_build_is_not_imported(tree: Path) -> None:
    stray = next((tree / "dfproxy").glob("stream.*.so")).name.replace("stream.", "router.", 1)
    (tree / "dfproxy" / stray).write_bytes(b"not a real extension")
    active, reason, _, _ = probe(tree)
    assert not active and reason == f"dfproxy/{stray} is not in the compiled list"
    # ... and importing router still works, from router.py
    subprocess.run([sys.executable, "-c", "import dfproxy.router"], cwd=tree, check=True)


def test_no_manifest_means_interpreted(tree: Path) -> None:
    (tree / "dfproxy" / "_native.json").unlink()
    active, reason, stream_file, _ = probe(tree)
    assert not active and reason.startswith("not built")
    assert stream_file.endswith("stream.py")
