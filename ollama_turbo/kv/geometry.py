"""A model's geometry (what decides its KV cache size), from GGUF metadata or given by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..fork.cache_types import KVMemError

# More than any model has: a bigger number is a typo (and would size tables of that many layers).
MAX_LAYERS = 4096
MAX_HEADS = 8192
MAX_HEAD_DIM = 65536
LIMITS = {"layers": MAX_LAYERS, "kv heads": MAX_HEADS, "heads": MAX_HEADS, "head dim": MAX_HEAD_DIM}
NOT_A_MODEL = "check the file or numbers describe a real model (a GGUF's own metadata, or its model card)"


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
    # Hybrid models (qwen35, qwen3next, ...): layers that keep a fixed-size recurrent state instead of a
    # KV cache, and that state's size per layer and sequence (f32, whatever the context or cache type).
    recurrent_layers: tuple[bool, ...] = ()
    recurrent_state_bytes: int = 0

    def is_recurrent(self, il: int) -> bool:
        return bool(self.recurrent_layers) and self.recurrent_layers[il]

    @property
    def n_recurrent(self) -> int:
        return sum(self.recurrent_layers)

    @classmethod
    def simple(cls, layers: int, kv_heads: int, head_dim: int, heads: int | None = None,
               **kw: Any) -> Geometry:
        for what, n in (("layers", layers), ("kv heads", kv_heads), ("head dim", head_dim), ("heads", heads or 1)):
            if n <= 0:
                raise UsageError(f"{what} must be positive, got {n}")
            if n > LIMITS[what]:
                raise UsageError(f"{what}: {n} is more than {LIMITS[what]:,}, more than any model has")
        return cls(n_layer=layers, n_head_kv=(kv_heads,) * layers,
                   n_head=((heads or kv_heads),) * layers, head_dim_k=head_dim, head_dim_v=head_dim, **kw)

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]

    @property
    def gqa_ratio(self) -> float:
        kv = [k for k in self.n_head_kv if k]
        return max(h / k for h, k in zip(self.n_head, self.n_head_kv, strict=True) if k) if kv else 1.0



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

    if n_layer > MAX_LAYERS:
        raise KVMemError(f"{source}: {arch}.block_count is {n_layer:,}, more than {MAX_LAYERS:,} layers: not a model's",
                         hint=NOT_A_MODEL)
    n_head = per_layer(heads, "attention.head_count")
    n_head_kv = per_layer(heads_kv if heads_kv is not None else heads, "attention.head_count_kv")
    if max(n_head + n_head_kv) > MAX_HEADS:
        raise KVMemError(f"{source}: {arch}.attention.head_count(_kv) has {max(n_head + n_head_kv):,}, more than "
                         f"{MAX_HEADS:,} heads: not a model's", hint=NOT_A_MODEL)
    dim_k, dim_v = get("attention.key_length"), get("attention.value_length")
    if dim_k is None or dim_v is None:
        embd = get("embedding_length")
        h = max(n_head) if n_head else 0
        if not isinstance(embd, int) or not h:
            raise KVMemError(f"{source}: cannot tell the head size: no {arch}.attention.key_length and "
                             f"no {arch}.embedding_length")
        dim_k = dim_k or embd // h
        dim_v = dim_v or embd // h
    if not 0 < int(dim_k) <= MAX_HEAD_DIM or not 0 < int(dim_v) <= MAX_HEAD_DIM:
        raise KVMemError(f"{source}: head size {dim_k}/{dim_v} is not between 1 and {MAX_HEAD_DIM:,}",
                         hint=NOT_A_MODEL)
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
    recurrent, state = _recurrent(arch, get, n_layer, n_head_kv, source)
    return Geometry(n_layer=n_layer, n_head_kv=n_head_kv, n_head=n_head, head_dim_k=int(dim_k),
                    head_dim_v=int(dim_v), swa_layers=swa, sliding_window=int(window),
                    n_ctx_train=int(ctx_train), weights_bytes=weights_bytes,
                    name=str(kv.get("general.name", "")), recurrent_layers=recurrent, recurrent_state_bytes=state)


# Hybrid architectures whose loader picks full-attention layers by an interval (layer il keeps a KV
# cache when (il + 1) % interval == 0, default 4), and those that mark recurrent layers with zero KV heads.
INTERVAL_HYBRIDS = {"qwen35", "qwen35moe", "qwen3next"}
ZERO_KV_HYBRIDS = {"jamba", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "kimi-linear"}
F32 = 4


def _recurrent(arch: str, get: Any, n_layer: int, n_head_kv: tuple[int, ...],
               source: str) -> tuple[tuple[bool, ...], int]:
    """Which layers are recurrent and the recurrent state per layer and sequence, in bytes."""
    if arch in INTERVAL_HYBRIDS:
        interval = get("full_attention_interval") or 4
        if not isinstance(interval, int) or interval <= 0:
            raise KVMemError(f"{source}: {arch}.full_attention_interval is {interval!r}, expected a positive number")
        layers = tuple((il + 1) % interval != 0 for il in range(n_layer))
    elif arch in ZERO_KV_HYBRIDS:
        layers = tuple(k == 0 for k in n_head_kv)
    else:
        return (), 0
    if not any(layers):
        return (), 0
    conv, inner, state, group = (get(f"ssm.{k}") or 0 for k in ("conv_kernel", "inner_size", "state_size",
                                                                   "group_count"))
    conv_elems = (conv - 1) * (inner + 2 * group * state) if conv > 0 else 0  # the convolution's rolling window
    ssm_elems = state * inner                                              # the recurrent (delta net / SSM) state
    return layers, F32 * (int(conv_elems) + int(ssm_elems))


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
