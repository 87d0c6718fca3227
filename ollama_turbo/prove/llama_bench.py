"""llama-bench beside bench: the same build's binaries, the same model, cache types and depths, without
Ollama or a server in between. The gap between the two is the cost of the layers above llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ollama_turbo.core import proc
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair


class LlamaBenchError(TurboError):
    pass


def argv(binary: Path, gguf: Path, pair: KVPair, depths: list[int], *, n_prompt: int, n_gen: int,
         reps: int) -> list[str | Path]:
    return [binary, "-m", gguf, "-ctk", pair.k, "-ctv", pair.v, "-fa", "1", "-p", str(n_prompt), "-n", str(n_gen),
            "-d", ",".join(map(str, depths)), "-r", str(reps), "-o", "json"]


def parse(text: str) -> dict[str, Any]:
    """llama-bench's JSON records -> {"prefill_tps": pp at depth 0, "decode_tps": {depth: tg}}."""
    start = text.find("[")
    try:
        records = json.loads(text[start:]) if start >= 0 else []
    except ValueError as exc:
        raise LlamaBenchError(f"llama-bench printed no JSON list: {exc}") from None
    out: dict[str, Any] = {"prefill_tps": None, "decode_tps": {}}
    for r in records:
        depth = int(r.get("n_depth", 0))
        if r.get("n_prompt", 0) and not r.get("n_gen", 0) and depth == 0:
            out["prefill_tps"] = {"mean": float(r["avg_ts"]), "sd": float(r.get("stddev_ts", 0.0))}
        elif r.get("n_gen", 0) and not r.get("n_prompt", 0):
            out["decode_tps"][str(depth)] = {"mean": float(r["avg_ts"]), "sd": float(r.get("stddev_ts", 0.0))}
    return out


def measure(binary: Path, gguf: Path, pairs: list[KVPair], depths: dict[str, list[int]], *,
            n_prompt: int, n_gen: int, reps: int, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Per K/V label, llama-bench's prefill at depth 0 and decode at each of that label's ``depths`` (a config
    that falls back to the CPU is given its first only); a failing config: its error."""
    if not binary.is_file():
        raise LlamaBenchError(f"llama-bench not found at {binary}",
                              hint="rebuild with invoke build-ollama (it builds llama-bench beside llama-server), "
                                   "or pass --llama-bench BIN")
    out: dict[str, Any] = {}
    log.parent.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        args = argv(binary, gguf, pair, depths.get(pair.label) or [0], n_prompt=n_prompt, n_gen=n_gen, reps=reps)
        r = proc.run(args, check=False, timeout=3600, extra_env=env or None)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"+ {' '.join(map(str, args))}\n{r.stdout}{r.stderr}\n")
        if r.returncode != 0:
            out[pair.label] = {"error": f"llama-bench exit {r.returncode}: {proc.tail(r.stderr, 2).strip()}"}
            continue
        try:
            out[pair.label] = parse(r.stdout)
        except LlamaBenchError as exc:
            out[pair.label] = {"error": str(exc)}
    return out


def _pct(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{(ours / theirs - 1):+.1%}"


def markdown(report: dict[str, Any]) -> list[str]:
    """The bench report's side-by-side section: through the server vs llama-bench, per config and depth."""
    lb = report.get("llama_bench") or {}
    if not lb:
        return []
    lines = ["", "## Through the server vs llama-bench (the same build's binaries)", "",
             "Positive: the server path is faster; negative: what the layers above llama.cpp cost.", "",
             "| K/V | test | server tok/s | llama-bench tok/s | difference |", "|---|---|---|---|---|"]
    for r in report["results"]:
        theirs = lb.get(r["label"]) or {}
        if theirs.get("error"):
            lines.append(f"| {r['label']} | - | - | failed: {theirs['error']} | - |")
            continue
        pp = ((r.get("prefill") or {}).get("prefill_tps") or {}).get("mean")
        lpp = (theirs.get("prefill_tps") or {}).get("mean")
        lines.append(f"| {r['label']} | pp{report['options']['prefill_tokens']} | {pp or 0:,.1f} | {lpp or 0:,.1f} | "
                     f"{_pct(pp, lpp)} |")
        for x in r.get("perf", []):
            if "decode_tps" not in x:
                continue
            ltg = (theirs.get("decode_tps", {}).get(str(x["depth"])) or {}).get("mean")
            lines.append(f"| {r['label']} | tg{report['options']['n_predict']} @ {x['depth']} | "
                         f"{x['decode_tps']['mean']:,.1f} | {ltg or 0:,.1f} | {_pct(x['decode_tps']['mean'], ltg)} |")
    return lines
