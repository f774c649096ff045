"""Machine facts and installing the tools the benchmark drives (Debian packages, via apt)."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

APT_TIMEOUT_S = 900
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")

# tool -> Debian package(s), first available wins.
PACKAGES: dict[str, tuple[str, ...]] = {
    "wrk": ("wrk",),
    "curl": ("curl",),
    "taskset": ("util-linux",),
    "nginx": ("nginx-light", "nginx"),
    "squid": ("squid",),
    "haproxy": ("haproxy",),
    "redis-server": ("redis-server",),
}


def find_tool(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATH])
    return shutil.which(name, path=path)


def _run_quiet(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _apt_has(package: str) -> bool:
    result = _run_quiet(["apt-cache", "show", package], timeout=60)
    return result.returncode == 0 and "Package:" in result.stdout


def _pick_packages(tools: Iterable[str]) -> list[str]:
    chosen: list[str] = []
    for tool in tools:
        candidates = PACKAGES[tool]
        pick = next((p for p in candidates if _apt_has(p)), candidates[-1])
        chosen.append(pick)
    return chosen


def _apt_install(packages: list[str]) -> str | None:
    """Install `packages` without starting their services; None on success, else why not."""
    made_policy = False
    try:
        if not POLICY_RC_D.exists():
            # Keep the packages' init scripts (squid on :3128, nginx on :80) from starting.
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
            made_policy = True
        update = _run_quiet(["apt-get", "update", "-qq"], APT_TIMEOUT_S)
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-300:]}"
        install = _run_quiet(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            APT_TIMEOUT_S,
        )
        if install.returncode != 0:
            return f"apt-get install failed: {install.stderr.strip()[-300:]}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get not usable: {exc}"
    finally:
        if made_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def ensure_tools(tools: Iterable[str], *, install: bool) -> dict[str, str]:
    """Make sure every tool is on the machine; returns {tool: reason} for those still missing."""
    missing = [t for t in dict.fromkeys(tools) if find_tool(t) is None]
    if not missing:
        return {}
    if not install:
        return {t: "not installed (--no-install)" for t in missing}
    if os.geteuid() != 0 or find_tool("apt-get") is None:
        return {
            t: "not installed, and apt-get is not usable (need root on Debian)" for t in missing
        }
    packages = _pick_packages(missing)
    print(f"installing with apt-get: {' '.join(packages)}", flush=True)
    error = _apt_install(packages)
    still = [t for t in missing if find_tool(t) is None]
    return {t: error or "not found after apt-get install" for t in still}


def raise_nofile(limit: int = 65536) -> None:
    """Raise RLIMIT_NOFILE (inherited by every child) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_hard = max(hard, limit) if os.geteuid() == 0 else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, want_hard), want_hard))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
        except (ValueError, OSError):
            pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(argv: list[str]) -> str:
    """First line of a tool's version output (nginx and wrk print it on stderr)."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (result.stdout + result.stderr).strip()
    if not text:
        return "unknown"
    line = text.splitlines()[0]
    for cut in (" (", " - ", " Copyright", " [epoll]"):
        line = line.split(cut)[0]
    return line.removeprefix("nginx version: ")


def command_line(script: str, argv: Sequence[str]) -> str:
    """How a report names the command that made it: paths inside the repository relative to
    it, so a committed result carries no machine's directory."""
    root = Path(__file__).resolve().parents[2]
    args = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(root):
            arg = str(path.relative_to(root))
        args.append(arg)
    return shlex.join([script, *args])


def machine_info() -> dict[str, object]:
    versions = {
        "nginx": ["nginx", "-v"],
        "squid": ["squid", "-v"],
        "haproxy": ["haproxy", "-v"],
        "wrk": ["wrk", "-v"],
        "curl": ["curl", "--version"],
    }
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "versions": {
            name: tool_version([find_tool(argv[0]) or argv[0], *argv[1:]])
            for name, argv in versions.items()
        },
    }
