"""The provenance manifest of a build: what went in, and the sha256 of every file.

A build writes its :class:`~ollama_turbo.core.build_record.BuildRecord` (:func:`write`); every task that takes
a build reads it through one loader (:func:`load`, or :func:`read` where a missing or broken one only means "no
build here", :func:`parse` for a host's copy) into a :class:`Manifest`: the same record, checked and typed
once, with where it was read; ``data`` keeps the JSON as read for reports and the hosts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core import redact
from ollama_turbo.core.build_record import GPU, BuildRecord, ManifestError, PerModelKV
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import TurboError

NAME = "manifest.json"
SUMMARY_KEYS = ("version", "era", "flavor", "ollama", "fork", "backend")


class DamagedBuild(TurboError):
    """A build whose files differ from its manifest's checksums."""


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


def write(root: Path, record: BuildRecord | Mapping[str, Any]) -> Path:
    """Write ``record`` as the manifest of the build in ``root``, with the checksum of every file there; it
    travels to every host, so no credentials are in it. A record's JSON (a manifest read back, edited) is
    checked as a reader checks it."""
    path = root / NAME
    if not isinstance(record, BuildRecord):
        record = BuildRecord.from_json(record, str(path))
    data = redact.tree(dataclasses.replace(record, files=file_sums(root)).to_json())
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def verify(root: Path, want: Mapping[str, str]) -> list[str]:
    """Files under ``root`` whose checksum differs from ``want`` (or that are missing or extra)."""
    have = file_sums(root)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))




@dataclass(frozen=True)
class Manifest:
    """A build's manifest, read once: its :class:`BuildRecord` and where it was read. ``path`` is its file; the
    dist is the directory holding it."""

    path: Path
    record: BuildRecord
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read, for reports and hosts
    host: str = ""  # where it was read from, when that is a host's release and not a dist here

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def era(self) -> Era:
        return self.record.era

    @property
    def backend(self) -> str:
        return self.record.backend

    @property
    def files(self) -> dict[str, str]:
        return self.record.files

    @property
    def built_at(self) -> str:
        return self.record.built_at

    @property
    def inputs_key(self) -> str:
        return self.record.inputs_key

    @property
    def platform(self) -> dict[str, str]:
        return self.record.platform

    @property
    def gpu(self) -> GPU | None:
        return self.record.gpu

    @property
    def per_model_kv(self) -> PerModelKV:
        return self.record.per_model_kv

    @property
    def cache_types(self) -> dict[str, tuple[int, int]]:
        """name -> (values, bytes) per block."""
        return {n: (c.block, c.bytes) for n, c in self.record.cache_types.items()}

    @property
    def tool_paths(self) -> dict[str, str]:
        return self.record.tool_paths

    @property
    def tools_why(self) -> dict[str, str]:
        """Why a tool is missing, as the build recorded it."""
        return self.record.tools_why

    @property
    def dist(self) -> Path:
        """The build's directory here (a host's copy has none: its files are on the host)."""
        if self.host:
            raise ManifestError(f"{self.path} is the manifest of a release on {self.host}, not a build here",
                                hint="pass --manifest <workspace>/dist/<version> for the build's files")
        return self.path.parent

    @property
    def stock(self) -> bool:
        """Ollama with the llama.cpp it pins, no fork and no rules of ours (``build-ollama --stock``)."""
        return self.record.stock

    @property
    def left_out(self) -> list[str]:
        """What this build leaves out, as its patch records say: "model architecture laguna" for each compat patch
        the user left out (the build does not run such models)."""
        out = []
        for p in self.record.patches:
            if isinstance(p, dict) and p.get("status") == "left-out":
                out.append(str(p.get("feature") or p.get("patch")))
        return list(dict.fromkeys(out))

    def summary(self) -> dict[str, Any]:
        """The part that reports carry as their build's provenance."""
        return {k: self.data.get(k) for k in SUMMARY_KEYS}

    def verify(self) -> list[str]:
        """Files whose checksum differs from the manifest (or that are missing or extra)."""
        return verify(self.dist, self.files)

    def tool_path(self, name: str) -> Path:
        """Where the build keeps one of its tools (``build_flags.tool_paths``; builds from before it: ``tools/``);
        llama-server is where Ollama runs it from."""
        default = "lib/ollama/llama-server" if name == "llama-server" else f"tools/{name}"
        return self.dist / self.tool_paths.get(name, default)

    def tool_env(self) -> dict[str, str]:
        """The environment the build's tools (llama-perplexity, llama-bench) need to run on its GPU backend, as
        Ollama gives llama-server: the module in ``GGML_BACKEND_PATH``, its runtime libraries on the loader path."""
        if self.gpu is None or not self.gpu.module:
            return {}
        old = os.environ.get("LD_LIBRARY_PATH", "")
        lib = str(self.dist / self.gpu.runner_dir)
        return {"GGML_BACKEND_PATH": str(self.dist / self.gpu.module),
                "LD_LIBRARY_PATH": lib + (":" + old if old else "")}


def load(path: Path, *, whole: bool = False) -> Manifest:
    """The manifest of a build given as its dist directory or its manifest.json; with ``whole``, every file
    must match its checksum too. Anything else is a :class:`ManifestError` naming the file."""
    p = path / NAME if path.is_dir() else path
    if not p.is_file():
        raise ManifestError(f"{path} has no {NAME}: not a build of invoke build-ollama" if path.is_dir()
                            else f"cannot read the build manifest {p}: no such file",
                            hint="build one with invoke build-ollama, or pass a dist directory "
                                 "(<workspace>/dist/<version>) or its manifest.json")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the build manifest {p}: {exc}",
                            hint="pass a dist directory of invoke build-ollama or its manifest.json") from None
    m = parse(text, p)
    if whole:
        bad = m.verify()
        if bad:
            raise DamagedBuild(f"{m.dist}: files differ from the manifest: {', '.join(bad[:5])}",
                                hint="rebuild with invoke build-ollama --force")
    return m


def read(root: Path) -> Manifest | None:
    """The manifest in ``root``, or None where there is none or it is not a build manifest (a half-written or
    foreign directory is not a build)."""
    try:
        return load(root) if (root / NAME).is_file() else None
    except ManifestError:
        return None


def parse(text: str, path: Path, *, host: str = "") -> Manifest:
    """A manifest's text (from ``path`` here, or on ``host``), checked: the fields the stages act on must be
    there with their types; the rest is kept as written."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path}: not JSON ({exc})", hint="rebuild with invoke build-ollama") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a build manifest (a JSON {type(data).__name__}, not an object)",
                            hint="rebuild with invoke build-ollama")
    missing = [k for k in ("version", "era", "files") if k not in data]
    if missing:
        raise ManifestError(f"{path}: not a build manifest (no {', '.join(missing)})",
                            hint="rebuild with invoke build-ollama")
    return _typed(data, path, host)


def _typed(d: Mapping[str, Any], path: Path, host: str) -> Manifest:
    return Manifest(path=path, record=BuildRecord.from_json(d, str(path)), data=dict(d), host=host)
