"""A third-party Go module for the sample Ollama trees, served by a file-based module proxy.

Real Ollama needs about 95 modules from a proxy. The sample trees need one, so tests can
prove that a build downloads modules through the user's ``GOPROXY`` and stops early, with a
clear error, when it cannot. The proxy is the module cache's ``cache/download`` layout, which
Go reads through ``GOPROXY=file:///dir``. The go.sum lines are computed here the way Go does
(``h1:`` = base64 of the sha256 of the sorted "sha256  name" lines).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

MODULE = "example.com/turbo-sample/units"
VERSION = "v1.0.0"

GO_MOD = f"module {MODULE}\n\ngo 1.21\n"
UNITS_GO = """// Package units formats byte counts; a third-party module of the sample world.
package units

import "fmt"

// MiB is one mebibyte.
const MiB = 1 << 20

// Bytes formats n as MiB with one decimal.
func Bytes(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/MiB)
}
"""
FILES = {"go.mod": GO_MOD, "units.go": UNITS_GO}


def _hash1(files: dict[str, bytes]) -> str:
    summary = "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def _zip_files() -> dict[str, bytes]:
    return {f"{MODULE}@{VERSION}/{name}": text.encode() for name, text in FILES.items()}


def go_sum() -> str:
    """The go.sum lines a tree requiring the module carries."""
    return (f"{MODULE} {VERSION} {_hash1(_zip_files())}\n"
            f"{MODULE} {VERSION}/go.mod {_hash1({'go.mod': GO_MOD.encode()})}\n")


def require_line() -> str:
    return f"require {MODULE} {VERSION}\n"


def write_proxy(root: Path) -> Path:
    """Write the proxy under ``root`` (idempotent); return it. Use it as ``GOPROXY=file://<root>``."""
    d = root / MODULE / "@v"
    d.mkdir(parents=True, exist_ok=True)
    (d / "list").write_text(VERSION + "\n")
    (d / f"{VERSION}.info").write_text(json.dumps({"Version": VERSION, "Time": "2026-01-01T00:00:00Z"}) + "\n")
    (d / f"{VERSION}.mod").write_text(GO_MOD)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(_zip_files().items()):
            z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    (d / f"{VERSION}.zip").write_bytes(buf.getvalue())
    return root


def url(root: Path) -> str:
    return root.resolve().as_uri()
