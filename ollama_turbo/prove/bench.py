"""``invoke bench``: speed per context depth, latency, KV memory, needle retrieval and A/B outputs,
for each cache type, with the same prompts in the same order.

No cache type is best everywhere (decode slows with depth for every quantized type, and
differently per backend), so everything is reported per depth and per K/V pair.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core import cpu_variants
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.progress import bar
from ollama_turbo.core.sizes import parse_sizes
from ollama_turbo.fork.behaviour import ForkBehaviour, effective
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable
from ollama_turbo.kv import memory
from ollama_turbo.kv.geometry import Geometry, geometry_from_gguf
from ollama_turbo.prove import depth, identity, offload
from ollama_turbo.prove.bench_report import measured, write_outputs
from ollama_turbo.prove.client import OLLAMA_SAFE_PREDICT, Endpoint, complete
from ollama_turbo.prove.ollama_api import ApiError
from ollama_turbo.prove.prompts import FILLER, PROMPTS
from ollama_turbo.prove.server_log import kv_lines


@dataclass
class Options:
    depths: list[int] = field(default_factory=lambda: [0, 2048, 8192])
    reps: int = 3
    n_predict: int = 32
    niah_lengths: list[int] = field(default_factory=lambda: [1024, 4096])
    niah_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    ab_predict: int = 128
    geometry: Geometry | None = None
    blocks: BlockTable = BUILTIN  # the build's block formats (from its manifest) for the planner's prediction
    fork: ForkBehaviour = field(default_factory=ForkBehaviour)  # the fork's knobs the servers run with
    measure_fallback: bool = False  # measure a config that falls back to the CPU at every depth

    @classmethod
    def parse(cls, *, depths: str, reps: int, n_predict: int, ab_predict: int, niah_lengths: str,
              niah_depths: str, gguf: str = "") -> Options:
        """Options from the command line's text (sizes like ``2k``; ``--niah-lengths ''`` turns needles off)."""
        opts = cls(depths=parse_sizes(depths, option="--depths", minimum=0) or [0], reps=reps, n_predict=n_predict,
                   ab_predict=ab_predict,
                   niah_lengths=parse_sizes(niah_lengths, option="--niah-lengths") if niah_lengths else [])
        for flag, value in (("--reps", reps), ("--n-predict", n_predict)):
            if value < 1:
                raise UsageError(f"{flag} {value}: must be 1 or more", hint=f"e.g. {flag} 3")
        if ab_predict < 0:
            raise UsageError(f"--ab-predict {ab_predict}: must be 0 (no A/B set) or more", hint="e.g. --ab-predict 128")
        if niah_lengths:
            try:
                opts.niah_depths = [float(x) for x in niah_depths.split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"--niah-depths {niah_depths!r}: give fractions such as 0.1,0.5,0.9") from None
            bad = [d for d in opts.niah_depths if not 0 < d < 1]
            if bad:
                raise UsageError(f"--niah-depths {niah_depths!r}: {bad[0]} is not a fraction between 0 and 1",
                                 hint="give fractions such as 0.1,0.5,0.9")
        else:
            opts.niah_depths = []
        if gguf:
            opts.geometry = geometry_from_gguf(Path(gguf))
        return opts


def predict_for(ep: Endpoint, n_predict: int) -> int:
    """Tokens to ask of a speed run: as asked, but no more than Ollama gives for text that repeats one token
    (its repeat guard would end the answer without timings)."""
    return min(n_predict, OLLAMA_SAFE_PREDICT) if ep.api == "ollama" else n_predict


def default_out(workspace: Path) -> Path:
    return workspace / "bench" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def measured_anything(report: dict[str, Any]) -> bool:
    """Did any cache type measure decode at some depth? (a bench that measured nothing has not succeeded)"""
    return any(measured(r) for r in report["results"])


def summary(report: dict[str, Any]) -> str:
    """One line per cache type: decode at the deepest depth measured, prefill, KV memory, needles, failures."""
    lines = []
    for r in report["results"]:
        if r.get("error") and not r.get("perf"):
            lines.append(f"{r['label']:<14} FAILED: {r['error'].splitlines()[0][:160]}")
            continue
        ok = measured(r)
        last = ok[-1] if ok else None
        kv = (r.get("kv") or {}).get("logged_mib")
        pp = (r.get("prefill") or {}).get("prefill_tps", {}).get("mean")
        failed = [x["depth"] for x in r.get("perf", []) if "error" in x and not x["error"].startswith("skipped")]
        niah = r.get("niah", [])
        lines.append(f"{r['label']:<14} " + (f"decode {last['decode_tps']['mean']:8.1f} tok/s at depth "
                                             f"{last['actual_depth']:>6} (asked {last['depth']})"
                                             if last else "no depth measured")
                     + (f", prefill pp{depth.PREFILL_TOKENS} {pp:,.1f} tok/s" if pp else "")
                     + f", KV {kv if kv is not None else '-'} MiB, needles {sum(g['found'] for g in niah)}/{len(niah)}"
                     + (f"; failed at depth {', '.join(map(str, failed))} (see bench.json)" if failed else "")
                     + (f"\n{'':<14} {r['cpu_fallback']}" if r.get("cpu_fallback") else ""))
    return "\n".join(lines)


