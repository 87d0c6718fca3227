"""KV-cache memory per cache type, from block sizes and the model geometry.

Pure logic: no I/O except :func:`geometry_from_gguf`. The fork's behaviours that change the
cache size are modelled and switchable (:class:`ForkBehaviour`):

- turbo types pad each head up to a multiple of 128 values (one WHT group);
- auto-asymmetric: K and V the same turbo type and >= 6 query heads per KV head -> K is q8_0
  (``TURBO_AUTO_ASYMMETRIC=0`` disables);
- ``TURBO_LAYER_ADAPTIVE`` modes 1, 2, 5, 6, 7; with the variable unset, mode 7 (boundary V:
  first 2 and last 2 layers' V at q8_0) is on by itself when V is turbo2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TurboError, UsageError

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class CacheType:
    name: str
    block: int        # values per block
    block_bytes: int  # bytes per block

    def row_bytes(self, n: int) -> int:
        if n % self.block:
            raise KVMemError(f"{self.name} stores blocks of {self.block} values; a row of {n} values "
                             f"does not divide into them (head size must be a multiple of {self.block})")
        return n // self.block * self.block_bytes

    @property
    def bits_per_value(self) -> float:
        return self.block_bytes * 8 / self.block

    @property
    def turbo(self) -> bool:
        return self.name.startswith("turbo")


# Block formats (values per block, bytes per block) as ggml and the fork define them.
CACHE_TYPES: dict[str, CacheType] = {t.name: t for t in (
    CacheType("f32", 1, 4), CacheType("f16", 1, 2), CacheType("bf16", 1, 2),
    CacheType("q8_0", 32, 34), CacheType("q4_0", 32, 18), CacheType("q4_1", 32, 20),
    CacheType("q5_0", 32, 22), CacheType("q5_1", 32, 24), CacheType("iq4_nl", 32, 18),
    CacheType("turbo2", 128, 34), CacheType("turbo3", 128, 50), CacheType("turbo4", 128, 68),
)}
LAYER_ADAPTIVE_MODES = (0, 1, 2, 5, 6, 7)


class KVMemError(TurboError):
    pass


def cache_type(name: str) -> CacheType:
    try:
        return CACHE_TYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown cache type {name!r}; known: {', '.join(CACHE_TYPES)}") from None


def parse_pair(spec: str) -> tuple[str, str]:
    """``turbo4`` -> (turbo4, turbo4); ``q8_0/turbo4`` -> (q8_0, turbo4)."""
    k, _, v = spec.strip().partition("/")
    k, v = k.strip().lower(), (v or k).strip().lower()
    cache_type(k), cache_type(v)
    return k, v


@dataclass(frozen=True)
class Geometry:
    """What decides the KV cache size. Per-layer tuples have one entry per layer."""

    n_layer: int
    n_head_kv: tuple[int, ...]
    n_head: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    swa_layers: tuple[bool, ...] = ()
    sliding_window: int = 0
    n_ctx_train: int = 0
    weights_bytes: int = 0
    name: str = ""

    @classmethod
    def simple(cls, layers: int, kv_heads: int, head_dim: int, heads: int | None = None,
               **kw: Any) -> Geometry:
        for what, n in (("layers", layers), ("kv heads", kv_heads), ("head dim", head_dim)):
            if n <= 0:
                raise UsageError(f"{what} must be positive, got {n}")
        return cls(n_layer=layers, n_head_kv=(kv_heads,) * layers,
                   n_head=((heads or kv_heads),) * layers, head_dim_k=head_dim, head_dim_v=head_dim, **kw)

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]

    @property
    def gqa_ratio(self) -> float:
        kv = [k for k in self.n_head_kv if k]
        return max(h / k for h, k in zip(self.n_head, self.n_head_kv, strict=True) if k) if kv else 1.0


@dataclass(frozen=True)
class ForkBehaviour:
    """Switches for the fork's size-changing behaviours (all on = what the fork does)."""

    pad_turbo_heads: bool = True
    auto_asymmetric: bool = True
    layer_adaptive: int | None = None  # TURBO_LAYER_ADAPTIVE; None = unset (fork's default)
    ubatch: int = 512

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ForkBehaviour:
        la = env.get("TURBO_LAYER_ADAPTIVE")
        mode = None
        if la is not None and str(la).strip() != "":
            try:
                mode = int(la)
            except ValueError:
                raise UsageError(f"TURBO_LAYER_ADAPTIVE={la!r} is not a number") from None
        return cls(auto_asymmetric=str(env.get("TURBO_AUTO_ASYMMETRIC", "1")) != "0", layer_adaptive=mode)

    @classmethod
    def none(cls) -> ForkBehaviour:
        return cls(pad_turbo_heads=False, auto_asymmetric=False, layer_adaptive=0)


