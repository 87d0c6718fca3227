"""Where a K/V config's attention runs: on the GPU, or back on the CPU.

llama.cpp's scheduler splits a compute graph wherever an op must run on another backend and logs the
count (``graph splits = N``). With every layer on the GPU a graph splits a few times at most (the input
embeddings the CPU looks up). When the GPU backend has no kernel for an op (the fork's CUDA attention
for q8_0-K with turbo4-V at head dim 64, as on an H200 with SmolLM2), that op runs on the CPU in every
layer and the count climbs with the layers: the config still answers, only many times slower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SPLITS = re.compile(r"graph splits = (\d+)")
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


@dataclass(frozen=True)
class Placement:
    splits: int | None              # the last graph splits count the log shows (prompt-sized batch)
    layers: tuple[int, int] | None  # (layers on the GPU, layers) from the model load

    @property
    def on_gpu(self) -> bool:
        return bool(self.layers and self.layers[0] > 0)

    def to_json(self) -> dict[str, object]:
        return {"graph_splits": self.splits, "gpu_layers": list(self.layers) if self.layers else None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Placement | None:
        """A placement a report recorded (:meth:`to_json`); None when it recorded no graph splits."""
        if not data or data.get("graph_splits") is None:
            return None
        layers = data.get("gpu_layers")
        return cls(int(data["graph_splits"]), (int(layers[0]), int(layers[1])) if layers else None)


def placement(log: str) -> Placement:
    """The last model load's placement in a llama.cpp log (a server's section, or a tool's output)."""
    splits = SPLITS.findall(log)
    layers = OFFLOADED.findall(log)
    return Placement(int(splits[-1]) if splits else None,
                     (int(layers[-1][0]), int(layers[-1][1])) if layers else None)


def fallback(p: Placement, reference: int | None = None) -> str | None:
    """Why this config's graph leaves the GPU, or None when it stays there.

    Against ``reference`` (the f16 cache's splits on the same model and server) any extra split counts;
    without one, a split per offloaded layer or more does (an op of every layer runs elsewhere), as a
    healthy graph splits a few times at most."""
    if p.splits is None or not p.on_gpu or p.layers is None:
        return None
    if reference is not None:
        if p.splits <= reference:
            return None
        against = f"the f16 cache: {reference}"
    else:
        if p.splits < p.layers[0]:
            return None
        against = f"{p.layers[0]} layers on the GPU; a graph that stays there splits a few times at most"
    return (f"CPU fallback: {p.splits} graph splits ({against}): the GPU backend has no kernel for some op of "
            "this K/V config, which runs on the CPU in every layer")
