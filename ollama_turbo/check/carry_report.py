"""How carried patches read in a plan, an api-check report and a build's output: one line a patch, then one
line a hunk (method and file:line) where the patch was not applied as it is."""

from __future__ import annotations

from ollama_turbo.check.carry import APPLIED, LEFT_OUT, NOT_NEEDED, REFUSED, Carried


def render(carried: list[Carried], *, indent: str = "  ") -> list[str]:
    lines: list[str] = []
    for c in carried:
        lines.append(f"{indent}{c.patch}: {c.summary()}")
        if c.status in (APPLIED, LEFT_OUT, NOT_NEEDED, REFUSED):
            if c.status == LEFT_OUT and c.sources_left_out:
                lines.append(f"{indent}    and Ollama's sources of it: {', '.join(c.sources_left_out)}")
            if c.status == REFUSED and c.hint:
                lines.append(f"{indent}    next step: {c.hint}")
            continue
        for p in c.placements:
            lines.append(f"{indent}    hunk {p.hunk:<3} {p.method:<8} {p.where():<36} {p.detail}")
    if not carried:
        lines.append(f"{indent}(none)")
    return lines


def brief(carried: list[Carried]) -> str:
    """One phrase for a table cell: how many patches were applied, carried, left out, not needed, refused."""
    counts: dict[str, int] = {}
    for c in carried:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items()) or "no patches"
