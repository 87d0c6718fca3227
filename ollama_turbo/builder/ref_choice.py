"""Which Ollama and which llama.cpp a build reads: the refs named, else the newest Ollama release the fork can
take (its compat patches carried, as api-check --scan-ollama ranks them); a stock build's llama.cpp is the one
Ollama pins, from the upstream source.
"""

from __future__ import annotations

import re
from pathlib import Path

from ollama_turbo.builder.options import PROBE_PATHS, BuildError, Options
from ollama_turbo.check import carry_rules, fork_contract
from ollama_turbo.check.carry import Upstream
from ollama_turbo.core import sources
from ollama_turbo.core.errors import SourceError, UsageError
from ollama_turbo.core.settings import Settings
from ollama_turbo.fork import sources as fork_sources


def pinned_upstream(settings: Settings, info: sources.OllamaInfo, flag: str = "") -> Upstream:
    """The llama.cpp this Ollama pins (``--upstream``, else ``turbo.sources.upstream``) at the pinned tag: the base
    of 3-way merges, opened only when a patch needs one."""
    url = flag or settings.sources.upstream.url
    return fork_contract.pinned_upstream(
        lambda: sources.open_source("upstream", url, info.pin, settings.workspace), info.pin, url)


NEWEST = "newest"  # a ref: the newest Ollama release whose compat patches the fork can take


def release_tags(co: sources.Checkout) -> list[str]:
    """Ollama's release tags (vX.Y.Z, no release candidates), newest first."""
    tags = co.git("tag", "--list", "v*", "--sort=-version:refname").stdout.split()
    return [t for t in tags if re.fullmatch(r"v\d+\.\d+\.\d+", t)]


def _carried_at(settings: Settings, opts: Options, co: sources.Checkout, fork: sources.Checkout,
                fork_dir: Path, probe: Path) -> fork_contract.Contract | None:
    """The contract of this Ollama commit with the fork, or None for an era this build cannot make."""
    try:
        info = sources.detect(co)
    except SourceError:
        return None
    o_dir = co.export(probe / f"ollama-{co.short}", PROBE_PATHS)
    placements = opts.placements or settings.build.placements
    return fork_contract.evaluate(
        info, o_dir, fork, fork_dir, upstream=pinned_upstream(settings, info, opts.upstream),
        scratch=probe / f"carry-{co.short}", leave_out=[*settings.build.leave_out, *opts.leave_out],
        rules=carry_rules.load(Path(placements)) if placements else [])


def newest_release(settings: Settings, opts: Options, url: str, fork: sources.Checkout, fork_dir: Path,
                   probe: Path) -> tuple[str, list[str]]:
    """The newest Ollama release whose compat patches the fork can take, and why each newer one was passed
    over (api-check --scan-ollama ranks the same way)."""
    base = sources.open_source("ollama", url, "HEAD", settings.workspace)
    passed: list[str] = []
    for tag in release_tags(base):
        co = sources.open_source("ollama", url, tag, settings.workspace, fetch=False)
        c = _carried_at(settings, opts, co, fork, fork_dir, probe)
        if c is None:
            passed.append(f"{tag}: not an Ollama this build can make (era A or unknown)")
            continue
        if not c.refused:
            return tag, passed
        why = c.refused[0]
        passed.append(f"{tag}: {why.why[:240]}" + (f" (the way out: --leave-out {why.feature.split()[-1]})"
                                                   if why.feature else ""))
    raise BuildError(f"no release of Ollama in {url} can be carried onto the fork {fork.ref} ({fork.short}): "
                     + "; ".join(passed[:3]), hint="name a ref with --ollama-ref, or see invoke api-check "
                                                   "--scan-ollama")



def sources_for(settings: Settings, opts: Options, probe: Path) -> tuple[sources.Checkout, sources.Checkout,
                                                                               list[str]]:
    """Ollama and the llama.cpp to build it with (the fork; for ``--stock`` upstream at Ollama's pin), and why
    this Ollama ref where none was named."""
    url = opts.ollama or settings.sources.ollama.url
    ref = opts.ollama_ref
    no_ref = not ref and not settings.sources.ollama.ref_given and sources.is_url(url)
    wants_newest = ref == NEWEST or no_ref or (not ref and settings.sources.ollama.ref == NEWEST)
    pick: list[str] = []
    if opts.stock:
        if wants_newest:
            base = sources.open_source("ollama", url, "HEAD", settings.workspace)
            tags = release_tags(base)
            if not tags:
                raise SourceError(f"no Ollama release tag in {url}", hint="name a ref with --ollama-ref")
            ref = tags[0]
            pick = [f"Ollama {ref}: the newest release (stock builds take any)"]
        ollama = sources.open_configured(settings, "ollama", opts.ollama, ref)
        info = sources.detect(ollama)
        if not info.era.rules.stock:
            raise UsageError(f"--stock builds an era C Ollama (v0.30.0 or later); {ollama.ref} is era {info.era}",
                             hint="name an era C release with --ollama-ref")
        up = opts.upstream or settings.sources.upstream.url
        try:
            llama = sources.open_source("upstream", up, info.pin, settings.workspace)
        except SourceError as exc:
            raise SourceError(f"a stock build of Ollama {ollama.ref} needs llama.cpp at its pin {info.pin}: "
                              f"{exc.message}",
                              hint="point --upstream (or turbo.sources.upstream.url) at a llama.cpp clone with that "
                                   f"tag, or make one from its sdist: invoke upstream-tree --builds "
                                   f"{info.pin.lstrip('b')} --dest DIR") from None
        return ollama, llama, pick
    fork = sources.open_configured(settings, "fork", opts.fork, opts.fork_ref)
    if wants_newest:
        fork_dir = fork.export(probe / "fork-newest", [*fork_sources.FORK_PATHS, "src/llama-arch.h"])
        ref, passed = newest_release(settings, opts, url, fork, fork_dir, probe / "newest")
        pick = [f"Ollama {ref}: the newest release whose compat patches the fork can take"
                + (" (no --ollama-ref or turbo.sources.ollama.ref named)" if no_ref else "")] + \
            [f"  passed over {p}" for p in passed]
    return sources.open_configured(settings, "ollama", opts.ollama, ref), fork, pick
