"""``invoke recommend``: the K/V config for a model on a host at a context.

This module reads what the rule (:mod:`ollama_turbo.prove.choose`) decides on: the planner's cache size per
config, the quality verdicts (``<workspace>/quality/index.json``), a bench's decode speeds and CPU fallbacks,
and the model's traits the field's guidance looks at: protect K with q8_0 for low-bit weights and for models
with >= 6 query heads per KV head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import ConfigError, UsageError
from ollama_turbo.core.kv_types import MIB, KVPair, label
from ollama_turbo.core.settings import Settings
from ollama_turbo.fork.behaviour import effective
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable
from ollama_turbo.kv import memory
from ollama_turbo.kv.geometry import geometry_from_gguf, read_gguf_metadata
from ollama_turbo.kv.plan import DEFAULT_RESERVE_GIB, Budget
from ollama_turbo.prove import offload, quality
from ollama_turbo.prove.choose import STOCK, UNMEASURED, Option, Situation, decide

CANDIDATES = [KVPair.parse(p) for p in ("q8_0", "q8_0/turbo4", "q8_0/turbo3", "turbo4", "turbo3", "q4_0",
                                         "q8_0/turbo2", "turbo2")]
# stock Ollama's own configs (its build, llama.cpp as Ollama pins it, which rotates quantized caches)
STOCK_CANDIDATES = [KVPair("q8_0", "q8_0"), KVPair("q4_0", "q4_0")]
# the field's order for a model nothing has been measured on: K protected with q8_0, or not
GUIDANCE_PROTECT_K = [KVPair("q8_0", "turbo4"), KVPair("q8_0", "turbo3"), KVPair("q8_0", "q8_0")]
GUIDANCE = [KVPair("turbo4", "turbo4"), KVPair("q8_0", "turbo4"), KVPair("q8_0", "q8_0")]
LOW_BIT_WEIGHTS = ("Q2", "Q3", "Q4", "IQ1", "IQ2", "IQ3", "IQ4")
# GGUF general.file_type values of 4 bits or fewer per weight (Q4_0, Q4_1, Q2_K, Q3_K_*, Q4_K_*, IQ*)
LOW_BIT_FILE_TYPES = {"2", "3", "10", "11", "12", "13", "14", "15", *map(str, range(16, 32))}

__all__ = ["CANDIDATES", "Option", "Recommendation", "recommend"]


@dataclass
class Recommendation:
    model: str
    host: str
    ctx: int
    choice: str | None
    why: str
    measured: bool
    options: list[Option] = field(default_factory=list)
    next_step: str = ""  # with no choice: what to do about its reason
    stock_measured: bool = True  # stock Ollama's configs of this model were measured (else they are not offered)

    def lines(self) -> list[str]:
        """The settings lines to use."""
        if self.choice is None:
            return []
        if self.choice.startswith(STOCK):
            kv = self.choice.removeprefix(STOCK)
            k, _, v = kv.partition("/")
            return ["# stock Ollama (its own release, or build-ollama --stock, deployed), for every model on the host:",
                    f"OLLAMA_KV_CACHE_TYPE={k}" if not v or v == k else
                    f"LLAMA_ARG_CACHE_TYPE_K={k} LLAMA_ARG_CACHE_TYPE_V={v}"]
        k, _, v = self.choice.partition("/")
        v = v or k
        return ["# this model's own cache, in its Modelfile (a build with per-model cache types):",
                f"PARAMETER kv_cache_type {self.choice}", "",
                "# or in the model's spec (modelfiles/<name>.yaml), which renders that line:", f"kv: {self.choice}",
                "", "# or for every model on the host without its own (invoke.yaml):", "turbo:", "  kv:",
                f"    type_k: {k}", f"    type_v: {v}"]

    def render(self) -> str:
        """The table chosen from; with a choice, why, why not each other config, and the lines to use."""
        out = [f"recommend: {self.model} on {self.host} at {self.ctx:,} tokens", "",
               f"{'K/V':<14}{'KV MiB':>10}  {'fits':<5}{'quality':<12}{'mean KLD':>10}{'ΔPPL':>10}"
               f"{'decode tok/s':>14}  note"]
        for o in self.options:
            kld = f"{o.kld:.5f}" if o.kld is not None else "-"
            dppl = f"{o.dppl:+.4f}" if o.dppl is not None else "-"
            dec = f"{o.decode_tps:.1f}" if o.decode_tps is not None else "-"
            out.append(f"{o.config:<14}{o.kv_mib:>10,.1f}  {'yes' if o.fits else 'no':<5}{o.quality:<12}{kld:>10}"
                       f"{dppl:>10}{dec:>14}  {o.note}".rstrip())
        if not self.stock_measured:
            out.append("(stock Ollama's q8_0 and q4_0 are not measured for this model: invoke quality --stock "
                       "STOCK_DIST tells whether it needs a custom build at all)")
        if self.choice is None:
            return "\n".join(out)
        out += ["", f"choice: {self.choice} — {self.why}", "", "not chosen:"]
        out += [f"  {o.config}: {o.reason}" for o in self.options if o.config != self.choice]
        return "\n".join([*out, "", *self.lines()])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _bench_result(bench: dict[str, Any] | None, config: str) -> dict[str, Any] | None:
    """A bench's result for this config, by the one K/V label of its types."""
    for r in (bench or {}).get("results", []):
        stock = STOCK if str(r.get("label", "")).startswith(STOCK) else ""
        if (stock + label(r["type_k"], r["type_v"]) if "type_k" in r and "type_v" in r else r["label"]) == config:
            return dict(r)
    return None


