"""``invoke verify-fork``: check the fork's quantizer against theory before it is built and shipped.

Static (no build): each turbo type's centroid table against the Lloyd-Max optimum for the
distribution the fork assumes (N(0, 1/d) after the rotation, d = the block size), every
backend's copy against the CPU's, the rotation's sign arrays and their use forward and inverse,
and the block layout from the headers. Dynamic (a C compiler): the fork's own CPU quantize and
dequantize round-trip Gaussian vectors (:mod:`ollama_turbo.check.quantizer_run`).

Verdicts: PASS, REVIEW (within tolerance but not optimal; a copy that differs only in
precision), FAIL (far from optimal; backends that disagree on what is stored). Exit 0 all pass,
4 review, 8 a failing check.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.check import lloyd_max
from ollama_turbo.check.quantizer_tables import Found, Table, scan
from ollama_turbo.core import sources
from ollama_turbo.core.errors import EXIT_INCOMPATIBLE, EXIT_OK, EXIT_REVIEW, TurboError
from ollama_turbo.core.settings import Settings
from ollama_turbo.fork import blocks
from ollama_turbo.fork import sources as fork_sources

PASS, REVIEW, FAIL, SKIP = "PASS", "REVIEW", "FAIL", "skip"
TYPES = {2: "turbo2", 3: "turbo3", 4: "turbo4"}
# MSE of a table relative to the Lloyd-Max optimum's: up to 0.5 % passes, up to 5 % asks for review.
PASS_RATIO, REVIEW_RATIO = 1.005, 1.05


class VerifyError(TurboError):
    pass


@dataclass
class Item:
    item: str
    verdict: str
    evidence: str


@dataclass
class Report:
    fork: dict[str, str]
    items: list[Item] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {i.verdict for i in self.items}
        return FAIL if FAIL in verdicts else REVIEW if REVIEW in verdicts else PASS

    def exit_code(self) -> int:
        return {FAIL: EXIT_INCOMPATIBLE, REVIEW: EXIT_REVIEW}.get(self.verdict, EXIT_OK)

    def add(self, item: str, verdict: str, evidence: str) -> None:
        self.items.append(Item(item, verdict, evidence))

    def to_json(self) -> dict[str, Any]:
        return {"fork": self.fork, "verdict": self.verdict, "exit_code": self.exit_code(),
                "items": [asdict(i) for i in self.items], "tables": self.tables, "seconds": self.seconds}

    def render(self, markdown: bool = False) -> str:
        f = self.fork
        lines = [f"verify-fork: {f['url']} @ {f['ref']} ({f['sha'][:9]})", "",
                 "| Item | Verdict | Evidence |", "|------|---------|----------|"]
        for i in self.items:
            lines.append(f"| {i.item} | {i.verdict} | {i.evidence} |")
        lines += ["", f"verdict: {self.verdict} (exit {self.exit_code()}); "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())]
        return "\n".join(lines) + "\n"


def _close(a: tuple[float, ...], b: tuple[float, ...], half: bool) -> bool:
    if len(a) != len(b):
        return False
    tol = 2.0 ** -10 if half else 5e-7
    return all(abs(x - y) <= tol * max(abs(y), 1e-3) + 1e-7 for x, y in zip(a, b, strict=True))


def _cpu_first(tables: list[Table]) -> Table:
    return next((t for t in tables if t.backend == "CPU" and not t.half), tables[0])


def check_tables(found: Found, d: int, report: Report) -> None:
    sigma = 1 / math.sqrt(d)
    for bits, name in TYPES.items():
        copies = found.centroids.get(bits, [])
        if not copies:
            report.add(f"{name}: Lloyd-Max codebook", FAIL, f"no {2 ** bits}-entry centroid table found")
            continue
        ref = _cpu_first(copies)
        values = ref.values
        if list(values) != sorted(values) or any(abs(a + b) > 1e-6 for a, b in zip(values, values[::-1],
                                                                                      strict=True)):
            report.add(f"{name}: Lloyd-Max codebook", FAIL, f"{ref.where} {ref.name} is not sorted and symmetric")
            continue
        q = lloyd_max.quality(values, sigma)
        best = lloyd_max.optimum(len(values), sigma)
        verdict = PASS if q.ratio <= PASS_RATIO else REVIEW if q.ratio <= REVIEW_RATIO else FAIL
        report.tables[name] = {"file": ref.where, "name": ref.name, "values": list(values),
                               "optimum": [round(x, 6) for x in best], "mse": q.mse, "optimum_mse": q.optimum_mse,
                               "mse_ratio": q.ratio, "max_offset_sigma": q.max_offset,
                               "predicted_relative_mse": q.mse * d}
        report.add(f"{name}: Lloyd-Max codebook for N(0, 1/{d})", verdict,
                   f"{ref.where} {ref.name}: MSE {q.ratio:.3f}x the optimum's ({q.mse * d:.5f} vs "
                   f"{q.optimum_mse * d:.5f} per unit variance), largest centroid offset {q.max_offset:.3f} sigma; "
                   "optimum ±"
                   + ", ".join(f"{x:.6f}" for x in best[len(best) // 2:]))
        others = [t for t in copies if t is not ref]
        differ = [t for t in others if not _close(t.values, values, t.half)]
        same = [t for t in others if t not in differ]
        if differ:
            report.add(f"{name}: every backend stores the same table", FAIL,
                       "; ".join(f"{t.where} {t.name} ({t.backend}) differs from {ref.where}: "
                                 f"{_first_difference(t.values, values)}" for t in differ))
        else:
            report.add(f"{name}: every backend stores the same table", PASS,
                       f"{len(same) + 1} copies agree: " + ", ".join(f"{t.backend} {t.where}" for t in [ref, *same]))


def _first_difference(a: tuple[float, ...], b: tuple[float, ...]) -> str:
    if len(a) != len(b):
        return f"{len(a)} entries vs {len(b)}"
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if abs(x - y) > 1e-6 * max(abs(y), 1e-3))
    return f"entry {i} is {a[i]:g}, not {b[i]:g}"


def check_rotation(found: Found, d: int, report: Report) -> None:
    signs = found.signs
    if not signs:
        report.add("WHT rotation: sign arrays", FAIL, "no rotation sign arrays found")
        return
    wrong = [t for t in signs if len(t.values) & (len(t.values) - 1) or len(t.values) not in (d, d // 2)]
    if wrong:
        report.add("WHT rotation: sign arrays", FAIL, "; ".join(f"{t.where} {t.name} has {len(t.values)} entries, "
                                                              f"not {d} (a power of two)" for t in wrong))
    else:
        report.add("WHT rotation: sign arrays", PASS,
                   f"{len(signs)} arrays of ±1, length {d} (or its first {d // 2}): "
                   + ", ".join(f"{t.name} {t.where}" for t in signs[:4]) + (" ..." if len(signs) > 4 else ""))
    # every backend's first and second sign arrays hold the same signs as the CPU's
    by_role: dict[int, list[Table]] = {}
    for t in signs:
        m = re.search(r"(\d)(?:_\d+)?$", t.name)
        if m:
            by_role.setdefault(int(m.group(1)), []).append(t)
    bad = []
    for _, ts in sorted(by_role.items()):
        ref = _cpu_first(ts)
        for t in ts:
            n = min(len(t.values), len(ref.values))
            if t.values[:n] != ref.values[:n]:
                bad.append(f"{t.where} {t.name} differs from {ref.where} {ref.name} "
                           f"({_first_difference(t.values[:n], ref.values[:n])})")
    report.add("Same sign arrays in every backend", FAIL if bad else PASS,
               "; ".join(bad) if bad else f"signs 1 and 2 agree across {len(signs)} copies")
    def stem(name: str) -> str:
        return re.sub(r"_?(forward|inverse|inv)", "", name)

    pairs = []
    for inv in [r for r in found.rotations if r.inverse]:
        forwards = [r for r in found.rotations if not r.inverse and r.file == inv.file]
        fwd = next((r for r in forwards if stem(r.name) == stem(inv.name)), forwards[0] if forwards else None)
        if fwd is not None:
            pairs.append((fwd, inv))
    if not pairs:
        report.add("Same rotation for quantize and dequantize", REVIEW,
                   "no forward/inverse rotation pair found to compare")
        return
    mismatched = [(f, i) for f, i in pairs if i.signs != list(reversed(f.signs))]
    if mismatched:
        report.add("Same rotation for quantize and dequantize", FAIL, "; ".join(
            f"{i.file}:{i.line} {i.name} applies {', '.join(i.signs)}, but {f.name} ({f.file}:{f.line}) applies "
            f"{', '.join(f.signs)}: the inverse must undo the same signs in reverse order" for f, i in mismatched))
    else:
        report.add("Same rotation for quantize and dequantize", PASS, "; ".join(
            f"{f.backend}: {f.name} {' -> '.join(f.signs)}, {i.name} {' -> '.join(i.signs)}" for f, i in pairs))


STRUCT = re.compile(r"typedef\s+struct\s*\{([^{}]*)\}\s*block_(turbo\d)_0\s*;", re.S)


def check_layout(fork_dir: Path, report: Report) -> int:
    """Norm type and bits per value of each turbo block, from ggml-common.h (clang sizes). Returns d."""
    common = fork_dir / "ggml/src/ggml-common.h"
    text = common.read_text(errors="replace") if common.is_file() else ""
    layouts: dict[str, str] = {}
    for body, name in STRUCT.findall(text):
        layouts.setdefault(name, body)  # the first definition (the default #if branch)
    found = blocks.derive(fork_dir, [n for n in TYPES.values() if n in layouts]) if layouts else {}
    d = 128
    for name in TYPES.values():
        if name not in found:
            report.add(f"{name}: block layout", FAIL, f"no block_{name}_0 in ggml/src/ggml-common.h")
            continue
        b = found[name]
        d = b.block
        body = layouts[name]
        norm_type = re.search(r"(\w+)\s+norm\s*;", body)
        norms = re.findall(r"\w+\s+(\w*norm\w*)\s*;", body)
        wide = norm_type is not None and norm_type.group(1) in ("ggml_half", "ggml_bf16_t", "float", "double")
        report.add(f"{name}: norm at fp16 or better, one per block", PASS if wide and len(norms) >= 1 else FAIL,
                   f"block_{name}_0: {b.size} bytes per {b.block} values = {b.size * 8 / b.block:g} bits per value; "
                   f"norm {norm_type.group(1) if norm_type else 'not found'}"
                   + (f"; also stores {', '.join(norms[1:])}" if len(norms) > 1 else "")
                   + " (no per-vector normalization beyond the block norm)")
    return d


def verify(fork_dir: Path, fork: dict[str, str], *, dynamic: bool = True) -> Report:
    """The static checks (and, with ``dynamic``, the round trip through the fork's own C code)."""
    t0 = time.perf_counter()
    report = Report(fork)
    arg_cpp, ggml_c = fork_sources.read_fork_sources(fork_dir)
    kinds = [t for t in fork_sources.fork_cache_types(arg_cpp, ggml_c) if t.startswith("turbo")]
    if not kinds:
        raise VerifyError(f"{fork['url']} @ {fork['ref']}: no turbo cache types in common/arg.cpp "
                          "(kv_cache_types); nothing to verify",
                          hint="is this the TurboQuant fork, and its feature/turboquant-kv-cache branch?")
    d = check_layout(fork_dir, report)
    found = scan(fork_dir)
    check_tables(found, d, report)
    check_rotation(found, d, report)
    report.seconds["static"] = time.perf_counter() - t0
    if dynamic:
        from ollama_turbo.check import quantizer_run

        t1 = time.perf_counter()
        quantizer_run.check(fork_dir, report)
        report.seconds["dynamic"] = time.perf_counter() - t1
    return report


def verify_checkout(settings: Settings, url: str, ref: str = "", *, dynamic: bool = True) -> Report:
    """verify-fork on a fork checkout or URL at a ref (a local checkout: its HEAD unless a ref is given)."""
    import tempfile

    co = sources.open_configured(settings, "fork", url, ref)
    with tempfile.TemporaryDirectory(prefix="turbo-verify-") as tmp:
        d = co.export(Path(tmp), ["common/arg.cpp", "ggml"])
        return verify(d, {"url": co.url, "ref": co.ref, "sha": co.sha}, dynamic=dynamic)
