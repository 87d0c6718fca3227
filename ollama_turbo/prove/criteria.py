"""The user's pass criteria as a verdict table, per K/V config and depth: quality (KL divergence and
perplexity change, from ``quality``), decode and prefill at least 90 % of the f16 cache per depth,
KV memory within 15 % of the planner, no failure at the target context (from ``bench``). Each row
is PASS, BORDERLINE or FAIL with the number behind it, or says it was not measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Limits:
    min_speed_ratio: float = 0.90   # decode and prefill against the f16 cache, per depth
    borderline_speed: float = 0.85
    memory_tolerance: float = 0.15  # server's KV size against the planner's


@dataclass
class Row:
    config: str
    criterion: str
    at: str
    verdict: str
    number: str


def _speed(ratio: float, limits: Limits) -> str:
    return "PASS" if ratio >= limits.min_speed_ratio else "BORDERLINE" if ratio >= limits.borderline_speed else "FAIL"


def table(quality: dict[str, Any] | None, bench: dict[str, Any] | None, limits: Limits | None = None) -> list[Row]:
    limits = limits or Limits()
    rows: list[Row] = []
    configs: list[str] = []
    if quality:
        t = quality["thresholds"]
        for r in quality["results"]:
            if r["label"] not in configs:
                configs.append(r["label"])
            rows.append(Row(r["label"], f"quality (mean KLD <= {t['max_kld']}, ΔPPL <= {t['max_dppl']})",
                            f"ctx {r['ctx']}", r["verdict"],
                            f"mean KLD {r['kld']:.5f}, 99% {r['kld_p99']:.5f}, top-1 {100 * r['top1']:.1f} %, "
                            f"ΔPPL {r['dppl']:+.4f}"))
    results = {r["label"]: r for r in (bench or {}).get("results", [])}
    base = results.get("f16")
    for label in [*configs, *[x for x in results if x not in configs and x != "f16"]]:
        r = results.get(label)
        if r is None or base is None or base.get("error"):
            why = "no bench of this config" if r is None else "no f16 baseline in the bench"
            rows.append(Row(label, "decode and prefill >= 90 % of f16", "-", NOT_MEASURED, why))
            continue
        if r.get("error"):
            rows.append(Row(label, "no failure (OOM) at the target context", "server", "FAIL", r["error"][:120]))
            continue
        base_perf = {x["depth"]: x for x in base.get("perf", []) if "decode_tps" in x}
        for x in r.get("perf", []):
            at = f"depth {x['depth']}"
            if "error" in x and x["error"].startswith("skipped"):
                rows.append(Row(label, "decode and prefill >= 90 % of f16", at, NOT_MEASURED, x["error"][:120]))
                continue
            if "error" in x:
                rows.append(Row(label, "no failure (OOM) at the target context", at, "FAIL", x["error"][:120]))
                continue
            b = base_perf.get(x["depth"])
            if b is None:
                continue
            for what in ("decode", "prefill"):
                mine, theirs = x[f"{what}_tps"]["mean"], b[f"{what}_tps"]["mean"]
                ratio = mine / theirs if theirs else 0.0
                rows.append(Row(label, f"{what} >= {limits.min_speed_ratio:.0%} of f16", at, _speed(ratio, limits),
                                f"{mine:.1f} tok/s = {ratio:.0%} of {theirs:.1f}"))
        kv = r.get("kv") or {}
        if kv.get("delta") is None:
            rows.append(Row(label, "KV memory within 15 % of the planner", "-", NOT_MEASURED,
                            kv.get("note", "no planner prediction (bench --gguf)")))
        else:
            ok = abs(kv["delta"]) <= limits.memory_tolerance
            rows.append(Row(label, f"KV memory within {limits.memory_tolerance:.0%} of the planner", "-",
                            "PASS" if ok else "FAIL",
                            f"server {kv['logged_mib']} MiB, planner {kv['planned_mib']:.1f} MiB ({kv['delta']:+.1%})"))
        deepest = max((x["depth"] for x in r.get("perf", []) if "error" not in x), default=None)
        if deepest is not None:
            rows.append(Row(label, "no failure (OOM) at the target context", f"depth {deepest}", "PASS",
                            f"served depth {deepest} without an error"))
    return rows


def render(rows: list[Row]) -> str:
    lines = ["| K/V | criterion | at | verdict | number |", "|---|---|---|---|---|"]
    lines += [f"| {r.config} | {r.criterion} | {r.at} | {r.verdict} | {r.number} |" for r in rows]
    return "\n".join(lines)


def to_json(rows: list[Row]) -> list[dict[str, str]]:
    return [asdict(r) for r in rows]
