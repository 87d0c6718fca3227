"""A bench's report: bench.json, report.md (prefill, speed per depth, latency, KV memory, CPU fallback,
needles, the A/B outputs, the llama-bench side by side) and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ollama_turbo.prove import depth, llama_bench
from ollama_turbo.prove.prompts import PROMPTS


def measured(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The depths measured for a config; none where its server was not what its label says."""
    return [] if r.get("mismatch") else [x for x in r.get("perf", []) if "decode_tps" in x]


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    ab = out / "ab"
    for i, (name, prompt) in enumerate(PROMPTS, 1):
        d = ab / f"{i:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "prompt.txt").write_text(prompt)
        for r in report["results"]:
            outputs = r.get("ab", [])
            if len(outputs) >= i:
                (d / f"{r['label'].replace('/', '-')}.txt").write_text(outputs[i - 1]["output"])
    plots(report, out)


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    p = report["provenance"]
    lines = ["# ollama-turbo bench", "",
             f"model `{p.get('model', '')}`, build `{(p.get('build') or {}).get('version', 'unknown')}`, "
             f"host `{p.get('host') or p.get('url') or 'unknown'}`"
             + (f", {p['parallel']} parallel sequences" if p.get("parallel") else ""), ""]
    fell = [r for r in res if r.get("cpu_fallback")]
    if fell:
        lines += ["## CPU fallback", "", *[f"- **{r['label']}**: {r['cpu_fallback']}" for r in fell], ""]
    failed = [r for r in res if r.get("error")]
    if failed:
        lines += ["## Failed", "", *[f"- **{r['label']}**: {r['error'].splitlines()[0]}" for r in failed], ""]
    lines += [f"## Prefill of a {depth.PREFILL_TOKENS}-token prompt (pp{depth.PREFILL_TOKENS}, mean ± sd)", "",
              "| K/V | prompt tokens | prefill tok/s |", "|---|---|---|"]
    for r in res:
        pp = r.get("prefill") or {}
        cell = (f"{pp['prefill_tps']['mean']:.1f} ± {pp['prefill_tps']['sd']:.1f}" if "prefill_tps" in pp
                else f"failed: {pp.get('error', r.get('error', '-'))}")
        lines.append(f"| {r['label']} | {pp.get('tokens', '-')} | {cell} |")
    lines += ["", "## Speed per context depth (mean ± sd)", "",
              "Depth is counted by the server's own tokenizer: asked = requested, actual = what it evaluated.", "",
              "| K/V | depth asked | depth actual | prefill tok/s | decode tok/s |", "|---|---|---|---|---|"]
    for r in res:
        for x in r.get("perf", []):
            if "error" in x:
                lines.append(f"| {r['label']} | {x['depth']} | - | failed: {x['error']} | - |")
                continue
            lines.append(f"| {r['label']} | {x['depth']} | {x['actual_depth']} | "
                         f"{x['prefill_tps']['mean']:.1f} ± {x['prefill_tps']['sd']:.1f} | "
                         f"{x['decode_tps']['mean']:.1f} ± {x['decode_tps']['sd']:.1f} |")
    done = [r for r in res if "ttft_ms" in r]
    lines += ["", "## Latency (ms)", "", "| K/V | TTFT p50 | p90 | p99 | inter-token p50 | p90 | p99 |",
              "|---|---|---|---|---|---|---|"]
    for r in done:
        t, i = r["ttft_ms"], r["itl_ms"]
        lines.append(f"| {r['label']} | {t['p50']:.1f} | {t['p90']:.1f} | {t['p99']:.1f} | {i['p50']:.1f} | "
                     f"{i['p90']:.1f} | {i['p99']:.1f} |")
    lines += ["", "## KV cache memory", "", "| K/V | server log MiB | planner MiB | delta |", "|---|---|---|---|"]
    for r in done:
        k = r["kv"]
        delta = f"{k['delta']:+.2%}" if k.get("delta") is not None else "-"
        lines.append(f"| {r['label']} | {k.get('logged_mib') or '-'} | "
                     f"{round(k['planned_mib'], 2) if k.get('planned_mib') else '-'} | {delta} |")
    lines += [f"- {r['label']}: {r['kv']['fork']}" for r in done if r["kv"].get("fork")]
    blocks = next((r["kv"]["blocks"] for r in done if r["kv"].get("blocks")), None)
    if blocks:
        lines.append(f"\nPlanner block sizes: {blocks}.")
    cells: list[dict[str, Any]] = next((r["niah"] for r in res if r.get("niah")), [])
    if cells:
        lines += ["", "## Needle in a haystack (found / asked)", "",
                  "| K/V | " + " | ".join(f"{g['length']}@{g['depth']:.0%}" for g in cells) + " |",
                  "|---|" + "---|" * len(cells)]
        for r in res:
            lines.append(f"| {r['label']} | " + " | ".join(
                "yes" if g["found"] else ("failed" if "error" in g else "no") for g in r.get("niah", [])) + " |")
    lines += ["", "## A/B outputs", "", "Full outputs side by side in `ab/<prompt>/<K-V>.txt`.", ""]
    for i, (name, _) in enumerate(PROMPTS):
        lines.append(f"### {i + 1}. {name}")
        for r in res:
            outputs = r.get("ab", [])
            text = outputs[i]["output"].strip().replace("\n", " ") if len(outputs) > i else "(not run)"
            lines.append(f"- **{r['label']}**: {text[:300]}")
        lines.append("")
    lines += llama_bench.markdown(report) + [""]
    lines += ["![decode and prefill tok/s by depth](tps_vs_depth.png)", "", "![needle retrieval](niah.png)", ""]
    return "\n".join(lines)


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in res:
        ok = measured(r)
        if not ok:
            continue
        depths = [x["actual_depth"] for x in ok]
        axes[0].errorbar(depths, [x["decode_tps"]["mean"] for x in ok],
                         yerr=[x["decode_tps"]["sd"] for x in ok], marker="o", label=r["label"], capsize=3)
        axes[1].errorbar(depths, [x["prefill_tps"]["mean"] for x in ok],
                         yerr=[x["prefill_tps"]["sd"] for x in ok], marker="o", label=r["label"], capsize=3)
    for ax, title in zip(axes, ("decode tok/s", "prefill tok/s"), strict=True):
        ax.set_xlabel("context depth (tokens, as the server counted them)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "tps_vs_depth.png", dpi=100)
    plt.close(fig)
    cells: list[dict[str, Any]] = next((r["niah"] for r in res if r.get("niah")), [])
    fig, ax = plt.subplots(figsize=(max(4, len(cells) * 0.8 + 2), max(2, len(res) * 0.6 + 1)))
    grid = [[1.0 if g["found"] else 0.0 for g in r.get("niah", [])] or [0.0] * len(cells) for r in res]
    ax.imshow(grid if grid and cells else [[0]], cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(res)), [r["label"] for r in res])
    ax.set_xticks(range(len(cells)), [f"{g['length']}\n@{g['depth']:.0%}" for g in cells])
    ax.set_title("needle found (green) by length @ depth")
    fig.tight_layout()
    fig.savefig(out / "niah.png", dpi=100)
    plt.close(fig)