@dataclass(frozen=True)
class LayerKV:
    layer: int
    type_k: str
    type_v: str
    cells: int
    k_bytes: int
    v_bytes: int


@dataclass
class KVEstimate:
    type_k: str
    type_v: str
    n_ctx: int
    layers: list[LayerKV] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def k_bytes(self) -> int:
        return sum(x.k_bytes for x in self.layers)

    @property
    def v_bytes(self) -> int:
        return sum(x.v_bytes for x in self.layers)

    @property
    def total_bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    @property
    def mib(self) -> float:
        return self.total_bytes / MIB


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def layer_types(geo: Geometry, type_k: str, type_v: str, fb: ForkBehaviour) -> tuple[
        list[tuple[str, str]], list[str]]:
    """Per-layer (K, V) types after auto-asymmetric and layer-adaptive, with notes saying why."""
    notes: list[str] = []
    k_turbo = cache_type(type_k).turbo
    if fb.auto_asymmetric and k_turbo and type_k == type_v and geo.gqa_ratio >= 6:
        notes.append(f"auto-asymmetric: {geo.gqa_ratio:g} query heads per KV head >= 6, so K is q8_0 "
                     "(TURBO_AUTO_ASYMMETRIC=0 disables)")
        type_k, k_turbo = "q8_0", False
    v_turbo = cache_type(type_v).turbo
    mode = fb.layer_adaptive
    if mode is None:
        mode = 7 if type_v == "turbo2" and geo.n_layer >= 8 else 0
        if mode == 7:
            notes.append("boundary V: with turbo2 V the fork keeps V of the first 2 and last 2 layers at "
                         "q8_0 (TURBO_LAYER_ADAPTIVE=0 disables)")
    elif mode not in LAYER_ADAPTIVE_MODES:
        raise UsageError(f"TURBO_LAYER_ADAPTIVE={mode} is not one of {LAYER_ADAPTIVE_MODES}")
    elif mode:
        notes.append(f"TURBO_LAYER_ADAPTIVE={mode}")
    n = geo.n_layer
    out = []
    for il in range(n):
        k, v = type_k, type_v
        if n >= 8:
            edge4, edge2 = il < 4 or il >= n - 4, il < 2 or il >= n - 2
            if mode == 1 and k_turbo and edge4 or mode == 2 and k_turbo and il >= n - 8:
                k, v = "q8_0", "q8_0"
            elif mode == 5 and v_turbo:
                v = "turbo4" if edge2 else "turbo2"
            elif mode == 6 and v_turbo:
                v = "turbo4" if il >= n - 8 else "turbo2"
            elif mode == 7 and v_turbo:
                v = "q8_0" if edge2 else "turbo2"
        out.append((k, v))
    return out, notes


def estimate(geo: Geometry, n_ctx: int, type_k: str, type_v: str | None = None,
             fb: ForkBehaviour | None = None) -> KVEstimate:
    """KV cache bytes for ``n_ctx`` tokens, layer by layer."""
    fb = fb or ForkBehaviour()
    type_v = type_v or type_k
    cache_type(type_k), cache_type(type_v)
    if n_ctx <= 0:
        raise UsageError(f"context size must be positive, got {n_ctx}")
    types, notes = layer_types(geo, type_k.lower(), type_v.lower(), fb)
    est = KVEstimate(type_k=type_k, type_v=type_v, n_ctx=n_ctx, notes=notes)
    padded = set()
    for il, (tk, tv) in enumerate(types):
        kv_heads = geo.n_head_kv[il]
        if kv_heads == 0:
            continue
        cells = n_ctx
        if geo.is_swa(il) and geo.sliding_window:
            cells = min(n_ctx, _pad(geo.sliding_window + fb.ubatch, 256))
        ck, cv = cache_type(tk), cache_type(tv)
        dk, dv = geo.head_dim_k, geo.head_dim_v
        if fb.pad_turbo_heads and ck.turbo and dk % 128:
            padded.add(f"K head dim {dk} -> {_pad(dk, 128)}")
            dk = _pad(dk, 128)
        if fb.pad_turbo_heads and cv.turbo and dv % 128:
            padded.add(f"V head dim {dv} -> {_pad(dv, 128)}")
            dv = _pad(dv, 128)
        k_bytes = ck.row_bytes(dk) * kv_heads * cells
        v_bytes = cv.row_bytes(dv) * kv_heads * cells
        est.layers.append(LayerKV(il, tk, tv, cells, k_bytes, v_bytes))
    if padded:
        est.notes.append("turbo zero-padding: " + ", ".join(sorted(padded)))
    if any(geo.is_swa(il) for il in range(geo.n_layer)) and geo.sliding_window:
        est.notes.append(f"sliding-window layers keep at most {geo.sliding_window} tokens (+ one ubatch)")
    return est


