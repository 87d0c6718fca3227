"""``invoke recommend``: the K/V config for a model on a host at a context.

It must fit the host's memory at the target context (the planner), pass the quality gates
(measured by ``quality``, recorded in ``<workspace>/quality/index.json``) and, among those, decode
fastest at that depth (measured by ``bench``, when a bench report is given). Configs not yet
measured are shown as such; with none measured, the fallback follows the field's guidance:
protect K with q8_0 for low-bit weights and for models with >= 6 query heads per KV head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import ConfigError, UsageError
from ollama_turbo.core.settings import Settings
from ollama_turbo.fork.behaviour import effective
from ollama_turbo.fork.cache_types import BUILTIN, GIB, BlockTable, label
from ollama_turbo.kv import memory
from ollama_turbo.kv.geometry import geometry_from_gguf, read_gguf_metadata
from ollama_turbo.kv.plan import DEFAULT_RESERVE_GIB, Budget
from ollama_turbo.prove import quality

CANDIDATES = [("q8_0", "q8_0"), ("q8_0", "turbo4"), ("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo3", "turbo3"),
              ("q4_0", "q4_0"), ("q8_0", "turbo2"), ("turbo2", "turbo2")]
LOW_BIT_WEIGHTS = ("Q2", "Q3", "Q4", "IQ1", "IQ2", "IQ3", "IQ4")
# GGUF general.file_type values of 4 bits or fewer per weight (Q4_0, Q4_1, Q2_K, Q3_K_*, Q4_K_*, IQ*)
LOW_BIT_FILE_TYPES = {"2", "3", "10", "11", "12", "13", "14", "15", *map(str, range(16, 32))}


@dataclass
class Option:
    config: str
    kv_mib: float
    fits: bool
    quality: str         # PASS / BORDERLINE / FAIL / unmeasured
    kld: float | None
    decode_tps: float | None
    note: str = ""
    cpu_fallback: str | None = None  # the bench found this config's attention leaving the GPU on this host


@dataclass
class Recommendation:
    model: str
    host: str
    ctx: int
    choice: str | None
    why: str
    measured: bool
    options: list[Option] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The settings lines to use."""
        if self.choice is None:
            return []
        k, _, v = self.choice.partition("/")
        v = v or k
        return ["# this model's own cache, in its Modelfile (a build with per-model cache types):",
                f"PARAMETER kv_cache_type {self.choice}", "",
                "# or in the model's spec (modelfiles/<name>.yaml), which renders that line:", f"kv: {self.choice}",
                "", "# or for every model on the host without its own (invoke.yaml):", "turbo:", "  kv:",
                f"    type_k: {k}", f"    type_v: {v}"]

    def render(self) -> str:
        out = [f"recommend: {self.model} on {self.host} at {self.ctx:,} tokens", "",
               f"{'K/V':<14}{'KV MiB':>10}  {'fits':<5}{'quality':<12}{'mean KLD':>10}{'decode tok/s':>14}  note"]
        for o in self.options:
            kld = f"{o.kld:.5f}" if o.kld is not None else "-"
            dec = f"{o.decode_tps:.1f}" if o.decode_tps is not None else "-"
            out.append(f"{o.config:<14}{o.kv_mib:>10,.1f}  {'yes' if o.fits else 'no':<5}{o.quality:<12}{kld:>10}"
                       f"{dec:>14}  {o.note}")
        out += ["", ("choice: " + self.choice if self.choice else "no choice") + f" — {self.why}"]
        if self.choice:
            out += ["", *self.lines()]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _decode_at(bench: dict[str, Any] | None, config: str, ctx: int) -> float | None:
    for r in (bench or {}).get("results", []):
        if r["label"] == config and not r.get("error"):
            measured = [x for x in r.get("perf", []) if "decode_tps" in x]
            if measured:
                nearest = min(measured, key=lambda x: abs(x["depth"] - ctx))
                return float(nearest["decode_tps"]["mean"])
    return None


def _fallback(bench: dict[str, Any] | None, config: str) -> str | None:
    return next((r.get("cpu_fallback") for r in (bench or {}).get("results", []) if r["label"] == config), None)


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
    for pair in CANDIDATES:
        est = memory.estimate(geo, ctx, pair[0], pair[1], fb, blocks=blocks)
        v = quality.verdict_for(settings.workspace, model_sha, pair)
        changed = effective(pair[0], pair[1], n_layer=geo.n_layer, gqa_ratio=geo.gqa_ratio, fb=fb).explain()
        fell = _fallback(bench, label(*pair))
        if not fell and v and v.get("cpu_fallback") and v.get("backend") == "cuda" and h.os == "linux":
            fell = f"{v['cpu_fallback']} (quality run on the CUDA build)"
        options.append(Option(label(*pair), est.mib, est.memory_bytes <= budget.kv_bytes,
                              v["verdict"] if v else "unmeasured", v["kld"] if v else None,
                              _decode_at(bench, label(*pair), ctx), fell or changed, fell))
    good = [o for o in options if o.fits and o.quality == "PASS" and not o.cpu_fallback]
    rec = Recommendation(model.name, host, ctx, None, "", bool(good), options)
    if good:
        timed = [o for o in good if o.decode_tps is not None]
        best = max(timed, key=lambda o: o.decode_tps or 0.0) if timed else min(good, key=lambda o: o.kld or 0.0)
        rec.choice = best.config
        rec.why = ("fits, passes the quality gates and decodes fastest at this depth" if timed
                   else "fits and passes the quality gates with the lowest KL divergence (no bench given)")
        for o in options:
            if o is not best and not o.note:
                o.note = ("does not fit" if not o.fits else "failed the quality gate" if o.quality == "FAIL"
                          else "not measured" if o.quality == "unmeasured" else
                          "slower at this depth" if timed and o in good else "")
        return rec
    # nothing measured passes: the field's guidance, clearly labelled
    meta = read_gguf_metadata(model)
    ftype = str(meta.get("general.file_type", ""))
    low_bit = any(x in model.name.upper() for x in LOW_BIT_WEIGHTS) or ftype in LOW_BIT_FILE_TYPES
    protect = low_bit or geo.gqa_ratio >= 6
    order = ["q8_0/turbo4", "q8_0/turbo3", "q8_0/q8_0"] if protect else ["turbo4", "q8_0/turbo4", "q8_0/q8_0"]
    fitting = [o for o in options if o.fits and o.quality != "FAIL" and not o.cpu_fallback]
    pick = next((o for c in order for o in fitting if o.config == c), None)
    if pick is None:
        rec.why = (f"no config fits {host} at {ctx:,} tokens: {budget.kv_bytes / GIB:.2f} GiB for the cache; "
                   "choose a shorter --ctx or a smaller model")
        return rec
    rec.choice = pick.config
    reasons = (["low-bit weights"] if low_bit else []) + ([f"{geo.gqa_ratio:g} query heads per KV head"]
                                                            if geo.gqa_ratio >= 6 else [])
    rec.why = ("UNMEASURED: no config of this model has passed invoke quality yet; the field's guidance "
               + (f"({', '.join(reasons)}) protects K with q8_0" if protect else "for this model is turbo4")
               + f" ({pick.kv_mib:,.0f} MiB at {ctx:,}). Measure it: invoke quality --model {model}")
    pick.note = "fallback (unmeasured)"
    return rec

