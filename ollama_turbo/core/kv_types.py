"""The cache's vocabulary, as the settings speak it: the cache types a user can name (their block formats as
ggml and the fork define them at the snapshot this project was written against) and the fork's knobs a server's
environment sets. Checked once, when the settings are read, and passed down typed: what the fork *does* with
them is :mod:`ollama_turbo.fork.behaviour`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .errors import ConfigError, TurboError, UsageError

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


def cache_type(name: str) -> CacheType:
    try:
        return CACHE_TYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown cache type {name!r}; known: {', '.join(CACHE_TYPES)}",
                         hint="name one of them, or K/V as k/v (e.g. q8_0/turbo4)") from None


def label(type_k: str, type_v: str) -> str:
    """The one spelling of a K/V pair: ``turbo4`` when both are the same, else ``q8_0/turbo4``."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"


@dataclass(frozen=True)
class KVPair:
    """The cache of one server or model: a K type and a V type, parsed once, written one way (:attr:`label`)."""

    k: str
    v: str

    @classmethod
    def parse(cls, spec: str) -> KVPair:
        """``turbo4`` (both) or ``q8_0/turbo4``; each a cache type this project knows."""
        k, slash, v = spec.strip().partition("/")
        if slash and not (k.strip() and v.strip()):
            raise UsageError(f"{spec.strip()!r}: K and V must both be named",
                             hint="write k/v, e.g. q8_0/turbo4, or one name for both")
        k, v = k.strip().lower(), (v or k).strip().lower()
        cache_type(k), cache_type(v)
        return cls(k, v)

    @property
    def label(self) -> str:
        return label(self.k, self.v)

    @property
    def symmetric(self) -> bool:
        return self.k == self.v

    def __str__(self) -> str:
        return self.label

    def __iter__(self) -> Iterator[str]:
        """``k, v = pair``: the two types, K first."""
        return iter((self.k, self.v))


LAYER_ADAPTIVE_MODES = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class ForkBehaviour:
    """Switches for the fork's size-changing behaviours (all on = what the fork does)."""

    pad_turbo_heads: bool = True
    auto_asymmetric: bool = True
    layer_adaptive: int | None = None  # TURBO_LAYER_ADAPTIVE; None = unset (fork's default)
    ubatch: int = 512

    @classmethod
    def from_env(cls, env: Mapping[str, str], origin: Callable[[str], str] | None = None) -> ForkBehaviour:
        """The fork's knobs from a server's environment (``turbo.kv.env``), each value checked: a knob the fork
        would read differently from what was meant is a settings error, named (with ``origin(key)``, the file
        that set it), when the settings are read."""
        where = origin or (lambda key: "")
        la = env.get("TURBO_LAYER_ADAPTIVE")
        mode = None
        if la is not None and str(la).strip() != "":
            try:
                mode = int(la)
            except ValueError:
                mode = -1
            if mode not in LAYER_ADAPTIVE_MODES:
                raise ConfigError(f"{la!r} is not a layer-adaptive mode of the fork: one of "
                                  f"{', '.join(map(str, LAYER_ADAPTIVE_MODES))}", key="kv.env.TURBO_LAYER_ADAPTIVE",
                                  source=where("kv.env.TURBO_LAYER_ADAPTIVE") or None,
                                  hint="0 turns it off; leave it out for the fork's default")
        asym = str(env.get("TURBO_AUTO_ASYMMETRIC", "1")).strip()
        if asym not in ("0", "1"):
            raise ConfigError(f"{asym!r}: the fork reads 0 (off) or 1 (on)", key="kv.env.TURBO_AUTO_ASYMMETRIC",
                              source=where("kv.env.TURBO_AUTO_ASYMMETRIC") or None, hint="give 0 or 1")
        return cls(auto_asymmetric=asym != "0", layer_adaptive=mode)

    @classmethod
    def none(cls) -> ForkBehaviour:
        return cls(pad_turbo_heads=False, auto_asymmetric=False, layer_adaptive=0)