def _decode_at(result: dict[str, Any] | None, ctx: int) -> tuple[float, int] | None:
    """Decode tok/s at the bench depth nearest the context, and that depth."""
    if not result or result.get("error"):
        return None
    measured = [x for x in result.get("perf", []) if "decode_tps" in x]
    if not measured:
        return None
    nearest = min(measured, key=lambda x: abs(x["depth"] - ctx))
    return float(nearest["decode_tps"]["mean"]), int(nearest["depth"])


def _gpu_evidence(result: dict[str, Any] | None, verdict: dict[str, Any] | None,
                  cuda_counts: bool) -> tuple[str | None, str, str | None]:
    """(CPU fallback, what found it, what showed it on the GPU) from the bench, else a CUDA quality run."""
    if result is not None:
        placed = offload.Placement.from_json(result.get("placement"))
        if result.get("cpu_fallback"):
            return str(result["cpu_fallback"]), "bench", None
        if placed is not None and placed.on_gpu:
            return None, "", f"{placed.splits} graph splits in the bench"
    if verdict and cuda_counts:
        if verdict.get("cpu_fallback"):
            return str(verdict["cpu_fallback"]), "quality run on the CUDA build", None
        if verdict.get("graph_splits") is not None and (verdict.get("gpu_layers") or [0])[0] > 0:
            return None, "", f"{verdict['graph_splits']} graph splits in the quality run on the CUDA build"
    return None, "", None


def recommend(settings: Settings, model: Path, host: str, ctx: int, *, bench: dict[str, Any] | None = None,
              reserve_gib: float = DEFAULT_RESERVE_GIB, blocks: BlockTable = BUILTIN) -> Recommendation:
    h = settings.host(host)
    if h.memory_gib is None:
        raise ConfigError("recommend needs the host's memory", key=f"hosts.{host}.memory_gib",
                          hint="set it in invoke.yaml")
    if ctx <= 0:
        raise UsageError(f"--ctx {ctx} must be positive")
    geo = geometry_from_gguf(model)
    fb = settings.kv.fork
    budget = Budget(host, h.memory_gib, geo.weights_bytes, reserve_gib)
    model_sha = quality.model_sha256(settings.workspace, model)
    options = []
    measured_stock = any(quality.verdict_for(settings.workspace, model_sha, p, stock=True) for p in STOCK_CANDIDATES)
    stock_pairs = STOCK_CANDIDATES if measured_stock else []
    for pair, stock in [*((p, True) for p in stock_pairs), *((p, False) for p in CANDIDATES)]:
        config = (STOCK if stock else "") + pair.label
        est = memory.estimate(geo, ctx, pair.k, pair.v, fb, blocks=blocks)
        v = quality.verdict_for(settings.workspace, model_sha, pair, stock=stock)
        result = _bench_result(bench, config)
        fell, source, on_gpu = _gpu_evidence(result, v, v is not None and v.get("backend") == "cuda"
                                             and h.os == "linux")
        decode = _decode_at(result, ctx)
        options.append(Option(
            config, est.mib, est.memory_bytes <= budget.kv_bytes, v["verdict"] if v else UNMEASURED,
            v.get("kld") if v else None, v.get("dppl") if v else None, v.get("ctx") if v else None,
            decode[0] if decode else None, decode[1] if decode else None, fell, source, on_gpu,
            effective(pair.k, pair.v, n_layer=geo.n_layer, gqa_ratio=geo.gqa_ratio, fb=fb).explain(),
            max_ctx=memory.max_context(geo, budget.kv_bytes, pair.k, pair.v, fb, blocks=blocks, limit=1 << 24)))
    meta = read_gguf_metadata(model)
    ftype = str(meta.get("general.file_type", ""))
    low_bit = any(x in model.name.upper() for x in LOW_BIT_WEIGHTS) or ftype in LOW_BIT_FILE_TYPES
    traits = (["low-bit weights"] if low_bit else []) + ([f"{geo.gqa_ratio:g} query heads per KV head"]
                                                         if geo.gqa_ratio >= 6 else [])
    guidance = GUIDANCE_PROTECT_K if traits else GUIDANCE
    d = decide(options, Situation(str(model), host, ctx, budget.kv_bytes / MIB,
                                  tuple(p.label for p in guidance), ", ".join(traits)))
    return Recommendation(model.name, host, ctx, d.choice.config if d.choice else None, d.why, d.measured, options,
                          d.next_step, stock_measured=measured_stock)
