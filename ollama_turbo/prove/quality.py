"""``invoke quality``: what a compressed KV cache does to the model's predictions.

For each K/V config, against an f16-cache baseline on the same model and the same build, the
build's own ``llama-perplexity`` runs ``--kl-divergence-base`` once per context with the f16
cache and ``--kl-divergence`` per config, and the report gives mean and 99th-percentile KL
divergence, top-1 agreement, perplexity and its change, per context. Perplexity alone can even
improve while the distribution drifts, so the KL divergence is the primary measure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ollama_turbo.core import proc
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.manifest import sha256
from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable
from ollama_turbo.prove import offload, quality_report, server_log
from ollama_turbo.prove.server_log import kv_lines
from ollama_turbo.prove.smoke import cache_type_from_log

INDEX = "index.json"  # <workspace>/quality/index.json: verdicts per model and config, for recommend and deploy


class QualityError(TurboError):
    pass


@dataclass(frozen=True)
class Thresholds:
    """Quality gates: at or below passes, up to twice is borderline, beyond fails."""

    max_kld: float = 0.02   # mean KL divergence against the f16 cache
    max_dppl: float = 0.5   # perplexity increase (the user's own pass criterion)

    @classmethod
    def parse(cls, max_kld: str, max_dppl: str) -> Thresholds:
        values = []
        for flag, text, default in (("--max-kld", max_kld, cls.max_kld), ("--max-dppl", max_dppl, cls.max_dppl)):
            if text in ("", None):
                values.append(default)
                continue
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{flag} {text!r} is not a number", hint=f"e.g. {flag} {default}") from None
            if not math.isfinite(value) or value <= 0:
                raise UsageError(f"{flag} {text!r} must be a positive number", hint=f"e.g. {flag} {default}")
            values.append(value)
        return cls(*values)


def grade(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "BORDERLINE" if value <= 2 * limit else "FAIL"


@dataclass(frozen=True)
class Stock:
    """Stock Ollama's build, measured beside the custom one: the f16 baseline and every config of the types it
    has run on its own llama-perplexity (labelled ``stock <K/V>``); the fork's types on the custom build's."""

    binary: Path
    types: frozenset[str]
    env: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    version: str = ""

    def takes(self, pair: KVPair) -> bool:
        return pair.k in self.types and pair.v in self.types


STOCK = "stock "  # the label of a config measured on stock Ollama's build


@dataclass
class Options:
    pairs: list[KVPair]
    contexts: list[int] = field(default_factory=lambda: [512, 4096])
    chunks: int = 0  # 0: every chunk the corpus has
    thresholds: Thresholds = field(default_factory=Thresholds)
    blocks: BlockTable = BUILTIN
    extra_args: tuple[str, ...] = ()
    threads: int = 0  # llama-perplexity's -t (0: every core of this machine; the KL divergence runs on the CPU)
    gpu_layers: int | None = None  # -ngl (None: all with the build's GPU backend, 0 on a cpu build, else llama.cpp's)
    backend: str = ""  # the build's backend (its manifest), when known
    env: dict[str, str] = field(default_factory=dict)  # the build's tool environment (its GPU backend)
    fork: ForkBehaviour = field(default_factory=ForkBehaviour)  # what the fork does to a K/V pair, for the check
    stock: Stock | None = None  # stock Ollama's build beside the custom one: its types measured with its own tools

    def resolved_threads(self) -> int:
        """``--threads``, else the CPUs this process may run on (a container's, not the host's)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0)) or 2
        except AttributeError:  # macOS
            return os.cpu_count() or 2

    def resolved_gpu_layers(self) -> int | None:
        """None: no ``-ngl``, llama.cpp's own default (all layers on a Metal or static CUDA build)."""
        if self.gpu_layers is not None:
            return self.gpu_layers
        if self.env.get("GGML_BACKEND_PATH"):
            return 999
        return 0 if self.backend == "cpu" else None


NUM = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
STATS = {
    "ppl": rf"Mean PPL\(Q\)\s*:\s*{NUM}\s*±\s*{NUM}",
    "ppl_base": rf"Mean PPL\(base\)\s*:\s*{NUM}",
    "dppl": rf"Mean PPL\(Q\)-PPL\(base\)\s*:\s*{NUM}\s*±\s*{NUM}",
    "kld": rf"Mean\s+KLD:\s*{NUM}\s*±\s*{NUM}",
    "kld_p99": rf"99\.0%\s+KLD:\s*{NUM}",
    "kld_max": rf"Maximum KLD:\s*{NUM}",
    "top1": rf"Same top p:\s*{NUM}\s*±\s*{NUM}\s*%",
}


