"""The build record: what a build of the custom Ollama is, as one typed value.

``build-ollama`` fills a :class:`BuildRecord`; :mod:`ollama_turbo.core.manifest` writes it as ``manifest.json``
(:meth:`BuildRecord.to_json`) and every reader gets the same type back (:meth:`BuildRecord.from_json`), checked
once. Records written by earlier toolkits still load: a key they lack takes its default, the K/V they wrote as
``kv`` is read as :attr:`BuildRecord.planned_kv`, and a key this toolkit does not know is kept as written.

``planned_kv`` is the K/V the build was planned with (the settings when it was built); what a host runs is
its deploy record (:mod:`ollama_turbo.deploy.record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import UsageError


class ManifestError(UsageError):
    """A manifest that is missing, not JSON, or not a build manifest: names the file and the next step."""


@dataclass(frozen=True)
class SourceRef:
    """A source at the commit built: Ollama (with the version it stamps) or the fork."""

    url: str
    ref: str
    sha: str
    version: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"url": self.url, "ref": self.ref, "sha": self.sha}
        return {**out, "version": self.version} if self.version else out


@dataclass(frozen=True)
class PlannedKV:
    """The K/V cache the build was planned with (``turbo.kv`` when it was built; its env redacted)."""

    type_k: str
    type_v: str
    flash_attention: bool = True
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type_k": self.type_k, "type_v": self.type_v, "flash_attention": self.flash_attention,
                "env": dict(self.env)}


@dataclass(frozen=True)
class CacheType:
    """One cache type the build's llama.cpp accepts: values and bytes per block, its ggml type where known."""

    block: int
    bytes: int
    ggml_type: str | None = None  # GGML_TYPE_TURBO4_0

    def to_json(self) -> dict[str, Any]:
        head = {} if self.ggml_type is None else {"ggml_type": self.ggml_type}
        return {**head, "block": self.block, "bytes": self.bytes}


@dataclass(frozen=True)
class GPU:
    """A CUDA build's GPU backend: the architecture it was compiled for and where its module lives."""

    arch: str
    runner_dir: str  # lib/ollama/cuda_v13
    module: str      # the backend module, relative to the dist
    preset: str = ""
    toolkit: str = ""
    cache_key: str = ""
    backend: str = "cuda"

    def to_json(self) -> dict[str, str]:
        return {"backend": self.backend, "arch": self.arch, "preset": self.preset, "runner_dir": self.runner_dir,
                "module": self.module, "toolkit": self.toolkit, "cache_key": self.cache_key}


@dataclass(frozen=True)
class PerModelKV:
    """Whether the build takes a cache type per model (``PARAMETER kv_cache_type``), and which types."""

    supported: bool
    allowed: tuple[str, ...] | None = None  # the types its llama-server accepts; None: not recorded
    why_not: str = ""
    param: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"supported": self.supported}
        if self.param:
            out["param"] = self.param
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        if self.why_not:
            out["why_not"] = self.why_not
        return out


