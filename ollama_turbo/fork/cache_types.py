"""Cache types: block formats, the ``K/V`` spelling users write, and its one label.

A cache type stores ``block`` values in ``block_bytes`` bytes. These are the formats as ggml and
the fork define them at the snapshot this project was written against; a build reads the real
ones from its fork (:mod:`ollama_turbo.fork.blocks`) and records them in its manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..core.errors import UsageError
from ..core.kv_types import CACHE_TYPES, GIB, MIB, CacheType, KVMemError, KVPair, cache_type, label
from ..core.manifest import Manifest

__all__ = ["BUILTIN", "CACHE_TYPES", "GIB", "MIB", "BlockTable", "CacheType", "KVMemError", "cache_type",
           "label", "parse_pair", "parse_pairs"]


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
    def from_manifest(cls, manifest: Manifest) -> BlockTable:
        """The blocks a build recorded (``cache_types`` in its manifest.json)."""
        if not manifest.cache_types:
            raise UsageError(f"{manifest.path} records no cache types (a build from an older ollama-turbo?)",
                             hint="rebuild with invoke build-ollama, or plan with --fork SRC")
        return BUILTIN.with_blocks(manifest.cache_types, f"the build {manifest.version} ({manifest.path})")


BUILTIN = BlockTable(CACHE_TYPES, "the built-in table (the fork as of 2026-05-04: turbo4 68 bytes per 128 values); "
                                  "--manifest or --fork reads a build's or a fork's own")


def parse_pair(spec: str) -> KVPair:
    """``turbo4`` -> turbo4/turbo4; ``q8_0/turbo4`` -> K q8_0, V turbo4 (:meth:`KVPair.parse`)."""
    return KVPair.parse(spec)


def parse_pairs(text: str) -> list[KVPair]:
    """``f16,q8_0/turbo4`` -> [f16/f16, q8_0/turbo4]."""
    return [parse_pair(p) for p in text.split(",") if p.strip()]