def parse_stats(text: str) -> dict[str, float]:
    """The statistics llama-perplexity prints after ``--kl-divergence``."""
    out: dict[str, float] = {}
    for key, pattern in STATS.items():
        m = re.search(pattern, text)
        if not m:
            raise QualityError(f"llama-perplexity printed no '{pattern.split(NUM)[0].strip(chr(92))}' line",
                               hint="is this llama.cpp's llama-perplexity?")
        out[key] = float(m.group(1))
        if m.lastindex and m.lastindex > 1:
            out[key + "_err"] = float(m.group(2))
    out["top1"] /= 100.0
    out["top1_err"] = out.get("top1_err", 0.0) / 100.0
    return out


def default_corpus() -> tuple[str, str]:
    """This project's own documentation: in a checkout its README and the manual beside it (docs/*.md, less the
    generated compatibility record); installed, the same text as the package's description carries it."""
    from importlib import metadata

    root = Path(__file__).resolve().parents[2]
    if (root / "README.md").is_file():
        docs = sorted(p for p in (root / "docs").glob("*.md") if not p.name.startswith("compatibility"))
        text = "\n\n".join(p.read_text(errors="replace") for p in [root / "README.md", *docs])
    else:
        try:
            text = metadata.metadata("ollama-turbo").get_payload() or ""  # type: ignore[attr-defined]
        except metadata.PackageNotFoundError:
            text = ""
    if len(text) < 1000:
        raise UsageError("no default corpus: ollama-turbo's documentation is not installed", hint="give --corpus FILE")
    return text, "ollama-turbo's README (its documentation)"


def _run(binary: Path, model: Path, corpus: Path, ctx: int, base: Path, pair: KVPair | None,
         opts: Options, log: Path) -> str:
    argv: list[str | Path] = [binary, "-m", model, "-f", corpus, "-c", str(ctx), "--kl-divergence-base", base,
                              "-fa", "on", "-t", str(opts.resolved_threads()),
                              # llama.cpp's own lines (the KV cache it made, its rotation) are info messages, which
                              # newer llama-perplexity builds print only from this verbosity on
                              "-lv", "4"]
    ngl = opts.resolved_gpu_layers()
    if ngl is not None:
        argv += ["-ngl", str(ngl)]
    if pair is None:
        argv += ["-ctk", "f16", "-ctv", "f16"]
    else:
        argv += ["--kl-divergence", "-ctk", pair.k, "-ctv", pair.v]
    if opts.chunks:
        argv += ["--chunks", str(opts.chunks)]
    r = proc.run([*argv, *opts.extra_args], check=False, timeout=7200, extra_env=opts.env or None)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"+ {' '.join(map(str, argv))}\n{r.stdout}{r.stderr}\n")
    text = r.stdout + r.stderr
    if r.returncode != 0:
        need = re.search(r"you need at least (\d+) tokens", text)
        if need:
            have = re.search(r"have (\d+) tokens|only (\d+) tokens", text)
            raise QualityError(f"the corpus {corpus} is too short for a context of {ctx}: llama-perplexity needs "
                               f"{need.group(1)} tokens (two contexts)"
                               + (f", it has {have.group(1) or have.group(2)}" if have else ""),
                               hint="give a longer --corpus, or smaller --ctx")
        what = pair.label if pair else "the f16 baseline"
        raise QualityError(f"llama-perplexity failed for {what} at -c {ctx} (exit {r.returncode}): "
                           f"{proc.tail(text, 4).strip()}", hint=f"full output: {log}")
    return text


def _kv_at_context(model: Path, rows: list[dict[str, Any]], opts: Options) -> int | None:
    """Each row's KV MiB at the model's own trained context (the planner's, for the build's block formats), so the
    report can set memory against damage; None where the model's geometry cannot be read."""
    from ollama_turbo.kv.geometry import geometry_from_gguf
    from ollama_turbo.kv.memory import estimate

    try:
        geo = geometry_from_gguf(model)
        ctx = geo.n_ctx_train or 0
        if not ctx:
            return None
        for r in rows:
            r["kv_mib"] = round(estimate(geo, ctx, r["type_k"], r["type_v"], blocks=opts.blocks, fb=opts.fork).mib, 2)
    except (TurboError, OSError, ValueError):
        return None
    return ctx


