"""Leaving ggml CPU variants out of a build: the ``lib/ollama/libggml-cpu-<variant>.so`` files a host's CPU reports
but cannot run (``build-ollama --cpu-exclude``, ``turbo.build.cpu_exclude``), taken out of the stage before the
manifest is written, and what was left out (and why) for the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_turbo.core import cpu_variants

WHY = "left out at build time (build-ollama --cpu-exclude / turbo.build.cpu_exclude): a CPU the dist is for " \
      "reports this variant's flags but cannot run it (SIGILL)"


def leave_out(stage: Path, names: tuple[str, ...]) -> dict[str, Any] | None:
    """Remove the variants ``names`` from ``stage``; the manifest's ``cpu_variants`` entry (None when the build has
    no CPU variants and none was asked to be left out)."""
    files = [str(p.relative_to(stage)) for p in stage.rglob(f"{cpu_variants.PREFIX}*") if p.is_file()]
    ex = cpu_variants.exclude(names, files, key="--cpu-exclude / turbo.build.cpu_exclude")
    for rel in ex.excluded.values():
        (stage / rel).unlink()
    if not names:
        return {"shipped": sorted(cpu_variants.variants_in(files))} if files else None
    return {**ex.to_json(WHY), "shipped": list(ex.remaining)}
