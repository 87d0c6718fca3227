"""``invoke plan``: KV MiB per context and cache type, and the largest context a host fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import ConfigError, UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.settings import Settings
from ollama_turbo.core.sizes import parse_sizes
from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.fork.cache_types import BUILTIN, GIB, MIB, BlockTable, label, parse_pairs
from ollama_turbo.kv import memory
from ollama_turbo.kv.geometry import Geometry, geometry_from_gguf

DEFAULT_RESERVE_GIB = 4.0


@dataclass
class Budget:
    host: str
    memory_gib: float
    weights_bytes: int
    reserve_gib: float

    @property
    def kv_bytes(self) -> int:
        return int(self.memory_gib * GIB - self.weights_bytes - self.reserve_gib * GIB)

    def explain(self) -> str:
        return (f"{self.host}: {self.memory_gib:g} GiB - weights {self.weights_bytes / GIB:.2f} GiB - "
                f"reserve {self.reserve_gib:g} GiB (OS, runtime, compute buffers) = "
                f"{self.kv_bytes / GIB:.2f} GiB for the KV cache")


@dataclass
class Row:
    type_k: str
    type_v: str
    kv_mib: dict[int, float]
    max_context: int | None
    capped_by_model: bool
    notes: list[str]
    arithmetic: str

    @property
    def label(self) -> str:
        return label(self.type_k, self.type_v)


@dataclass
class Plan:
    geometry: Geometry
    contexts: list[int]
    rows: list[Row]
    budget: Budget | None = None
    notes: list[str] = field(default_factory=list)
    blocks: str = BUILTIN.source  # where the block formats came from
    recurrent_mib: float = 0.0    # hybrid models: the fixed recurrent state, beside the KV cache

    def to_json(self) -> dict[str, Any]:
        g = self.geometry
        return {
            "geometry": {"name": g.name, "layers": g.n_layer, "kv_heads": list(g.n_head_kv),
                         "heads": list(g.n_head), "head_dim_k": g.head_dim_k, "head_dim_v": g.head_dim_v,
                         "sliding_window": g.sliding_window, "swa_layers": sum(g.swa_layers),
                         "context_length": g.n_ctx_train, "weights_bytes": g.weights_bytes},
            "budget": None if self.budget is None else {
                "host": self.budget.host, "memory_gib": self.budget.memory_gib,
                "weights_bytes": self.budget.weights_bytes, "reserve_gib": self.budget.reserve_gib,
                "kv_bytes": self.budget.kv_bytes},
            "contexts": self.contexts,
            "blocks": self.blocks,
            "recurrent_state_mib": round(self.recurrent_mib, 3),
            "rows": [{"type_k": r.type_k, "type_v": r.type_v, "kv_mib": {str(c): round(m, 3) for c, m in
                      r.kv_mib.items()}, "max_context": r.max_context, "capped_by_model": r.capped_by_model,
                      "notes": r.notes, "arithmetic": r.arithmetic} for r in self.rows],
        }

    def table_lines(self) -> list[str]:
        """The KV MiB table: a header, then one line per K/V config (and its max context with a budget)."""
        head = f"{'K/V cache':<16}" + "".join(f"{c:>12,}" for c in self.contexts)
        if self.budget:
            head += f"{'max context':>14}"
        lines = [head + "   (KV MiB)"]
        for r in self.rows:
            line = f"{r.label:<16}" + "".join(f"{r.kv_mib[c]:>12,.1f}" for c in self.contexts)
            if self.budget:
                mc = "none fits" if not r.max_context else f"{r.max_context:,}" + ("*" if r.capped_by_model
                                                                                   else "")
                line += f"{mc:>14}"
            lines.append(line)
        return lines

    def render(self) -> str:
        g = self.geometry
        kvh = sorted(set(g.n_head_kv))
        lines = [f"model: {g.name or 'geometry'}: {g.n_layer} layers, "
                 f"{'/'.join(map(str, kvh))} KV heads ({max(g.n_head)} query heads), "
                 f"head dim {g.head_dim_k}/{g.head_dim_v}"
                 + (f", sliding window {g.sliding_window} on {sum(g.swa_layers)} layers"
                    if g.sliding_window else "")]
        if self.budget:
            lines.append("budget: " + self.budget.explain())
        lines.append("block sizes: " + self.blocks)
        if g.n_recurrent:
            lines.append(f"recurrent state: {self.recurrent_mib:,.1f} MiB in {g.n_recurrent} of {g.n_layer} layers "
                         "(f32; the same at every context and cache type; counted in max context, not in KV MiB)")
        lines.append("")
        lines += self.table_lines()
        if any(r.capped_by_model for r in self.rows):
            lines.append(f"* capped at the model's trained context ({g.n_ctx_train:,})")
        lines.append("")
        lines.append("in a Modelfile (a build with per-model cache types): "
                     + "; ".join(f"PARAMETER kv_cache_type {r.label}" for r in self.rows))
        lines.append("")
        lines.append("arithmetic (per token, all layers):")
        for r in self.rows:
            lines.append(f"  {r.label}: {r.arithmetic}")
            lines.extend(f"    note: {n}" for n in r.notes)
        return "\n".join(lines)


def _arithmetic(geo: Geometry, est: memory.KVEstimate, blocks: BlockTable) -> str:
    """e.g. ``40 layers x 8 KV heads x (128 K values x 2 B [f16] + 128 V values x 2 B [f16])``."""
    groups: dict[tuple[str, str, int, int, int], int] = {}
    for x in est.layers:
        kvh = geo.n_head_kv[x.layer]
        dk = x.k_bytes // x.cells if x.cells else 0
        dv = x.v_bytes // x.cells if x.cells else 0
        key = (x.type_k, x.type_v, kvh, dk, dv)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (tk, tv, kvh, k_row, v_row), n in groups.items():
        ck, cv = blocks.get(tk), blocks.get(tv)
        k_vals = k_row * ck.block // ck.block_bytes // kvh
        v_vals = v_row * cv.block // cv.block_bytes // kvh
        parts.append(f"{n} layers x {kvh} KV heads x ({k_vals} K values x {ck.block_bytes}/{ck.block} B "
                     f"[{tk}] + {v_vals} V values x {cv.block_bytes}/{cv.block} B [{tv}])")
    per_tok = sum((x.k_bytes + x.v_bytes) / x.cells for x in est.layers if x.cells)
    return f"{' + '.join(parts)} = {per_tok / 1024:,.2f} KiB per token"


def make_plan(geo: Geometry, contexts: list[int], pairs: list[KVPair], *,
              fb: ForkBehaviour | None = None, budget: Budget | None = None, blocks: BlockTable = BUILTIN) -> Plan:
    if not contexts:
        raise UsageError("give at least one context size (--ctx)")
    if not pairs:
        raise UsageError("give at least one cache type (--types)")
    fb = fb or ForkBehaviour()
    rows = []
    recurrent = 0
    for tk, tv in pairs:
        ests = {c: memory.estimate(geo, c, tk, tv, fb, blocks=blocks) for c in contexts}
        first = ests[contexts[0]]
        recurrent = first.recurrent_bytes
        max_ctx, capped = None, False
        if budget is not None:
            max_ctx = 0 if budget.kv_bytes <= 0 else memory.max_context(
                geo, budget.kv_bytes, tk, tv, fb, limit=geo.n_ctx_train or None, blocks=blocks)
            capped = bool(geo.n_ctx_train) and max_ctx == geo.n_ctx_train // 1024 * 1024 and \
                memory.estimate(geo, geo.n_ctx_train, tk, tv, fb, blocks=blocks).memory_bytes <= budget.kv_bytes
        rows.append(Row(tk, tv, {c: e.total_bytes / MIB for c, e in ests.items()}, max_ctx, capped,
                        first.notes, _arithmetic(geo, first, blocks)))
    return Plan(geometry=geo, contexts=contexts, rows=rows, budget=budget, blocks=blocks.source,
                recurrent_mib=recurrent / MIB)


def plan_task(settings: Settings, *, model: str = "", layers: int = 0, kv_heads: int = 0, head_dim: int = 0,
              heads: int = 0, weights_gib: float = 0.0, ctx: str, types: str, host: str = "",
              reserve_gib: float = DEFAULT_RESERVE_GIB, blocks: BlockTable = BUILTIN) -> Plan:
    """``invoke plan``: the geometry from a GGUF or from numbers, sized for a host when one is named."""
    if model:
        geo = geometry_from_gguf(Path(model).expanduser())
    elif layers and kv_heads and head_dim:
        geo = Geometry.simple(layers, kv_heads, head_dim, heads=heads or None,
                              weights_bytes=int(weights_gib * GIB))
    else:
        raise UsageError("give --model GGUF, or --layers, --kv-heads and --head-dim")
    budget = None
    if host:
        h = settings.host(host)
        if h.memory_gib is None:
            raise ConfigError("no memory size for this host", key=f"hosts.{host}.memory_gib",
                              hint="set it in invoke.yaml")
        budget = Budget(host, h.memory_gib, geo.weights_bytes, reserve_gib)
    return make_plan(geo, parse_sizes(ctx, option="--ctx"), parse_pairs(types),
                     fb=settings.kv.fork, budget=budget, blocks=blocks)
