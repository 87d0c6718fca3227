"""The provenance manifest of a build: what went in, and the sha256 of every file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

NAME = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
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


def verify(root: Path, data: dict[str, Any]) -> list[str]:
    """Files whose checksum differs from the manifest (or that are missing or extra)."""
    want: dict[str, str] = data.get("files", {})
    have = file_sums(root)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
