"""``invoke api-check --scan-ollama``: each Ollama release checked against the fork, ranked, best first."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ollama_turbo.check import carry as carry_mod
from ollama_turbo.check import carry_report
from ollama_turbo.check.apicheck import CarryOptions, Suppression, check
from ollama_turbo.check.apidiff import COMPATIBLE, INCOMPATIBLE, REVIEW
from ollama_turbo.core import sources
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.settings import Settings


def expand_refs(co: sources.Checkout, spec: str) -> list[str]:
    """``v0.30.0,v0.31.0`` or a range ``v0.30.0..v0.32.0`` (both ends included)."""
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if ".." in part:
            a, b = part.split("..", 1)
            tags = co.git("tag", "--merged", b or "HEAD", "--no-merged", a, "--sort=version:refname").stdout
            out += [a, *[t for t in tags.split() if re.match(r"^v?\d", t)]]
        else:
            out.append(part)
    return list(dict.fromkeys(out))


@dataclass
class ScanRow:
    ref: str
    era: str = "?"
    pin: str = ""
    verdict: str = "error"
    incompatible: int = 0
    review: int = 0
    missing_flags: list[str] = field(default_factory=list)  # passed always, absent in the fork: dropped
    patches: str = ""  # how its compat patches were carried (applied, carried, left out, refused)
    refused: list[str] = field(default_factory=list)  # each refused patch, with why
    left_out: list[str] = field(default_factory=list)  # features left out (model architecture laguna)
    error: str = ""
    exit_code: int = 1


def scan(settings: Settings, *, ollama_url: str, refs: str, fork: sources.Checkout,
         upstream_url: str | None, target: str, suppressions: list[Suppression],
         carry: CarryOptions | None = None) -> list[ScanRow]:
    """Each Ollama ref checked against the fork, ranked: the best verdict first, and among equals the newest
    (the order the refs were given in, a range oldest first)."""
    base = sources.open_source("ollama", ollama_url, "HEAD", settings.workspace)
    rows = []
    for ref in expand_refs(base, refs):
        row = ScanRow(ref)
        try:
            co = sources.open_source("ollama", ollama_url, ref, settings.workspace, fetch=False)
            r = check(settings, ollama=co, fork=fork, upstream_url=upstream_url, target=target,
                      suppressions=suppressions, carry=carry)
            row.era, row.verdict, row.exit_code = r.era, r.verdict, r.exit_code()
            row.pin = r.pinned.get("tag") or r.pinned.get("fetch_head", "")[:12]
            row.incompatible, row.review = r.count(INCOMPATIBLE), r.count(REVIEW)
            row.missing_flags = [c.symbol for c in r.changes if c.kind == "flag_missing"]
            row.patches = carry_report.brief(r.carried) if r.era.rules.carries_patches else \
                f"{sum(p.status == 'applied' for p in r.patches)} of {len(r.patches)} apply (git am -3)"
            row.refused = [f"{Path(c.patch).name}: {c.why}" for c in r.carried if c.status == carry_mod.REFUSED]
            row.refused += [c.detail for c in r.changes if c.kind == "patch_conflict"]
            row.left_out = [c.feature for c in r.carried if c.status == carry_mod.LEFT_OUT]
        except TurboError as exc:
            row.error = exc.message
        rows.append(row)
    rank = {COMPATIBLE: 0, REVIEW: 1, INCOMPATIBLE: 2, "error": 3}
    order = {id(r): i for i, r in enumerate(rows)}
    rows.sort(key=lambda x: (rank[x.verdict], x.incompatible, -order[id(x)]))
    return rows


def render_scan(rows: list[ScanRow]) -> str:
    lines = [f"{'rank':<5}{'ollama':<13}{'era':<5}{'pins':<9}{'verdict':<14}{'incompat':>9}{'review':>8}  "
             "compat patches; notes"]
    for i, r in enumerate(rows, 1):
        notes = r.error or "; ".join(filter(None, [
            r.patches,
            ("left out: " + ", ".join(r.left_out)) if r.left_out else "",
            ("flags dropped: " + ", ".join(r.missing_flags)) if r.missing_flags else "",
            *(f"refused: {why[:160]}" for why in r.refused)]))
        lines.append(f"{i:<5}{r.ref:<13}{r.era:<5}{r.pin:<9}{r.verdict:<14}{r.incompatible:>9}{r.review:>8}  "
                     f"{notes}")
    best = next((r for r in rows if r.verdict != "error"), None)
    if best:
        lines.append(f"\nbest fit: Ollama {best.ref} ({best.verdict}; the newest of the best verdict)")
    return "\n".join(lines) + "\n"
