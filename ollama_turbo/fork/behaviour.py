"""What the fork does to the K/V types a user configures, layer by layer.

The one place that knows the fork's cache behaviours (read from its ``src/llama-kv-cache.cpp``):

- turbo types pad each head up to a multiple of 128 values (one WHT group);
- auto-asymmetric: K and V the same turbo type and >= 6 query heads per KV head -> K is q8_0
  (``TURBO_AUTO_ASYMMETRIC=0`` disables);
- ``TURBO_LAYER_ADAPTIVE`` modes 1, 2, 5, 6, 7; with the variable unset, mode 7 (boundary V:
  first 2 and last 2 layers' V at q8_0) is on by itself when V is turbo2.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import UsageError
from ..core.kv_types import LAYER_ADAPTIVE_MODES, ForkBehaviour, cache_type, label

__all__ = ["Effective", "ForkBehaviour", "cache_k", "effective", "layer_types"]


def cache_k(type_k: str, type_v: str, gqa_ratio: float, fb: ForkBehaviour) -> tuple[str, str | None]:
    """The K type of the whole cache after auto-asymmetric, and the note saying why it changed."""
    if fb.auto_asymmetric and cache_type(type_k).turbo and type_k == type_v and gqa_ratio >= 6:
        return "q8_0", (f"auto-asymmetric: {gqa_ratio:g} query heads per KV head >= 6, so the fork runs K at q8_0 "
                        f"instead of {type_k} (TURBO_AUTO_ASYMMETRIC=0 disables)")
    return type_k, None


def layer_types(n_layer: int, gqa_ratio: float, type_k: str, type_v: str, fb: ForkBehaviour) -> tuple[
        list[tuple[str, str]], list[str]]:
    """Per-layer (K, V) types after auto-asymmetric and layer-adaptive, with notes saying why."""
    type_k, asym = cache_k(type_k, type_v, gqa_ratio, fb)
    notes: list[str] = [asym] if asym else []
    k_turbo = cache_type(type_k).turbo
    v_turbo = cache_type(type_v).turbo
    mode = fb.layer_adaptive
    if mode is None:
        mode = 7 if type_v == "turbo2" and n_layer >= 8 else 0
        if mode == 7:
            notes.append("boundary V: with turbo2 V the fork keeps V of the first 2 and last 2 layers at "
                         "q8_0 (TURBO_LAYER_ADAPTIVE=0 disables)")
    elif mode not in LAYER_ADAPTIVE_MODES:
        raise UsageError(f"TURBO_LAYER_ADAPTIVE={mode} is not one of {LAYER_ADAPTIVE_MODES}")
    elif mode:
        notes.append(f"TURBO_LAYER_ADAPTIVE={mode}")
    n = n_layer
    out = []
    for il in range(n):
        k, v = type_k, type_v
        if n >= 8:
            edge4, edge2 = il < 4 or il >= n - 4, il < 2 or il >= n - 2
            if mode == 1 and k_turbo and edge4 or mode == 2 and k_turbo and il >= n - 8:
                k, v = "q8_0", "q8_0"
            elif mode == 5 and v_turbo:
                v = "turbo4" if edge2 else "turbo2"
            elif mode == 6 and v_turbo:
                v = "turbo4" if il >= n - 8 else "turbo2"
            elif mode == 7 and v_turbo:
                v = "q8_0" if edge2 else "turbo2"
        out.append((k, v))
    return out, notes


@dataclass(frozen=True)
class Effective:
    """What a server really runs for a configured K/V pair on one model: the one answer to
    "which cache type will this model get", which plan, Modelfiles, deploy, smoke, status and bench ask."""

    configured_k: str
    configured_v: str
    type_k: str  # the cache's K type, as the server's KV line reports it
    type_v: str
    layers: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return (self.type_k, self.type_v) != (self.configured_k, self.configured_v) or any(
            pair != (self.configured_k, self.configured_v) for pair in self.layers)

    @property
    def label(self) -> str:
        return label(self.type_k, self.type_v)

    def explain(self) -> str:
        """``""`` when the fork runs what was configured; else what it changed and why."""
        if not self.changed:
            return ""
        configured = label(self.configured_k, self.configured_v)
        if self.label == configured:
            return f"configured {configured}, the fork changes some layers: " + "; ".join(self.notes)
        return f"configured {configured}, the fork runs {self.label}: " + "; ".join(self.notes)


def effective(type_k: str, type_v: str, *, n_layer: int, gqa_ratio: float, fb: ForkBehaviour) -> Effective:
    layers, notes = layer_types(n_layer, gqa_ratio, type_k, type_v, fb)
    k, _ = cache_k(type_k, type_v, gqa_ratio, fb)
    return Effective(type_k, type_v, k, type_v, tuple(layers), tuple(notes))
