"""Modelfiles from ``modelfiles/<name>.yaml`` specs, with context sized for the host's cache.

A spec::

    from: qwen3.5:27b            # an Ollama model name, or a path to a .gguf
    gguf: ~/models/qwen.gguf     # optional: read the geometry for num_ctx: auto from here
    geometry: {layers: 64, kv_heads: 4, head_dim: 256, heads: 24, weights_gib: 16.5}  # or this
    num_ctx: auto                # or a number
    kv: q8_0/turbo4              # optional: this model's cache (PARAMETER kv_cache_type in a build
                                 # with per-model cache types; else the host's one server-wide type)
    parameters: {temperature: 0.7, stop: ["<|im_end|>"]}
    system: ...
    template: ...
    hosts: [macbook]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ollama_turbo.core import templates
from ollama_turbo.core.errors import ConfigError, TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.core.sizes import MAX_TOKENS
from ollama_turbo.fork import cache_types
from ollama_turbo.fork.behaviour import effective
from ollama_turbo.fork.cache_types import BUILTIN, GIB, BlockTable
from ollama_turbo.kv import geometry, memory
from ollama_turbo.kv.geometry import Geometry
from ollama_turbo.kv.plan import DEFAULT_RESERVE_GIB, Budget

# Ollama's Modelfile PARAMETER names and their value kinds.
PARAMETERS: dict[str, type] = {
    "mirostat": int, "mirostat_eta": float, "mirostat_tau": float, "num_ctx": int,
    "repeat_last_n": int, "repeat_penalty": float, "temperature": float, "seed": int, "stop": str,
    "num_predict": int, "top_k": int, "top_p": float, "min_p": float, "typical_p": float,
    "presence_penalty": float, "frequency_penalty": float, "num_keep": int, "num_batch": int,
    "num_gpu": int, "num_thread": int, "use_mmap": bool,
}
SPEC_KEYS = {"from", "gguf", "geometry", "num_ctx", "kv", "parameters", "system", "template", "hosts"}
GEOMETRY_KEYS = {"layers", "kv_heads", "head_dim", "heads", "weights_gib", "context_length",
                 # hybrid models: the GGUF keys <arch>.full_attention_interval and <arch>.ssm.*
                 "arch", "full_attention_interval", "ssm_conv_kernel", "ssm_inner_size", "ssm_state_size",
                 "ssm_group_count"}


@dataclass
class Spec:
    name: str
    path: Path
    from_: str
    num_ctx: int | str | None
    kv: KVPair | None
    parameters: dict[str, Any]
    system: str
    template: str
    hosts: list[str]
    gguf: Path | None = None
    geometry: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rendered:
    spec: Spec
    host: str
    path: Path
    text: str
    num_ctx: int | None
    type_k: str
    type_v: str
    per_model: bool = False  # the cache is the model's own (PARAMETER kv_cache_type), not the host's

    @property
    def kv_param(self) -> str | None:
        """The ``PARAMETER kv_cache_type`` value this Modelfile carries (None: it runs the host's default)."""
        return cache_types.label(self.type_k, self.type_v) if self.per_model else None


def _err(spec: Path, key: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(message, key=f"{spec.stem}.{key}" if key else spec.stem, source=str(spec),
                       hint=hint, prefix="")


def load_spec(path: Path) -> Spec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}",
                          hint=f"fix the syntax in {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                          hint=f"save {path} as UTF-8, or move it out of {path.parent}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}",
                          hint=f"make it a readable file, or move it out of {path.parent}") from None
    if not isinstance(raw, dict):
        raise _err(path, "", "expected a mapping with at least 'from'")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise _err(path, unknown[0], f"unknown key; expected one of: {', '.join(sorted(SPEC_KEYS))}")
    from_ = raw.get("from")
    if not isinstance(from_, str) or not from_:
        raise _err(path, "from", "required: an Ollama model name or a path to a .gguf file")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise _err(path, "parameters", "expected a mapping of PARAMETER names to values")
    for key, value in params.items():
        kind = PARAMETERS.get(key)
        if kind is None:
            raise _err(path, f"parameters.{key}", "not an Ollama Modelfile PARAMETER; known: "
                       + ", ".join(sorted(PARAMETERS)))
        values = value if key == "stop" and isinstance(value, list) else [value]
        for v in values:
            ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if not ok:
                raise _err(path, f"parameters.{key}", f"expected {kind.__name__}, got {v!r}")
    if "num_ctx" in params:
        raise _err(path, "parameters.num_ctx", "set num_ctx at the top level (a number or auto)")
    num_ctx = raw.get("num_ctx")
    if num_ctx is not None and num_ctx != "auto" and (not isinstance(num_ctx, int) or isinstance(
            num_ctx, bool) or num_ctx <= 0):
        raise _err(path, "num_ctx", f"expected a positive number or 'auto', got {num_ctx!r}")
    kv = None
    if raw.get("kv") is not None:
        try:
            kv = cache_types.parse_pair(str(raw["kv"]))
        except TurboError as exc:
            raise _err(path, "kv", exc.message) from None
    hosts = raw.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise _err(path, "hosts", "expected a list of host names")
    geometry = raw.get("geometry") or {}
    if not isinstance(geometry, dict) or set(geometry) - GEOMETRY_KEYS:
        raise _err(path, "geometry", "expected a mapping with: " + ", ".join(sorted(GEOMETRY_KEYS)))
    for key, value in geometry.items():
        _check_geometry(path, key, value)
    gguf = raw.get("gguf")
    for key in ("system", "template"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _err(path, key, "expected text")
    return Spec(name=path.stem, path=path, from_=from_, num_ctx=num_ctx, kv=kv, parameters=params,
                system=raw.get("system") or "", template=raw.get("template") or "", hosts=hosts,
                gguf=Path(gguf).expanduser() if gguf else None, geometry=geometry)


# the largest number each geometry key takes (more is a typo), and whether 0 is one of its values
GEOMETRY_LIMITS: dict[str, tuple[int, bool]] = {
    "layers": (geometry.MAX_LAYERS, False), "kv_heads": (geometry.MAX_HEADS, False),
    "heads": (geometry.MAX_HEADS, False), "head_dim": (geometry.MAX_HEAD_DIM, False),
    "full_attention_interval": (geometry.MAX_LAYERS, False), "context_length": (MAX_TOKENS, True),
    "ssm_conv_kernel": (1 << 16, True), "ssm_inner_size": (1 << 24, True), "ssm_state_size": (1 << 24, True),
    "ssm_group_count": (1 << 16, True), "weights_gib": (1 << 20, True),
}


def _check_geometry(path: Path, key: str, value: Any) -> None:
    """One ``geometry:`` value: the architecture's name, or a number in its range."""
    if key == "arch":
        if not isinstance(value, str) or not value:
            raise _err(path, "geometry.arch", f"expected the GGUF's architecture name (e.g. llama, qwen35), got "
                                              f"{value!r}")
        return
    limit, zero = GEOMETRY_LIMITS[key]
    kinds = (int, float) if key == "weights_gib" else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not (0 if zero else 1) <= value <= limit:
        what = "a number of GiB" if key == "weights_gib" else "a whole number"
        raise _err(path, f"geometry.{key}", f"expected {what} from {0 if zero else 1} to {limit:,}, got {value!r}",
                   hint=f"give the model's own {key} (from its GGUF or model card)")


def load_specs(directory: Path) -> list[Spec]:
    if not directory.is_dir():
        raise ConfigError(f"no Modelfile specs directory at {directory}",
                          hint="create modelfiles/<name>.yaml")
    return [load_spec(p) for p in sorted(directory.glob("*.yaml"))]


def host_kv(specs: Sequence[Spec], host: str, default: KVPair, *,
            why_one: str = "Ollama has one KV cache type per server") -> KVPair:
    """The one server-wide KV type for ``host`` on a build without per-model cache types: what its specs ask
    for, else the settings."""
    wanted = {s.kv: s for s in specs if host in s.hosts and s.kv}
    if len(wanted) > 1:
        (a, sa), (b, sb) = list(wanted.items())[:2]
        raise ConfigError(
            f"host {host} runs one KV cache type for every model ({why_one}), but {sa.path.name} needs "
            f"{'/'.join(a)} and {sb.path.name} needs {'/'.join(b)}",
            key=f"{sb.name}.kv", source=str(sb.path), prefix="",
            hint="deploy a build with per-model cache types (an era C build by this version of ollama-turbo), "
                 "give both specs the same kv, or put them on different hosts")
    return next(iter(wanted)) if wanted else default


def per_model_support(manifest: Manifest | None) -> tuple[bool, str, list[str] | None]:
    """Can the build take ``PARAMETER kv_cache_type``, and if not why; the cache types its llama-server accepts
    (None: not recorded). With no build given: what a build makes now (supported, types unknown)."""
    if manifest is None:
        return True, "", None
    pm = manifest.per_model_kv
    if pm.supported:
        return True, "", list(pm.allowed) if pm.allowed is not None else None
    why = pm.why_not or (f"build {manifest.version} was made without per-model cache types "
                         "(a plain Ollama, or a build by an older ollama-turbo)")
    return False, why, None


def spec_metadata(g: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``geometry:`` as the GGUF metadata it stands for, so the model loader's rules (which
    layers are recurrent, the recurrent state) apply to it exactly as to a GGUF file."""
    arch = str(g.get("arch", "llama"))
    meta: dict[str, Any] = {"general.architecture": arch, f"{arch}.block_count": int(g["layers"]),
                            f"{arch}.attention.head_count": int(g.get("heads") or g["kv_heads"]),
                            f"{arch}.attention.head_count_kv": int(g["kv_heads"]),
                            f"{arch}.attention.key_length": int(g["head_dim"]),
                            f"{arch}.attention.value_length": int(g["head_dim"]),
                            f"{arch}.context_length": int(g.get("context_length", 0))}
    if "full_attention_interval" in g:
        meta[f"{arch}.full_attention_interval"] = int(g["full_attention_interval"])
    for key in ("conv_kernel", "inner_size", "state_size", "group_count"):
        if f"ssm_{key}" in g:
            meta[f"{arch}.ssm.{key}"] = int(g[f"ssm_{key}"])
    return meta


def geometry_for(spec: Spec) -> Geometry:
    candidates = [spec.gguf] if spec.gguf else []
    if spec.from_.endswith(".gguf"):
        candidates.append(Path(spec.from_).expanduser())
    for c in candidates:
        if c is not None:
            return geometry.geometry_from_gguf(c)
    g = spec.geometry
    if {"layers", "kv_heads", "head_dim"} <= set(g):
        return geometry.geometry_from_metadata(spec_metadata(g), source=str(spec.path),
                                               weights_bytes=int(float(g.get("weights_gib", 0)) * GIB))
    raise _err(spec.path, "num_ctx", "'auto' needs the model's geometry",
               hint="add gguf: <path to the .gguf> or geometry: {layers, kv_heads, head_dim, heads, "
                    "weights_gib}")


def kv_env_text(type_k: str, type_v: str) -> str:
    if type_k == type_v:
        return f"OLLAMA_KV_CACHE_TYPE={type_k}"
    return f"LLAMA_ARG_CACHE_TYPE_K={type_k} LLAMA_ARG_CACHE_TYPE_V={type_v}"


def _value(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and (key == "stop" or re.search(r"\s|\"", v) or not v):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def render_one(spec: Spec, host: Host, settings: Settings, type_k: str, type_v: str, *,
               reserve_gib: float = DEFAULT_RESERVE_GIB, blocks: BlockTable = BUILTIN,
               per_model: bool = False) -> tuple[str, int | None]:
    num_ctx: int | None = None
    reason = ""
    if spec.num_ctx == "auto":
        if host.memory_gib is None:
            raise ConfigError("num_ctx: auto needs the host's memory", key=f"hosts.{host.name}.memory_gib",
                              hint=f"set turbo.hosts.{host.name}.memory_gib in invoke.yaml")
        geo = geometry_for(spec)
        fb = settings.kv.fork
        budget = Budget(host.name, host.memory_gib, geo.weights_bytes, reserve_gib)
        num_ctx = memory.max_context(geo, max(budget.kv_bytes, 0), type_k, type_v, fb, blocks=blocks,
                                    limit=geo.n_ctx_train or None)
        if num_ctx == 0:
            raise TurboError(f"{spec.path.name}: no context of 1,024 tokens or more fits {host.name} "
                             f"with {type_k}/{type_v}: {budget.explain()}",
                             hint="use a smaller model or a more compressed cache type")
        est = memory.estimate(geo, num_ctx, type_k, type_v, fb, blocks=blocks)
        recurrent = (f" and recurrent state ({est.recurrent_bytes / cache_types.MIB:,.0f} MiB)"
                     if est.recurrent_bytes else "")
        verb = "fit" if recurrent else "fits"
        if geo.n_ctx_train and num_ctx == geo.n_ctx_train // 1024 * 1024:
            reason = (f"the model's trained context; its {type_k}/{type_v} cache ({est.mib:,.0f} MiB){recurrent} "
                      f"{verb} {budget.explain()}")
        else:
            reason = (f"largest multiple of 1024 whose {type_k}/{type_v} cache ({est.mib:,.0f} MiB){recurrent} "
                      f"{verb} {budget.explain()}")
    elif isinstance(spec.num_ctx, int):
        num_ctx = spec.num_ctx
    fork_note = ""
    if spec.gguf or spec.from_.endswith(".gguf") or {"layers", "kv_heads", "head_dim"} <= set(spec.geometry):
        geo = geometry_for(spec)
        fork_note = effective(type_k, type_v, n_layer=geo.n_layer, gqa_ratio=geo.gqa_ratio,
                              fb=settings.kv.fork).explain()
    params: list[tuple[str, str]] = []
    if per_model:
        params.append(("kv_cache_type", cache_types.label(type_k, type_v)))
    if num_ctx:
        params.append(("num_ctx", str(num_ctx)))
    for key, value in spec.parameters.items():
        for v in value if isinstance(value, list) else [value]:
            params.append((key, _value(key, v)))
    text = templates.render(
        "Modelfile.j2", name=spec.name, host=host.name, spec_path=f"modelfiles/{spec.path.name}",
        type_k=type_k, type_v=type_v, kv_env=kv_env_text(type_k, type_v), per_model=per_model, num_ctx=num_ctx,
        num_ctx_reason=reason, fork_note=fork_note, from_=spec.from_, parameters=params, template=spec.template,
        system=spec.system)
    return text, num_ctx


def render_all(settings: Settings, specs: Sequence[Spec], out: Path, *, host: str | None = None,
               blocks: BlockTable = BUILTIN, reserve_gib: float = DEFAULT_RESERVE_GIB,
               per_model: bool = True, why_not: str = "", allowed: Sequence[str] | None = None) -> list[Rendered]:
    """Every host's Modelfiles. With ``per_model`` (a build that takes PARAMETER kv_cache_type) a spec's ``kv`` is
    its own and the rest run the host's default (``turbo.kv``); without it the host runs one type for all."""
    for s in specs:
        for name in s.hosts:
            if name not in settings.hosts:
                raise ConfigError(f"unknown host {name!r}", key=f"{s.name}.hosts", source=str(s.path),
                                  prefix="", hint="add it under turbo.hosts in invoke.yaml or fix the spec")
    if per_model and allowed is not None:
        for s in specs:
            for t in dict.fromkeys(s.kv or ()):
                if t not in allowed:
                    raise ConfigError(f"cache type {t!r} is not one this build's llama-server accepts "
                                      f"(allowed: {', '.join(allowed)})", key=f"{s.name}.kv", source=str(s.path),
                                      prefix="", hint="pick an allowed type, or deploy a build of a fork that has it")
    hosts = [settings.host(host)] if host else [settings.hosts[h] for h in sorted(settings.hosts)]
    results = []
    for h in hosts:
        default = KVPair(settings.kv.type_k, settings.kv.type_v)
        if not per_model:
            default = host_kv(specs, h.name, default, why_one=why_not or "Ollama has one KV cache type per server")
        for s in specs:
            if h.name not in s.hosts:
                continue
            own = per_model and s.kv is not None
            type_k, type_v = s.kv if own and s.kv else default
            text, num_ctx = render_one(s, h, settings, type_k, type_v, reserve_gib=reserve_gib, blocks=blocks,
                                       per_model=own)
            results.append(Rendered(s, h.name, out / h.name / f"{s.name}.Modelfile", text, num_ctx,
                                    type_k, type_v, per_model=own))
    for r in results:
        r.path.parent.mkdir(parents=True, exist_ok=True)
        r.path.write_text(r.text, encoding="utf-8")
    return results