@dataclass(frozen=True)
class BuildRecord:
    """One build, as ``manifest.json`` holds it (see the module's text)."""

    version: str
    era: Era
    files: dict[str, str] = field(default_factory=dict)  # path in the dist -> sha256
    flavor: str = "custom"  # or "stock": Ollama with the llama.cpp it pins
    ollama: SourceRef | None = None
    fork: SourceRef | None = None
    pinned: dict[str, str] = field(default_factory=dict)  # Era.pin_record
    backend: str = ""
    preset: str | None = None
    platform: dict[str, str] = field(default_factory=dict)
    identity: str = ""
    planned_kv: PlannedKV | None = None
    cache_types: dict[str, CacheType] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)  # each Go rule: applied (file:line) or not needed
    per_model_kv: PerModelKV = PerModelKV(False)
    patches: list[Any] = field(default_factory=list)  # what became of each of Ollama's patches
    dropped_flags: list[str] = field(default_factory=list)
    adaptations: list[dict[str, str]] = field(default_factory=list)
    verify_fork: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, str] = field(default_factory=dict)
    build_flags: dict[str, Any] = field(default_factory=dict)  # ldflags, tool_paths, tools (why one is missing)
    inputs_key: str = ""
    ollama_turbo: str = ""  # the toolkit's version that built it
    built_at: str = ""
    cuda_arch: str = ""
    parts: dict[str, Any] = field(default_factory=dict)  # a CUDA build's base and GPU parts, where each was built
    gpu: GPU | None = None
    cpu_variants: dict[str, Any] = field(default_factory=dict)  # CPU variant libraries left out, and why
    extra: dict[str, Any] = field(default_factory=dict)  # keys this toolkit does not know, kept as written

    @property
    def stock(self) -> bool:
        return self.flavor == "stock"

    @property
    def tool_paths(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.build_flags.get("tool_paths") or {}).items()}

    @property
    def tools_why(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.build_flags.get("tools") or {}).items()}

    def to_json(self) -> dict[str, Any]:
        """The record as ``manifest.json`` holds it (files last)."""
        out: dict[str, Any] = {
            "version": self.version, "era": str(self.era), "flavor": self.flavor,
            "ollama": self.ollama.to_json() if self.ollama else None,
            "fork": self.fork.to_json() if self.fork else None,
            "pinned": dict(self.pinned), "backend": self.backend, "preset": self.preset,
            "platform": dict(self.platform), "identity": self.identity,
            "planned_kv": self.planned_kv.to_json() if self.planned_kv else None,
            "cache_types": {n: c.to_json() for n, c in self.cache_types.items()},
            "rules": list(self.rules), "per_model_kv": self.per_model_kv.to_json(), "patches": list(self.patches),
            "dropped_flags": list(self.dropped_flags), "adaptations": list(self.adaptations),
            "verify_fork": dict(self.verify_fork), "toolchain": dict(self.toolchain),
            "build_flags": dict(self.build_flags), "inputs_key": self.inputs_key,
            "ollama_turbo": self.ollama_turbo, "built_at": self.built_at,
        }
        if self.cuda_arch or self.parts or self.gpu:
            out.update(cuda_arch=self.cuda_arch, parts=dict(self.parts), gpu=self.gpu.to_json() if self.gpu else None)
        if self.cpu_variants:
            out["cpu_variants"] = dict(self.cpu_variants)
        return {**out, **self.extra, "files": dict(self.files)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> BuildRecord:
        """A record from a manifest's JSON object (``where`` names it in errors); every field this toolkit acts
        on is checked, each failure a :class:`ManifestError` naming the key."""
        return _Reader(d, where).record()


_KNOWN = {f for f in BuildRecord.__dataclass_fields__ if f != "extra"} | {"kv"}


class _Reader:
    def __init__(self, d: Mapping[str, Any], where: str) -> None:
        self.d, self.where = d, where

    def bad(self, key: str, want: str) -> ManifestError:
        return ManifestError(f"{self.where}: {key} is {self.d.get(key)!r}, expected {want}",
                             hint="rebuild with invoke build-ollama (the manifest was edited or is damaged)")

    def text(self, key: str, default: str = "") -> str:
        v = self.d.get(key, default)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.bad(key, "a string")
        return v

    def table(self, key: str) -> dict[str, Any]:
        v = self.d.get(key) or {}
        if not isinstance(v, dict):
            raise self.bad(key, "an object")
        return v

    def listing(self, key: str) -> list[Any]:
        v = self.d.get(key) or []
        if not isinstance(v, list):
            raise self.bad(key, "a list")
        return v

    def source(self, key: str) -> SourceRef | None:
        s = self.table(key)
        if not s:
            return None
        return SourceRef(str(s.get("url") or ""), str(s.get("ref") or ""), str(s.get("sha") or ""),
                         str(s.get("version") or ""))

    def record(self) -> BuildRecord:
        files = self.table("files")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise self.bad("files", "an object of file -> sha256")
        try:
            era = Era.named(self.text("era"))
        except ValueError:
            raise self.bad("era", " or ".join(e.value for e in Era)) from None
        version = self.text("version")
        if not version:
            raise self.bad("version", "a version")
        flags = self.table("build_flags")
        for key in ("tool_paths", "tools"):
            if not isinstance(flags.get(key) or {}, dict):
                raise self.bad("build_flags", f"an object whose {key} is an object")
        preset = self.d.get("preset")
        return BuildRecord(
            version=version, era=era, files=dict(files), flavor=self.text("flavor", "custom"),
            ollama=self.source("ollama"), fork=self.source("fork"),
            pinned={str(k): str(v) for k, v in self.table("pinned").items()}, backend=self.text("backend"),
            preset=str(preset) if preset is not None else None,
            platform={str(k): str(v) for k, v in self.table("platform").items() if v is not None},
            identity=self.text("identity"), planned_kv=self.planned_kv(), cache_types=self.cache_types(),
            rules=self.listing("rules"), per_model_kv=self.per_model(), patches=self.listing("patches"),
            dropped_flags=[str(f) for f in self.listing("dropped_flags")], adaptations=self.listing("adaptations"),
            verify_fork=self.table("verify_fork"), toolchain={str(k): str(v) for k, v in
                                                              self.table("toolchain").items()},
            build_flags=flags, inputs_key=self.text("inputs_key"), ollama_turbo=self.text("ollama_turbo"),
            built_at=self.text("built_at"), cuda_arch=self.text("cuda_arch"), parts=self.table("parts"),
            gpu=self.gpu(), cpu_variants=self.table("cpu_variants"),
            extra={k: v for k, v in self.d.items() if k not in _KNOWN})

    def planned_kv(self) -> PlannedKV | None:
        key = "planned_kv" if "planned_kv" in self.d else "kv"  # "kv": toolkits before the build record
        kv = self.table(key)
        if not kv:
            return None
        if not all(isinstance(kv.get(k), str) for k in ("type_k", "type_v")):
            raise self.bad(key, "an object with type_k and type_v")
        return PlannedKV(kv["type_k"], kv["type_v"], bool(kv.get("flash_attention", True)),
                         {str(k): str(v) for k, v in (kv.get("env") or {}).items()})

    def cache_types(self) -> dict[str, CacheType]:
        try:
            return {str(n): CacheType(int(v["block"]), int(v["bytes"]),
                                      str(v["ggml_type"]) if v.get("ggml_type") is not None else None)
                    for n, v in self.table("cache_types").items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.bad("cache_types", "a table of block and bytes per type") from None

    def per_model(self) -> PerModelKV:
        pm = self.table("per_model_kv")
        allowed = pm.get("allowed")
        return PerModelKV(bool(pm.get("supported")), tuple(map(str, allowed)) if isinstance(allowed, list) else None,
                          str(pm.get("why_not") or ""), str(pm.get("param") or ""))

    def gpu(self) -> GPU | None:
        g = self.table("gpu")
        if not g:
            return None
        if not all(g.get(k) for k in ("arch", "runner_dir", "module")):
            raise self.bad("gpu", "an object with arch, runner_dir and module")
        return GPU(arch=str(g["arch"]), runner_dir=str(g["runner_dir"]), module=str(g["module"]),
                   preset=str(g.get("preset") or ""), toolkit=str(g.get("toolkit") or ""),
                   cache_key=str(g.get("cache_key") or ""), backend=str(g.get("backend") or "cuda"))
