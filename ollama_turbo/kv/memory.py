"""KV-cache memory per cache type, from block sizes, the model geometry and the fork's behaviour.

Pure logic. Which type each layer really gets is :func:`ollama_turbo.fork.behaviour.layer_types`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import UsageError
from ..fork.behaviour import ForkBehaviour, layer_types
from ..fork.cache_types import BUILTIN, GIB, MIB, BlockTable
from .geometry import Geometry

__all__ = ["GIB", "MIB", "Geometry", "KVEstimate", "LayerKV", "estimate", "max_context"]


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
    recurrent_bytes: int = 0  # hybrid models: the fixed recurrent state (not KV cache; f32, any context)
    blocks: str = ""          # where the block formats came from

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

    @property
    def memory_bytes(self) -> int:
        """What the model's context memory needs in all: the KV cache and any recurrent state."""
        return self.total_bytes + self.recurrent_bytes


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to



def estimate(geo: Geometry, n_ctx: int, type_k: str, type_v: str | None = None,
             fb: ForkBehaviour | None = None, *, blocks: BlockTable = BUILTIN, n_seq: int = 1) -> KVEstimate:
    """KV cache bytes for ``n_ctx`` tokens, layer by layer (and a hybrid model's recurrent state for
    ``n_seq`` sequences), with the block formats of ``blocks``."""
    fb = fb or ForkBehaviour()
    type_v = type_v or type_k
    blocks.get(type_k), blocks.get(type_v)
    if n_ctx <= 0:
        raise UsageError(f"context size must be positive, got {n_ctx}")
    types, notes = layer_types(geo.n_layer, geo.gqa_ratio, type_k.lower(), type_v.lower(), fb)
    est = KVEstimate(type_k=type_k, type_v=type_v, n_ctx=n_ctx, notes=notes, blocks=blocks.source)
    if geo.n_recurrent:
        est.recurrent_bytes = geo.n_recurrent * geo.recurrent_state_bytes * max(1, n_seq)
        est.notes.append(f"hybrid model: {geo.n_layer - geo.n_recurrent} of {geo.n_layer} layers keep a KV cache; "
                         f"{geo.n_recurrent} keep a recurrent state of {est.recurrent_bytes / MIB:,.1f} MiB (f32, "
                         "the same at any context and cache type)")
    padded = set()
    for il, (tk, tv) in enumerate(types):
        kv_heads = geo.n_head_kv[il]
        if kv_heads == 0 or geo.is_recurrent(il):
            continue
        cells = n_ctx
        if geo.is_swa(il) and geo.sliding_window:
            cells = min(n_ctx, _pad(geo.sliding_window + fb.ubatch, 256))
        ck, cv = blocks.get(tk), blocks.get(tv)
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
                fb: ForkBehaviour | None = None, *, step: int = 1024, limit: int | None = None,
                blocks: BlockTable = BUILTIN, n_seq: int = 1) -> int:
    """The largest multiple of ``step`` tokens whose KV cache (and recurrent state) fits ``budget_bytes``."""
    limit = limit or geo.n_ctx_train or 1 << 20
    lo, hi = 0, limit // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(geo, mid * step, type_k, type_v, fb, blocks=blocks, n_seq=n_seq).memory_bytes <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo * step