def max_context(geo: Geometry, budget_bytes: int, type_k: str, type_v: str | None = None,
                fb: ForkBehaviour | None = None, *, step: int = 1024, limit: int | None = None) -> int:
    """The largest multiple of ``step`` tokens whose KV cache fits ``budget_bytes`` (0 if none)."""
    limit = limit or geo.n_ctx_train or 1 << 20
    lo, hi = 0, limit // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(geo, mid * step, type_k, type_v, fb).total_bytes <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo * step


# --- GGUF ---------------------------------------------------------------------------------


def geometry_from_metadata(kv: Mapping[str, Any], *, source: str = "model",
                           weights_bytes: int = 0) -> Geometry:
    """Geometry from GGUF metadata (``general.architecture`` and ``<arch>.*`` keys)."""
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise KVMemError(f"{source}: no general.architecture in the GGUF metadata")

    def get(key: str) -> Any:
        return kv.get(f"{arch}.{key}")

    n_layer = get("block_count")
    if not isinstance(n_layer, int) or n_layer <= 0:
        raise KVMemError(f"{source}: GGUF metadata lacks {arch}.block_count")
    heads = get("attention.head_count")
    heads_kv = get("attention.head_count_kv")
    if heads is None:
        raise KVMemError(f"{source}: GGUF metadata lacks {arch}.attention.head_count "
                         "(no attention metadata)")

    def per_layer(value: Any, what: str) -> tuple[int, ...]:
        if isinstance(value, int):
            return (value,) * n_layer
        if isinstance(value, Sequence) and len(value) == n_layer:
            return tuple(int(x) for x in value)
        raise KVMemError(f"{source}: {arch}.{what} has {value!r}, expected a number or {n_layer} numbers")

    n_head = per_layer(heads, "attention.head_count")
    n_head_kv = per_layer(heads_kv if heads_kv is not None else heads, "attention.head_count_kv")
    dim_k, dim_v = get("attention.key_length"), get("attention.value_length")
    if dim_k is None or dim_v is None:
        embd = get("embedding_length")
        h = max(n_head) if n_head else 0
        if not isinstance(embd, int) or not h:
            raise KVMemError(f"{source}: cannot tell the head size: no {arch}.attention.key_length and "
                             f"no {arch}.embedding_length")
        dim_k = dim_k or embd // h
        dim_v = dim_v or embd // h
    window = get("attention.sliding_window") or 0
    pattern = get("attention.sliding_window_pattern")
    swa: tuple[bool, ...] = ()
    if window:
        if isinstance(pattern, int) and pattern > 0:
            swa = tuple((il + 1) % pattern != 0 for il in range(n_layer))
        elif isinstance(pattern, Sequence) and len(pattern) == n_layer:
            swa = tuple(bool(x) for x in pattern)
        else:
            swa = (True,) * n_layer
    ctx_train = get("context_length") or 0
    return Geometry(n_layer=n_layer, n_head_kv=n_head_kv, n_head=n_head, head_dim_k=int(dim_k),
                    head_dim_v=int(dim_v), swa_layers=swa, sliding_window=int(window),
                    n_ctx_train=int(ctx_train), weights_bytes=weights_bytes,
                    name=str(kv.get("general.name", "")))


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """All scalar and array metadata of a GGUF file, via the ``gguf`` package."""
    import gguf

    if not path.is_file():
        raise KVMemError(f"model file not found: {path}", hint="pass the path of a .gguf file")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the gguf package raises ValueError, struct errors, IndexError...
        raise KVMemError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: {exc})",
                         hint="is the download complete? re-fetch the model") from None
    out: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        try:
            out[name] = fld.contents()
        except Exception:  # noqa: BLE001 - unreadable fields are skipped, not fatal
            continue
    return out


def geometry_from_gguf(path: Path) -> Geometry:
    meta = read_gguf_metadata(path)
    return geometry_from_metadata(meta, source=str(path), weights_bytes=path.stat().st_size)


__all__ = ["CACHE_TYPES", "CacheType", "ForkBehaviour", "Geometry", "KVEstimate", "KVMemError",
           "estimate", "geometry_from_gguf", "geometry_from_metadata", "max_context", "parse_pair"]
