"""The contract between one Ollama release and the fork, evaluated once.

What this Ollama needs from the llama.cpp it runs, and how the fork meets it: the llama-server flags Ollama
passes (those the fork lacks are dropped, or passed under the fork's older name), the cache types the fork
accepts, the Go KV-cache allowlists, and Ollama's compat patches carried onto the fork hunk by hunk
(:mod:`ollama_turbo.check.carry`). ``api-check`` reports it, the build plan acts on it, the manifest records
it; none of them works it out again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.check import carry, contract, unidiff
from ollama_turbo.check.carry import Carried, CarryError, Upstream
from ollama_turbo.check.carry_rules import RULES
from ollama_turbo.check.placement import PlacementRule
from ollama_turbo.core import sources
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import TurboError
from ollama_turbo.fork import sources as fork_sources

REFUSED = carry.REFUSED

# Flags Ollama passes under a condition that upstream llama.cpp renamed after the fork's base: the newer
# spelling (flag, value) and the older one the fork may have. A Go rule passes the fork's name instead.
FLAG_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "--load-mode": (("none", "--no-mmap"), ("dio", "--direct-io")),
}


@dataclass(frozen=True)
class Rename:
    flag: str
    value: str
    fork_flag: str
    line: int

    def to_json(self) -> dict[str, Any]:
        return {"flag": f"{self.flag} {self.value}", "fork_flag": self.fork_flag, "line": self.line}


@dataclass
class Contract:
    """One Ollama release against one fork commit. An era whose contract is llama-server's argv (C) fills
    ``flags``, ``dropped_flags``, ``renamed_flags`` and ``carried``; a vendored era (B) ``allowlists`` and
    ``patches`` (applied by Ollama's own ``git am -3`` at build time)."""

    era: Era
    info: sources.OllamaInfo
    fork_types: list[str]
    allowlists: list[contract.Allowlist] = field(default_factory=list)
    flags: list[contract.Flag] = field(default_factory=list)
    dropped_flags: list[str] = field(default_factory=list)
    renamed_flags: list[Rename] = field(default_factory=list)
    carried: list[Carried] = field(default_factory=list)
    upstream: str = ""  # the base of 3-way merges, or why there was none
    carry_seconds: float = 0.0
    patches: list[str] = field(default_factory=list)  # era B: Ollama's patches, applied as they are by its build

    @property
    def refused(self) -> list[Carried]:
        return [c for c in self.carried if c.status == REFUSED]

    @property
    def left_out(self) -> list[Carried]:
        return [c for c in self.carried if c.status == carry.LEFT_OUT]

    def require_carried(self) -> None:
        """Stop (a build) at the first patch that could not be carried, with its reason."""
        for c in self.refused:
            raise CarryError(c.why, hint=c.hint)

    def require_applied(self, llama: str) -> None:
        """A stock build: every compat patch applies to ``llama`` (the llama.cpp Ollama pins) as it is."""
        for c in self.carried:
            if c.status != carry.APPLIED:
                raise CarryError(f"Ollama's compat patch {c.patch} does not apply as it is to {llama}: that is not "
                                 "the llama.cpp this Ollama pins" + (f" ({c.why[:300]})" if c.why else ""),
                                 hint="point --upstream (or turbo.sources.upstream.url) at llama.cpp with the exact "
                                      "tag Ollama's LLAMA_CPP_VERSION names; nothing was built")

    def patch_records(self) -> list[dict[str, Any]]:
        """What the manifest records of each compat patch carried onto the fork (with how)."""
        return [c.to_json() for c in self.carried]

    def patch_names(self) -> list[str]:
        """The patches the build takes, by file."""
        return [c.patch for c in self.carried] if self.era.rules.carries_patches else list(self.patches)


def fork_file(fork_dir: Path, rel: str) -> str:
    p = fork_dir / rel
    return p.read_text(errors="replace") if p.is_file() else ""


def server_flags(ollama_dir: Path, defined: set[str]) -> tuple[list[contract.Flag], list[str], list[Rename]]:
    """Era C: the flags ``llm/llama_server.go`` passes, each marked in the fork or not; those it always passes
    and the fork lacks (dropped); those passed under a condition that the fork has under an older name."""
    go = (ollama_dir / "llm/llama_server.go").read_text(errors="replace")
    flags = contract.server_flags(go)
    for f in flags:
        f.in_fork = f.name in defined
    dropped = [f.name for f in flags if f.always and not f.in_fork]
    renamed = []
    for f in flags:
        if f.in_fork or f.name not in FLAG_RENAMES:
            continue
        for value, old in FLAG_RENAMES[f.name]:
            if old in defined and f'"{f.name}", "{value}"' in go:
                renamed.append(Rename(f.name, value, old, f.line))
    return flags, dropped, renamed


def compat_patches(ollama_dir: Path) -> list[tuple[str, str]]:
    """Ollama's compat patches (name, text) in the order its ``apply-patch.cmake`` applies them: every
    ``*.patch`` under ``llama/compat``, sorted by file name."""
    root = ollama_dir / "llama/compat"
    found = sorted(root.rglob("*.patch"), key=lambda p: (p.name, str(p))) if root.is_dir() else []
    return [(str(p.relative_to(ollama_dir)), p.read_text(errors="surrogateescape")) for p in found]


def evaluate(info: sources.OllamaInfo, ollama_dir: Path, fork: sources.Checkout, fork_dir: Path, *,
             upstream: Upstream, scratch: Path, leave_out: Iterable[str] = (),
             rules: Iterable[PlacementRule] = ()) -> Contract:
    """The contract of this Ollama (exported to ``ollama_dir``) with the fork (its sources in ``fork_dir``; the
    files the patches touch are copied into ``scratch`` and carried there). A patch that cannot be carried is
    recorded as refused, with its reason; :meth:`Contract.require_carried` turns that into an error."""
    arg_cpp, ggml_c = fork_sources.read_fork_sources(fork_dir)
    c = Contract(era=info.era, info=info, fork_types=fork_sources.fork_cache_types(arg_cpp, ggml_c),
                 allowlists=contract.kv_allowlists(ollama_dir))
    if not info.era.rules.server_argv:  # a vendored era: its patches are applied by Ollama's own mechanism
        c.patches = sorted(str(p.relative_to(ollama_dir)) for p in (ollama_dir / info.era.rules.patch_dir)
                           .glob("*.patch"))
        return c
    c.flags, c.dropped_flags, c.renamed_flags = server_flags(ollama_dir, fork_sources.fork_flags(arg_cpp))
    named = compat_patches(ollama_dir)
    t0 = time.perf_counter()
    targets = sorted({t for name, text in named for t in _targets(name, text)})
    fork.export(scratch, targets)
    compat_dir = ollama_dir / "llama/compat"
    others = sorted(str(p.relative_to(ollama_dir)) for p in compat_dir.rglob("*")
                    if p.is_file() and p.suffix != ".patch") if compat_dir.is_dir() else []
    carrier = carry.Carrier(scratch, upstream=upstream, rules=[*RULES, *rules], leave_out=leave_out,
                            fork_archs=carry.fork_architectures(fork_file(fork_dir, "src/llama-arch.h")),
                            compat_sources=others)
    for name, text in named:
        try:
            c.carried.append(carrier.carry(unidiff.parse(name, text), text))
        except (CarryError, unidiff.DiffError) as exc:
            c.carried.append(Carried(name, carry.sha256_text(text), REFUSED, why=exc.message, hint=exc.hint or "",
                                     feature=exc.feature if isinstance(exc, CarryError) else ""))
    c.upstream = upstream.describe()
    c.carry_seconds = round(time.perf_counter() - t0, 3)
    return c


def _targets(name: str, text: str) -> list[str]:
    try:
        return unidiff.parse(name, text).targets
    except unidiff.DiffError:
        return []


def pinned_upstream(open_source: Callable[[], sources.Checkout], tag: str, where: str) -> Upstream:
    """The llama.cpp Ollama pins, opened only when a 3-way merge needs it (``open_source`` opens the configured
    upstream at ``tag``); a source without that tag, or none at all, is no base, and says why."""
    state: dict[str, Any] = {}

    def checkout() -> sources.Checkout | None:
        if "co" not in state:
            try:
                state["co"] = open_source()
            except TurboError as exc:
                state["co"], state["why"] = None, exc.message
        return state["co"]  # type: ignore[no-any-return]

    def read(path: str) -> str | None:
        co = checkout()
        if co is None:
            raise carry.NoUpstream(state["why"])
        return co.read(path) if co.exists(path) else None

    return Upstream(label=f"llama.cpp {tag} ({where})", read=read)
