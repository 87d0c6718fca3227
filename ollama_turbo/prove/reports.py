"""The quality and bench tasks end to end, below the CLI: which build's tools to run, the measurement, the
pass criteria, and every file the report is written to. The CLI parses flags, calls one of these, prints."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core.errors import ToolMissing, UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.prove import bench, bench_report, criteria, depth, llama_bench, quality, smoke
from ollama_turbo.prove.client import Endpoint
from ollama_turbo.prove.server_log import LogReader

Say = Callable[[str], None]


@dataclass
class Tools:
    """A build's tools as a task runs them: the binary, the build's provenance, and the environment that gives
    them the build's GPU backend."""

    manifest: Manifest | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, manifest: str) -> Tools:
        """The build at ``manifest`` (its dist directory or manifest.json); none when empty."""
        if not manifest:
            return cls()
        m = manifest_mod.load(Path(manifest))
        return cls(m, m.tool_env())

    @property
    def dist(self) -> Path | None:
        return self.manifest.dist if self.manifest else None

    @property
    def backend(self) -> str:
        return self.manifest.backend if self.manifest else ""

    @property
    def provenance(self) -> dict[str, Any]:
        return self.manifest.summary() if self.manifest else {}

    def tool(self, name: str, given: str = "") -> Path:
        """``given`` (a binary the user named), else the build's own ``name``, which must exist."""
        if given:
            return Path(given)
        m = self.manifest
        if m is None:
            raise UsageError(f"which {name}? give --manifest DIST (a build of invoke build-ollama) or the binary")
        binary = m.tool_path(name)
        if not binary.is_file():
            why = m.tools_why.get(name, "not recorded")
            raise ToolMissing(
                f"the build {m.version} has no {binary.relative_to(m.dist)} ({why})",
                hint=f"rebuild with invoke build-ollama --force, or pass --{name} BIN")
        return binary


def run_quality(workspace: Path, model: Path, binary: Path, tools: Tools, opts: quality.Options, out: Path, *,
                corpus: Path | None = None, baseline: Path | None = None, bench: dict[str, Any] | None = None,
                say: Say = print) -> tuple[dict[str, Any], list[criteria.Row]]:
    """Measure, add the pass criteria (with a bench report: speed, memory, OOM rows), write quality.json and
    quality.md, and record the verdicts in the workspace's quality index."""
    opts.env, opts.backend = tools.env, tools.backend
    ngl = opts.resolved_gpu_layers()
    say(f"quality: {model}, {opts.resolved_threads()} threads, "
        + ("llama.cpp's default GPU offload" if ngl is None else f"{ngl} layers on the GPU")
        + (f" ({tools.env['GGML_BACKEND_PATH']})" if tools.env else ""))
    report = quality.run(binary, model, opts, out, corpus=corpus, baseline=baseline, provenance=tools.provenance,
                         say=say)
    say(f"quality: {report['run']['passes']} passes in {report['run']['seconds']:.1f} s")
    rows = criteria.table(report, bench)
    report["criteria"] = criteria.to_json(rows)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "quality.md", "a", encoding="utf-8") as fh:
        fh.write("\n## Pass criteria\n\n" + criteria.render(rows) + "\n")
    quality.record(workspace, report, out / "quality.json")
    return report, rows


def stock_side(dist: str, custom: Manifest | None, pairs: list[KVPair]) -> quality.Stock:
    """Stock Ollama's build for a side-by-side quality run: a build of ``build-ollama --stock`` whose llama.cpp is the
    pin of the custom build's Ollama (another pin is said, not refused: stock moves with Ollama)."""
    tools = Tools.of(dist)
    m = tools.manifest
    assert m is not None
    if not m.stock:
        raise UsageError(f"--stock {dist}: {m.version} is not a stock build (its manifest says flavor "
                         f"{m.data.get('flavor', 'custom')!r})", hint="build one with invoke build-ollama --stock")
    if custom is not None and custom.stock:
        raise UsageError(f"--manifest {custom.path}: a stock build; the custom build goes there, stock in --stock")
    pin, mine = m.data.get("pinned", {}).get("tag"), (custom.data.get("pinned", {}).get("tag") if custom else None)
    if custom is not None and pin != mine:
        print(f"NOTE: stock {m.version} builds llama.cpp {pin}, the custom build's Ollama pins {mine}: stock Ollama "
              "of another release (recorded in the report)")
    return quality.Stock(tools.tool("llama-perplexity"), frozenset(m.cache_types), tools.env, tools.backend,
                         m.version)


def check_types(pairs: list[KVPair], build: Manifest | None, stock: quality.Stock | None) -> None:
    """Every config is one the build that measures it has (stock's types on stock, the rest on the custom build):
    refused before llama-perplexity runs, naming the types each build has."""
    for p in pairs:
        if stock is not None and stock.takes(p):
            continue
        if build is not None and build.cache_types and not all(t in build.cache_types for t in p):
            missing = next(t for t in p if t not in build.cache_types)
            raise UsageError(f"{p.label}: {build.version} has no {missing} cache type "
                             f"({'a stock build: ' if build.stock else ''}it has {', '.join(build.cache_types)})"
                             + (f"; stock {stock.version} has {', '.join(sorted(stock.types))}" if stock else ""),
                             hint="measure the fork's types with the custom build (--manifest) and stock's with "
                                  "--stock")


def quality_out(workspace: Path, model: Path) -> Path:
    """Where a quality run writes by default: ``<workspace>/quality/<model>-<timestamp>``."""
    import datetime

    return workspace / "quality" / f"{model.stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


Starter = Callable[[], AbstractContextManager[Endpoint]]


def run_bench(targets: list[tuple[Endpoint, Starter]], opts: bench.Options, out: Path,
              provenance: dict[str, Any], *, side_by_side: tuple[Path, Path, Iterable[KVPair]] | None = None,
              tools: Tools | None = None) -> dict[str, Any]:
    """Bench every target; with ``side_by_side`` (llama-bench, the model file, the K/V pairs) the same build's
    llama-bench at the same depths, beside it in the report. Writes bench.json, report.md and the plots."""
    report = bench.run(targets, opts, out, provenance)
    if side_by_side:
        binary, gguf, pairs = side_by_side
        fell = {r["label"] for r in report["results"] if r.get("cpu_fallback")} if not opts.measure_fallback else set()
        depths = {p.label: opts.depths[:1] if p.label in fell else opts.depths for p in pairs}
        report["llama_bench"] = llama_bench.measure(
            binary, gguf, list(pairs), depths, n_prompt=depth.PREFILL_TOKENS, n_gen=opts.n_predict,
            reps=opts.reps, env=tools.env if tools else {}, log=out / "llama-bench.log")
        bench_report.write_outputs(report, out)
    return report


def run_smoke(url: str, *, api: str, model: str | None, expect: smoke.Expect, log: LogReader | None,
              build: Manifest | None, provenance: dict[str, Any], baseline: Path | None = None,
              thresholds: smoke.Thresholds | None = None) -> smoke.SmokeResult:
    """The smoke task end to end: the build's version and era expected, the checks, the provenance, the
    baseline's gates."""
    if build is not None:
        expect.version = expect.version or build.version
        expect.era = build.era
        provenance["build"] = build.summary()
    if api == "ollama":
        r = smoke.smoke_ollama(url, model=model, expect=expect, log=log)
    else:
        r = smoke.smoke_llama_server(url, expect=expect, log=log)
    r.provenance.update(provenance)
    if baseline is not None:
        smoke.apply_gates(r, smoke.load_baseline(baseline), thresholds or smoke.Thresholds())
    return r
