"""How a quality report reads: its Markdown table (stock Ollama's configs beside the custom build's, where both
were measured), and the plot of what each config costs in KV memory against what it does to the model, with the
configs no other beats on both (the Pareto front) joined up."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(report: dict[str, Any], out: Path) -> None:
    (out / "quality.md").write_text(markdown(report))
    plot(report, out / "kld_vs_memory.png")


def _x(r: dict[str, Any]) -> float:
    """A config's cost: KV MiB at the model's context where the report has it, else bits per value."""
    return float(r["kv_mib"]) if r.get("kv_mib") is not None else float(r["bits_per_value"])


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The configs no other beats on both memory and mean KLD, cheapest first."""
    def beats(o: dict[str, Any], r: dict[str, Any]) -> bool:
        return _x(o) <= _x(r) and o["kld"] <= r["kld"] and (_x(o), o["kld"]) != (_x(r), r["kld"])

    front = [r for r in rows if not any(beats(o, r) for o in rows)]
    return sorted(front, key=_x)


def markdown(report: dict[str, Any]) -> str:
    c, t = report["corpus"], report["thresholds"]
    stock = report.get("stock")
    base = f"the f16 cache of stock Ollama's build ({stock['version']})" if stock else "the f16 cache of the same build"
    lines = ["# ollama-turbo quality", "",
             f"model `{report['model']['name']}`; corpus {c['name']} ("
             + (f"{c['tokens']:,} tokens; " if c.get("tokens") else "")
             + "evaluated: " + ", ".join(f"{n:,} tokens at ctx {k}" for k, n in c["evaluated_tokens"].items())
             + f"); baseline: {base}; gates: mean KLD <= {t['max_kld']}, PPL increase <= {t['max_dppl']} "
             "(up to twice: BORDERLINE)", ""]
    run = report.get("run")
    if run:
        layers = "llama.cpp's default GPU offload" if run["gpu_layers"] is None else \
            f"{run['gpu_layers']} layers on the GPU"
        lines += [f"llama-perplexity: {run['threads']} threads, {layers}"
                  + (f" ({run['gpu_backend']})" if run.get("gpu_backend") else "")
                  + f"; {run['passes']} passes in {run['seconds']:.1f} s", ""]
    at = report.get("kv_ctx")
    kv_head = f" KV MiB at {at:,} |" if at else ""
    lines += ["| K/V | build | ctx | bits/value |" + kv_head + " mean KLD | 99% KLD | top-1 agreement | PPL | ΔPPL | "
              "rotation K/V | verdict |",
              "|---|---|---|---|" + ("---|" if at else "") + "---|---|---|---|---|---|---|"]
    for r in report["results"]:
        rot = r.get("rotation")
        lines.append(f"| {r['label']} | {r.get('build', 'custom')} | {r['ctx']} | {r['bits_per_value']:.3g} |"
                     + (f" {r['kv_mib']:,.1f} |" if at else "")
                     + f" {r['kld']:.5f} ± {r['kld_err']:.5f} | {r['kld_p99']:.5f} | {100 * r['top1']:.2f} % | "
                     f"{r['ppl']:.4f} | {r['dppl']:+.4f} ± {r['dppl_err']:.4f} | "
                     + (f"{'on' if rot['k'] else 'off'}/{'on' if rot['v'] else 'off'}" if rot else "–")
                     + f" | {r['verdict']} |")
    lines += [f"\n**{r['label']} at ctx {r['ctx']}: {r['cpu_fallback']}**" for r in report["results"]
              if r.get("cpu_fallback")]
    for ctx in report["contexts"]:
        front = pareto([r for r in report["results"] if r["ctx"] == ctx])
        if front:
            lines.append(f"\nworth their memory at ctx {ctx} (no other config is both smaller and closer to f16): "
                         + ", ".join(r["label"] for r in front))
    lines += ["", "![mean KLD against KV memory](kld_vs_memory.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ctx in report["contexts"]:
        rows = [r for r in report["results"] if r["ctx"] == ctx]
        for build, marker in (("stock", "s"), ("custom", "o")):
            mine = [r for r in rows if r.get("build", "custom") == build]
            if mine:
                ax.scatter([_x(r) for r in mine], [max(r["kld"], 1e-6) for r in mine], marker=marker,
                           label=f"{'stock Ollama' if build == 'stock' else 'custom build'}, ctx {ctx}")
        for r in rows:
            ax.annotate(r["label"], (_x(r), max(r["kld"], 1e-6)), fontsize=7)
        front = pareto(rows)
        ax.plot([_x(r) for r in front], [max(r["kld"], 1e-6) for r in front], linewidth=1, alpha=0.6)
    ax.axhline(report["thresholds"]["max_kld"], color="grey", linestyle="--", linewidth=1)
    at = report.get("kv_ctx")
    ax.set_xlabel(f"KV cache MiB at {at:,} tokens" if at else "bits per value (mean of K and V)")
    ax.set_ylabel("mean KL divergence vs the f16 cache")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
