"""Cache types: block formats, the ``K/V`` spelling users write, and its one label.

A cache type stores ``block`` values in ``block_bytes`` bytes. These are the formats as ggml and
the fork define them at the snapshot this project was written against; a build reads the real
ones from its fork (:mod:`ollama_turbo.fork.blocks`) and records them in its manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import TurboError, UsageError

MIB = 1024 * 1024
GIB = 1024 * MIB


class KVMemError(TurboError):
    pass


@dataclass(frozen=True)
class CacheType:
    name: str
    block: int        # values per block
    block_bytes: int  # bytes per block

    def row_bytes(self, n: int) -> int:
        if n % self.block:
            raise KVMemError(f"{self.name} stores blocks of {self.block} values; a row of {n} values "
                             f"does not divide into them (head size must be a multiple of {self.block})")
        return n // self.block * self.block_bytes

    @property
    def bits_per_value(self) -> float:
        return self.block_bytes * 8 / self.block

    @property
    def turbo(self) -> bool:
        return self.name.startswith("turbo")


# Block formats (values per block, bytes per block) as ggml and the fork define them.
CACHE_TYPES: dict[str, CacheType] = {t.name: t for t in (
    CacheType("f32", 1, 4), CacheType("f16", 1, 2), CacheType("bf16", 1, 2),
    CacheType("q8_0", 32, 34), CacheType("q4_0", 32, 18), CacheType("q4_1", 32, 20),
    CacheType("q5_0", 32, 22), CacheType("q5_1", 32, 24), CacheType("iq4_nl", 32, 18),
    CacheType("turbo2", 128, 34), CacheType("turbo3", 128, 50), CacheType("turbo4", 128, 68),
)}


@dataclass(frozen=True)
class BlockTable:
    """The block formats a plan uses, and where they came from (said in every plan)."""

    types: Mapping[str, CacheType]
    source: str

    def get(self, name: str) -> CacheType:
        t = self.types.get(name.lower())
        if t is None:
            raise UsageError(f"unknown cache type {name!r} in the block formats of {self.source}; known: "
                             f"{', '.join(self.types)}")
        return t

    def with_blocks(self, blocks: Mapping[str, tuple[int, int]], source: str) -> BlockTable:
        """This table with ``blocks`` (name -> (values per block, bytes per block)) read from a fork or build."""
        types = dict(self.types)
        types.update({n.lower(): CacheType(n.lower(), int(b), int(size)) for n, (b, size) in blocks.items()})
        return BlockTable(types, source)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str) -> BlockTable:
        """The blocks a build recorded (``cache_types`` in its manifest.json)."""
        recorded = manifest.get("cache_types") or {}
        try:
            blocks = {n: (int(v["block"]), int(v["bytes"])) for n, v in recorded.items()}
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{where}: cache_types is not a table of block and bytes per type",
                             hint="rebuild with invoke build-ollama") from None
        if not blocks:
            raise UsageError(f"{where} records no cache types (a build from an older ollama-turbo?)",
                             hint="rebuild with invoke build-ollama, or plan with --fork SRC")
        return BUILTIN.with_blocks(blocks, f"the build {manifest.get('version', '?')} ({where})")


def cache_type(name: str) -> CacheType:
    try:
        return CACHE_TYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown cache type {name!r}; known: {', '.join(CACHE_TYPES)}",
                         hint="name one of them, or K/V as k/v (e.g. q8_0/turbo4)") from None


BUILTIN = BlockTable(CACHE_TYPES, "the built-in table (the fork as of 2026-05-04: turbo4 68 bytes per 128 values); "
                                  "--manifest or --fork reads a build's or a fork's own")


def parse_pair(spec: str) -> tuple[str, str]:
    """``turbo4`` -> (turbo4, turbo4); ``q8_0/turbo4`` -> (q8_0, turbo4)."""
    k, slash, v = spec.strip().partition("/")
    if slash and not (k.strip() and v.strip()):
        raise UsageError(f"{spec.strip()!r}: K and V must both be named", hint="write k/v, e.g. q8_0/turbo4, or "
                         "one name for both")
    k, v = k.strip().lower(), (v or k).strip().lower()
    cache_type(k), cache_type(v)
    return k, v


def label(type_k: str, type_v: str) -> str:
    """The one spelling of a K/V pair: ``turbo4`` when both are the same, else ``q8_0/turbo4``."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``f16,q8_0/turbo4`` -> [(f16, f16), (q8_0, turbo4)]."""
    return [parse_pair(p) for p in text.split(",") if p.strip()]
