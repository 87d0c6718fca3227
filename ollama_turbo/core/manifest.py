"""The provenance manifest of a build: what went in, and the sha256 of every file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

NAME = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(base: Path, parts: Iterable[str]) -> str:
    """A content hash of files and directories under ``base`` (paths and bytes; .git skipped)."""
    h = hashlib.sha256()
    for top in parts:
        start = base / top
        paths = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        for p in paths:
            rel = p.relative_to(base)
            if ".git" in rel.parts:
                continue
            h.update(str(rel).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def file_sums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != NAME}


def write(root: Path, data: dict[str, Any]) -> Path:
    data = dict(data, files=file_sums(root))
    path = root / NAME
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read(root: Path) -> dict[str, Any] | None:
    p = root / NAME
    if not p.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(p.read_text())
        return data
    except ValueError:
        return None


def load(path: Path) -> dict[str, Any]:
    """A manifest given as its file or as the dist directory that holds it."""
    from ollama_turbo.core.errors import UsageError

    p = path / NAME if path.is_dir() else path
    try:
        data: dict[str, Any] = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the build manifest {p}: {exc}",
                         hint="pass a dist directory of invoke build-ollama or its manifest.json") from None
    return data


def verify(root: Path, data: dict[str, Any]) -> list[str]:
    """Files whose checksum differs from the manifest (or that are missing or extra)."""
    want: dict[str, str] = data.get("files", {})
    have = file_sums(root)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


SUMMARY_KEYS = ("version", "era", "ollama", "fork", "backend")


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that reports carry as their build's provenance."""
    return {k: data.get(k) for k in SUMMARY_KEYS}


def tool_path(dist: Path, data: dict[str, Any], name: str) -> Path:
    """Where a build keeps one of its tools (``build_flags.tool_paths``; builds from before it: ``tools/``)."""
    rel = ((data.get("build_flags") or {}).get("tool_paths") or {}).get(name, f"tools/{name}")
    return dist / str(rel)


def tool_env(dist: Path, m: dict[str, Any]) -> dict[str, str]:
    """The environment a build's tools (llama-perplexity, llama-bench) need to run on its GPU backend, as
    Ollama gives llama-server: the module in ``GGML_BACKEND_PATH``, its runtime libraries on the loader path."""
    g = m.get("gpu") or {}
    if not g.get("module"):
        return {}
    lib = str(dist / g["runner_dir"])
    old = os.environ.get("LD_LIBRARY_PATH", "")
    return {"GGML_BACKEND_PATH": str(dist / g["module"]), "LD_LIBRARY_PATH": lib + (":" + old if old else "")}