def ran_with(text: str, pair: KVPair, fork: ForkBehaviour) -> str:
    """What cache llama-perplexity really ran for ``pair``, from its own output; a pass that ran another K/V than
    its label is a :class:`QualityError` naming both (its numbers would be filed under the wrong config)."""
    if not kv_lines(text):
        return "not in llama-perplexity's output (no llama_kv_cache line)"
    ok, evidence = cache_type_from_log(text, pair.k, pair.v, "B", fork)
    if not ok:
        raise QualityError(f"llama-perplexity was asked for {pair.label} and its output shows {evidence}: the "
                           "build did not run that cache; nothing was recorded for it",
                           hint="is this build's llama-perplexity built from the fork (invoke build-ollama)?")
    return evidence


def check_baseline(previous: Path, model_sha: str, binary_sha: str, corpus_sha: str | None = None) -> None:
    """A baseline reused from an earlier run must come from the same model, the same build and the same text."""
    try:
        old = json.loads((previous / "quality.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the baseline {previous / 'quality.json'}: {exc}") from None
    if old.get("model", {}).get("sha256") != model_sha:
        raise UsageError(f"the baseline in {previous} was measured on another model "
                         f"({old.get('model', {}).get('name')}, sha256 {str(old.get('model', {}).get('sha256'))[:12]})",
                         hint="run quality without --baseline to measure a new f16 baseline")
    if old.get("build", {}).get("llama_perplexity_sha256") != binary_sha:
        raise UsageError(f"the baseline in {previous} was measured with another build of llama-perplexity",
                         hint="run quality without --baseline to measure a new f16 baseline")
    if corpus_sha and old.get("corpus", {}).get("sha256") not in (None, corpus_sha):
        raise UsageError(f"the baseline in {previous} was measured on another text ({old['corpus'].get('name')})",
                         hint="give the same --corpus, or run quality without --baseline to measure a new f16 "
                              "baseline")


def run(binary: Path, model: Path, opts: Options, out: Path, *, corpus: Path | None = None,
        baseline: Path | None = None, provenance: dict[str, Any] | None = None,
        say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure every config at every context; write quality.json, quality.md and kld_vs_memory.png.

    ``say`` hears one line per pass (the f16 baseline and each config) with its time."""
    if not binary.is_file():
        raise QualityError(f"llama-perplexity not found at {binary}",
                           hint="rebuild with invoke build-ollama (it builds llama-perplexity beside llama-server), "
                                "or pass --llama-perplexity BIN")
    if not model.is_file():
        raise QualityError(f"model file not found: {model}", hint="pass the .gguf file the host serves")
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        text, corpus_name = default_corpus()
        corpus = out / "corpus.txt"
        corpus.write_text(text)
    else:
        if not corpus.is_file():
            raise UsageError(f"corpus file not found: {corpus}")
        corpus_name = str(corpus)
    model_sha, binary_sha, corpus_sha = sha256(model), sha256(binary), sha256(corpus)
    stock = opts.stock
    if baseline is not None:
        check_baseline(baseline, model_sha, sha256(stock.binary) if stock else binary_sha, corpus_sha)
    stock_opts = replace(opts, env=stock.env, backend=stock.backend) if stock else opts
    log = out / "llama-perplexity.log"
    rows: list[dict[str, Any]] = []
    tokens = 0  # the corpus, as llama-perplexity counted it (when it says)
    evaluated: dict[int, int] = {}  # tokens in the chunks evaluated, per context
    t_start = time.perf_counter()
    corpus_path = corpus
    passes = len(opts.contexts) * (len(opts.pairs) + (baseline is None))
    done = 0

    def timed(ctx: int, base: Path, pair: KVPair | None) -> str:
        nonlocal done
        t0 = time.perf_counter()
        on_stock = stock is not None and (pair is None or stock.takes(pair))
        text = _run(stock.binary if stock and on_stock else binary, model, corpus_path, ctx, base, pair,
                    stock_opts if on_stock else opts, log)
        done += 1
        what = (STOCK if on_stock else "") + (pair.label if pair else "f16 baseline")
        say(f"  [{done}/{passes}] {what} at ctx {ctx}: {time.perf_counter() - t0:.1f} s")
        return text

    for ctx in opts.contexts:
        base = (baseline or out) / f"base-{ctx}.kld"
        reference: int | None = None  # the f16 cache's graph splits: a config above it leaves the GPU
        if baseline is None:
            text = timed(ctx, base, None)
            reference = offload.placement(text).splits
            m = re.search(r"have (\d+) tokens", text)
            tokens = int(m.group(1)) if m else tokens
            m = re.search(r"over (\d+) chunks, n_ctx=(\d+)", text)
            evaluated[ctx] = int(m.group(1)) * int(m.group(2)) if m else 0
        for pair in opts.pairs:
            text = timed(ctx, base, pair)
            cache = ran_with(text, pair, opts.fork)
            where = offload.placement(text)
            stats = parse_stats(text)
            bits = (opts.blocks.get(pair.k).bits_per_value + opts.blocks.get(pair.v).bits_per_value) / 2
            v_kld = grade(stats["kld"], opts.thresholds.max_kld)
            v_dppl = grade(max(stats["dppl"], 0.0), opts.thresholds.max_dppl)
            on_stock = stock is not None and stock.takes(pair)
            rows.append({"label": (STOCK if on_stock else "") + pair.label, "type_k": pair.k, "type_v": pair.v,
                         "build": "stock" if on_stock else "custom", "ctx": ctx,
                         "bits_per_value": bits, **stats, "verdict_kld": v_kld, "verdict_dppl": v_dppl,
                         "verdict": worst(v_kld, v_dppl), **where.to_json(), "cache": cache,
                         "rotation": server_log.rotation(text), "cpu_fallback": offload.fallback(where, reference)})
    kv_ctx = _kv_at_context(model, rows, opts)
    report = {
        "model": {"path": str(model), "name": model.name, "sha256": model_sha},
        **({"kv_ctx": kv_ctx} if kv_ctx else {}),
        **({"stock": {"version": stock.version, "llama_perplexity": str(stock.binary),
                      "llama_perplexity_sha256": sha256(stock.binary)}} if stock else {}),
        "build": {"llama_perplexity": str(binary), "llama_perplexity_sha256": binary_sha, **(provenance or {})},
        "corpus": {"name": corpus_name, "path": str(corpus), "tokens": tokens or None,
                   "evaluated_tokens": {str(k): v for k, v in evaluated.items()},
                   "sha256": corpus_sha},
        "thresholds": {"max_kld": opts.thresholds.max_kld, "max_dppl": opts.thresholds.max_dppl},
        "contexts": opts.contexts, "results": rows,
        "run": {"threads": opts.resolved_threads(), "gpu_layers": opts.resolved_gpu_layers(),
                "gpu_backend": opts.env.get("GGML_BACKEND_PATH"), "baseline_reused": baseline is not None,
                "passes": passes, "seconds": round(time.perf_counter() - t_start, 2)},
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    quality_report.write(report, out)
    return report


ORDER = ["PASS", "BORDERLINE", "FAIL"]


def worst(*verdicts: str) -> str:
    return max(verdicts, key=ORDER.index)


def record(workspace: Path, report: dict[str, Any], report_path: Path) -> Path:
    """Add a report's verdicts to ``<workspace>/quality/index.json`` (per model sha256 and K/V label).

    Per config, the report's worst context stands, with its own numbers (the one that decided the verdict; of
    two alike, the higher mean KLD); a CPU fallback at any context stays recorded."""
    index_path = workspace / "quality" / INDEX
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    digest = hashlib.sha256(report_path.read_bytes()).hexdigest()
    entry = index.setdefault(report["model"]["sha256"], {"name": report["model"]["name"], "configs": {}})
    for r in report["results"]:
        prev = entry["configs"].get(r["label"])
        same = bool(prev) and prev.get("report") == str(report_path)
        fell = r.get("cpu_fallback") or (prev.get("cpu_fallback") if prev and same else None)
        if prev and same and (ORDER.index(prev["verdict"]), prev["kld"]) >= (ORDER.index(r["verdict"]), r["kld"]):
            prev["cpu_fallback"] = fell
            continue
        entry["configs"][r["label"]] = {"verdict": r["verdict"], "kld": r["kld"], "dppl": r["dppl"], "ctx": r["ctx"],
                                        "report": str(report_path), "report_sha256": digest,
                                        "backend": report.get("build", {}).get("backend"), "cpu_fallback": fell,
                                        "graph_splits": r.get("graph_splits"), "gpu_layers": r.get("gpu_layers")}
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return index_path


def model_sha256(workspace: Path, model: Path) -> str:
    """A model file's sha256, remembered by path, size and modification time (models are gigabytes)."""
    cache_path = workspace / "quality" / "sha256-cache.json"
    try:
        cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except ValueError:
        cache = {}
    st = model.stat()
    key = f"{model.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if key not in cache:
        cache[key] = sha256(model)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        tmp.replace(cache_path)
    return str(cache[key])


def verdict_for(workspace: Path, model_sha: str, pair: KVPair, *, stock: bool = False
                ) -> dict[str, Any] | None:
    """The recorded quality verdict of this model with this K/V config (on stock Ollama's build, ``stock``), or
    None when unmeasured."""
    index_path = workspace / "quality" / INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
    except ValueError:
        return None
    entry = index.get(model_sha, {}).get("configs", {}).get((STOCK if stock else "") + pair.label)
    return dict(entry) if entry else None