def words_for_tokens(n: int) -> str:
    """About ``n`` tokens of filler (English prose runs at about 1.3 tokens per word)."""
    words = FILLER.split()
    target = int(n / 1.3)
    out = (words * (target // len(words) + 1))[:target]
    return " ".join(out)


NEEDLE_WORDS = ["amberline", "copperfield", "driftwood", "emberlake", "foxglove", "granitehall"]


def niah_prompt(length: int, depth: float, word: str) -> str:
    hay = words_for_tokens(length).split(". ")
    at = max(0, min(len(hay), int(len(hay) * depth)))
    hay.insert(at, f"The secret passphrase is {word}")
    return ". ".join(hay) + ".\n\nQuestion: What is the secret passphrase?\nAnswer: The secret passphrase is"


def found(answer: str, word: str) -> bool:
    first = re.findall(r"[A-Za-z]+", answer)
    return bool(first) and first[0].lower() == word


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean_sd(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs) if xs else 0.0, "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


Progress = Callable[[str], None]


FAULTS = (TurboError, ApiError, requests.RequestException)


def _attempt(entry: dict[str, Any], steps: int, tick: Progress, what: str,
             body: Callable[[Callable[[], None]], None]) -> None:
    """Run ``body`` (which calls its argument once per finished step); a fault is recorded in ``entry``
    and the steps it did not reach still advance the progress bar."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        tick(what)

    try:
        body(step)
    except FAULTS as exc:
        entry["error"] = str(exc)
        for _ in range(steps - done):
            tick(f"{what}: failed")


def bench_endpoint(ep: Endpoint, opts: Options, tick: Progress, res: dict[str, Any] | None = None,
                   save: Callable[[], None] = lambda: None, reference: int | None = None) -> dict[str, Any]:
    """Measure one endpoint into ``res`` (saved after each step: a crash loses nothing already measured).

    A depth the server cannot hold, or that fails, is recorded with its error and the bench goes on.
    A config whose graph leaves the GPU (against ``reference``, the f16 cache's graph splits) is measured
    at the first depth only, unless ``opts.measure_fallback``: deeper prompts would time the CPU's attention.
    """
    res = res if res is not None else {}
    res.update({"label": ep.label, "type_k": ep.type_k, "type_v": ep.type_v, "url": ep.url})
    count = depth.counter(ep)
    n_ctx = res["n_ctx"] = depth.context_size(ep)  # loads the model
    before = identity.check(ep, opts.fork, when="before")
    res["server"] = {"before": before.to_json()}
    if before.ok is False:
        res["mismatch"] = True
        raise ServerMismatch(before.evidence)
    ttfts: list[float] = []
    itls: list[float] = []
    overhead = []

    def too_deep(tokens: int) -> str | None:
        if n_ctx and tokens > n_ctx:
            return f"{tokens} tokens do not fit the server's context of {n_ctx}"
        return None

    pp = res["prefill"] = {"requested": depth.PREFILL_TOKENS}

    def prefill(step: Callable[[], None]) -> None:
        if why := too_deep(depth.PREFILL_TOKENS + 1):
            raise depth.DepthError(why)
        prompt, _ = depth.fit(depth.PREFILL_TOKENS, count)
        # as llama-bench: a warm-up pass apart (first-use kernel loads and graph capture are not prefill),
        # then every timed prompt new to the server (its own tag first: no prompt-cache reuse)
        complete(ep.url, ep.api, depth.tag() + prompt, n_predict=1, model=ep.model, ignore_eos=True)
        pp["warmup"] = 1
        runs = []
        for _ in range(opts.reps):
            runs.append(complete(ep.url, ep.api, depth.tag() + prompt, n_predict=1, model=ep.model, ignore_eos=True))
            step()
        pp.update(tokens=round(statistics.fmean(r.prompt_n for r in runs)),
                  prefill_tps=mean_sd([r.prefill_tps for r in runs]))

    _attempt(pp, opts.reps, tick, f"{ep.label} prefill {depth.PREFILL_TOKENS}", prefill)
    fell = None
    if ep.log is not None:  # where the server runs this config's graph (GPU, or ops back on the CPU)
        where = offload.placement(ep.log())
        res["placement"] = where.to_json()
        fell = res["cpu_fallback"] = offload.fallback(where, reference)
    save()
    perf: list[dict[str, Any]] = []
    res["perf"] = perf
    for i, d in enumerate(opts.depths):
        entry: dict[str, Any] = {"depth": d}
        perf.append(entry)
        if fell and i > 0 and not opts.measure_fallback:
            entry["error"] = "skipped: CPU fallback (see above); --measure-fallback measures it anyway"
            for _ in range(opts.reps):
                tick(f"{ep.label} depth {d}: skipped")
            continue

        def at_depth(step: Callable[[], None], d: int = d, entry: dict[str, Any] = entry) -> None:
            n_predict = predict_for(ep, opts.n_predict)
            entry["n_predict"] = n_predict
            if why := too_deep(d + n_predict):
                raise depth.DepthError(f"depth {d} + {n_predict} generated: {why}")
            prompt, _ = depth.fit(d, count)
            runs = []
            for _ in range(opts.reps):
                c = complete(ep.url, ep.api, depth.tag() + prompt, n_predict=n_predict, model=ep.model,
                             ignore_eos=True)
                runs.append(c)
                ttfts.append(c.ttft_s * 1000)
                itls.extend(x * 1000 for x in c.itl_s)
                if c.client_decode_tps and c.decode_tps:
                    overhead.append(1 - c.client_decode_tps / c.decode_tps)
                step()
            bad = next((r for r in runs if r.why_no_timings()), None)
            if bad is not None:
                raise depth.DepthError(f"depth {d}: the server answered without timings: {bad.why_no_timings()} "
                                       f"(prompt tokens {[r.prompt_n for r in runs]}, generated "
                                       f"{[r.predicted_n for r in runs]})")
            entry.update(actual_depth=round(statistics.fmean(r.prompt_n for r in runs)),
                         prompt_tokens=runs[0].prompt_n, prefill_tps=mean_sd([r.prefill_tps for r in runs]),
                         decode_tps=mean_sd([r.decode_tps for r in runs]))

        _attempt(entry, opts.reps, tick, f"{ep.label} depth {d}", at_depth)
        save()
    res["ttft_ms"] = {"p50": pct(ttfts, .5), "p90": pct(ttfts, .9), "p99": pct(ttfts, .99)}
    res["itl_ms"] = {"p50": pct(itls, .5), "p90": pct(itls, .9), "p99": pct(itls, .99)}
    res["client_overhead"] = statistics.fmean(overhead) if overhead else None
    res["kv"] = kv_memory(ep, opts.geometry, opts.blocks)
    grid: list[dict[str, Any]] = []
    res["niah"] = grid
    for length in opts.niah_lengths:
        for i, at in enumerate(opts.niah_depths):
            word = NEEDLE_WORDS[(length + i) % len(NEEDLE_WORDS)]
            cell: dict[str, Any] = {"length": length, "depth": at, "found": False}
            try:
                if why := too_deep(length + 8):
                    raise depth.DepthError(why)
                c = complete(ep.url, ep.api, niah_prompt(length, at, word), n_predict=8, model=ep.model)
                cell.update(found=found(c.text, word), answer=c.text.strip()[:60], prompt_tokens=c.prompt_n)
            except FAULTS as exc:
                cell["error"] = str(exc)
            grid.append(cell)
            tick(f"{ep.label} needle {length}@{at:.0%}")
    save()
    outputs: list[dict[str, Any]] = []
    res["ab"] = outputs
    for name, prompt in PROMPTS if opts.ab_predict > 0 else []:  # --ab-predict 0: no A/B set (0 would be
        try:                                                          # "no limit" to Ollama)
            c = complete(ep.url, ep.api, prompt, n_predict=opts.ab_predict, model=ep.model)
            outputs.append({"prompt": name, "output": c.text, "decode_tps": c.decode_tps,
                            **({"stopped": c.why_no_timings()} if c.why_no_timings() else {})})
        except FAULTS as exc:
            outputs.append({"prompt": name, "output": "", "error": str(exc)})
        tick(f"{ep.label} A/B {name}")
    after = identity.check(ep, opts.fork, when="after")
    res["server"]["after"] = after.to_json()
    if after.ok is False:  # what was measured may not be this config's: it does not count
        res["mismatch"] = True
        res["error"] = f"server mismatch: {after.evidence}"
    save()
    return res


class ServerMismatch(TurboError):
    """The server answering for a config is not the build, model or K/V its label says."""


def mismatched(report: dict[str, Any]) -> list[str]:
    """The configs whose server was not what their label says (the task fails)."""
    return [r["label"] for r in report["results"] if r.get("mismatch")]


def kv_memory(ep: Endpoint, geo: Geometry | None, blocks: BlockTable = BUILTIN) -> dict[str, Any]:
    out: dict[str, Any] = {"logged_mib": None, "planned_mib": None, "delta": None}
    if ep.log is None:
        out["note"] = "no server log"
        return out
    lines = kv_lines(ep.log())
    if not lines:
        out["note"] = "no llama_kv_cache size line in the server log"
        return out
    last = lines[-1]
    out.update(logged_mib=last.mib, cells=last.cells, seqs=last.seqs, logged_types=[last.type_k, last.type_v])
    if geo is not None:  # a server with a cache per sequence holds ``seqs`` caches of ``cells`` each
        planned = memory.estimate(geo, last.cells, ep.type_k, ep.type_v, blocks=blocks).mib * last.seqs
        out.update(planned_mib=planned, delta=(planned - last.mib) / last.mib, blocks=blocks.source)
        changed = effective(ep.type_k, ep.type_v, n_layer=geo.n_layer, gqa_ratio=geo.gqa_ratio,
                            fb=ForkBehaviour()).explain()
        if changed:
            out["fork"] = changed
    return out


def run(endpoints: list[tuple[Endpoint, Callable[[], AbstractContextManager[Endpoint]]]], opts: Options,
        out: Path, provenance: dict[str, Any],
        progress: Callable[[int], AbstractContextManager[Progress]] = bar) -> dict[str, Any]:
    """Bench every endpoint in turn. bench.json is rewritten after every step; a type whose server
    fails is recorded with its error and the others still run."""
    per_type = len(opts.depths) * opts.reps + opts.reps + len(opts.niah_lengths) * len(opts.niah_depths) + len(PROMPTS)
    report: dict[str, Any] = {"provenance": provenance, "options": {
        "depths": opts.depths, "reps": opts.reps, "n_predict": opts.n_predict, "niah_lengths": opts.niah_lengths,
        "niah_depths": opts.niah_depths, "ab_predict": opts.ab_predict, "prefill_tokens": depth.PREFILL_TOKENS},
        "results": []}
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp = out / "bench.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out / "bench.json")

    with progress(len(endpoints) * per_type) as tick:
        for placeholder, starter in endpoints:
            res: dict[str, Any] = {"label": placeholder.label, "type_k": placeholder.type_k,
                                   "type_v": placeholder.type_v}
            report["results"].append(res)
            try:
                with starter() as ep:
                    try:
                        bench_endpoint(ep, opts, tick, res, save, reference=f16_splits(report))
                    finally:
                        name_sigill(res, ep)
            except ServerMismatch as exc:
                res["error"] = f"server mismatch: {exc.message}"
            except FAULTS as exc:
                res["error"] = str(exc)
            save()
    flag_fallbacks(report)
    write_outputs(report, out)
    return report


def name_sigill(res: dict[str, Any], ep: Endpoint) -> None:
    """A config whose server died of an illegal instruction says so: the CPU variant it loaded, the way out."""
    text = json.dumps(res, default=str)
    if cpu_variants.is_sigill(text):
        log = ep.log() if ep.log is not None else ""
        res["cpu_variant"] = cpu_variants.explain_sigill(log + "\n" + text, where=f"{ep.label}'s server")


def f16_splits(report: dict[str, Any]) -> int | None:
    """The f16 cache's graph splits on this server, where f16 was measured with layers on a GPU: the reference
    a config's splits are held against."""
    f16 = next((offload.Placement.from_json(r.get("placement")) for r in report["results"]
                if r.get("label") == "f16"), None)
    return f16.splits if f16 and f16.on_gpu else None


def flag_fallbacks(report: dict[str, Any]) -> None:
    """Mark each config whose graph leaves the GPU (``cpu_fallback``), against the f16 cache's graph splits
    when f16 was measured on the same server (also when it was measured after the config)."""
    reference = f16_splits(report)
    for r in report["results"]:
        p = offload.Placement.from_json(r.get("placement"))
        if p is not None and not r.get("cpu_fallback"):
            r["cpu_fallback"] = offload.fallback(p, reference)


