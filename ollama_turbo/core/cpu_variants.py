"""ggml's CPU variants: the ``lib/ollama/libggml-cpu-<variant>.so`` libraries a cpu-preset build ships (one per x86
microarchitecture), the CPU flags each needs, which one a host's loader is expected to pick, and how a server that
died of an illegal instruction (SIGILL) is named: the variant it loaded (its log's ``load_backend`` line), the flags
that variant needs and the way out (leave the variant out of the build or of the host's release).

Pure: no files, no hosts. The table is ours, written from the instruction sets each microarchitecture has, with
the flag names Linux's ``/proc/cpuinfo`` uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ollama_turbo.core.errors import UsageError

PREFIX = "libggml-cpu-"
_SSE42 = ("pni", "ssse3", "sse4_1", "sse4_2")
_AVX2 = (*_SSE42, "avx", "avx2", "fma", "f16c", "bmi2")
_AVX512 = (*_AVX2, "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
_ICELAKE = (*_AVX512, "avx512vbmi", "avx512_vnni")

# variant -> the CPU flags it needs (Linux /proc/cpuinfo names), weakest first
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": _SSE42,
    "sandybridge": (*_SSE42, "avx"),
    "ivybridge": (*_SSE42, "avx", "f16c"),
    "piledriver": (*_SSE42, "avx", "f16c", "fma"),
    "haswell": _AVX2,
    "alderlake": (*_AVX2, "avx_vnni"),
    "skylakex": _AVX512,
    "cannonlake": (*_AVX512, "avx512vbmi", "avx512ifma"),
    "cascadelake": (*_AVX512, "avx512_vnni"),
    "cooperlake": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "icelake": _ICELAKE,
    "zen4": (*_ICELAKE, "avx512_bf16"),
    "sapphirerapids": (*_ICELAKE, "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"),
}

# macOS ``sysctl machdep.cpu`` feature names -> the Linux names above
_SYSCTL = {"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni",
           "avx512bf16": "avx512_bf16", "avxvnni": "avx_vnni", "amxtile": "amx_tile", "amxint8": "amx_int8",
           "amxbf16": "amx_bf16"}

_LOADED = re.compile(r"loaded CPU backend from (\S*?" + PREFIX + r"([A-Za-z0-9_.]+?)\.(?:so|dylib|dll))")
_SIGILL = re.compile(r"illegal instruction|\bSIGILL\b|signal[: ]+4\b|(?:exit(?:ed)?(?: status| code)?|rc)[ =:]+132\b",
                     re.I)


def variant_of(path: str) -> str | None:
    """``lib/ollama/libggml-cpu-haswell.so`` -> ``haswell``; None for any other file."""
    name = path.rsplit("/", 1)[-1]
    m = re.fullmatch(re.escape(PREFIX) + r"([A-Za-z0-9_.]+?)\.(?:so|dylib|dll)", name)
    return m.group(1) if m else None


def variants_in(files: Iterable[str]) -> dict[str, str]:
    """The CPU variants among a build's files: variant -> file (relative to the dist)."""
    return {v: f for f in sorted(files) if (v := variant_of(f))}


def loaded_variant(log: str) -> tuple[str, str] | None:
    """The CPU variant a server loaded, from its log's last ``load_backend: loaded CPU backend from ...`` line:
    (variant, library path)."""
    found = _LOADED.findall(log)
    return (found[-1][1], found[-1][0]) if found else None


def is_sigill(text: str) -> bool:
    """Does this error or log say a process died of an illegal instruction (SIGILL, signal 4, exit 132)?"""
    return bool(_SIGILL.search(text))


def needs(variant: str) -> tuple[str, ...] | None:
    return VARIANTS.get(variant)


def parse_cpu_flags(text: str) -> set[str]:
    """The CPU's flags from Linux's ``/proc/cpuinfo`` (its first ``flags`` line) or macOS's ``sysctl machdep.cpu``
    (``features``, ``leaf7_features``, ``extfeatures`` lines), in the Linux names."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    out: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().startswith("machdep.cpu.") and "features" in key:
            for f in value.lower().split():
                out.add(_SYSCTL.get(f, f.replace(".", "_")))
    return out


def missing(variant: str, flags: set[str]) -> tuple[str, ...]:
    """The flags ``variant`` needs that ``flags`` lacks (a variant not in the table: none known)."""
    return tuple(f for f in VARIANTS.get(variant, ()) if f not in flags)


def expected_pick(present: Iterable[str], flags: set[str]) -> str | None:
    """The variant ggml's loader is expected to pick on a CPU reporting ``flags``: of those present whose flags
    it reports, the one that needs the most (the loader scores variants by the features they use)."""
    fit = [v for v in present if v in VARIANTS and not missing(v, flags)]
    return max(fit, key=lambda v: (len(VARIANTS[v]), list(VARIANTS).index(v))) if fit else None


@dataclass(frozen=True)
class Exclusion:
    """What leaving variants out does to a set of them: the files taken out, the names asked for that were not
    there, what remains."""

    excluded: dict[str, str]   # variant -> file left out
    absent: tuple[str, ...]    # asked for, not in these files (already left out, or never built)
    remaining: tuple[str, ...]

    def to_json(self, why: str) -> dict[str, object]:
        return {"excluded": sorted(self.excluded), "files": sorted(self.excluded.values()),
                "not_present": list(self.absent), "remaining": list(self.remaining), "why": why}


def exclude(requested: Iterable[str], files: Iterable[str], *, key: str) -> Exclusion:
    """Leave ``requested`` variants out of ``files``. Refused (naming ``key``, the setting or flag): a name that is
    neither in our table nor among the files, and leaving out every variant there is."""
    present = variants_in(files)
    names = list(dict.fromkeys(requested))
    known = [*VARIANTS, *sorted(set(present) - set(VARIANTS))]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"{key}: {unknown[0]!r} is not a CPU variant (known: {', '.join(known)})",
                         hint="name the variant as its library is named: lib/ollama/libggml-cpu-<variant>.so")
    excluded = {n: present[n] for n in names if n in present}
    remaining = tuple(v for v in present if v not in excluded)
    if present and not remaining:
        raise UsageError(f"{key}: leaving out {', '.join(names)} leaves no CPU variant at all (this build has "
                         f"{', '.join(present)})",
                         hint="keep at least one the host runs; x64 runs on every x86-64 CPU")
    return Exclusion(excluded, tuple(n for n in names if n not in present), remaining)


def explain_sigill(log: str, *, where: str, host: str = "") -> str:
    """One line naming a SIGILL: the variant loaded (from ``log``), the flags it needs, the way out."""
    got = loaded_variant(log)
    if got is None:
        return (f"{where} died of an illegal instruction (SIGILL, exit 132); its log names no CPU variant it "
                f"loaded (load_backend line): a library the CPU cannot run. Leave the variant out "
                f"({_setting(host, '<variant>')}, or build-ollama --cpu-exclude <variant>)")
    variant, path = got
    need = describe_needs(variant)
    return (f"{where} died of an illegal instruction (SIGILL, exit 132) in CPU variant {variant} "
            f"({path.rsplit('/', 1)[-1]}, {need}): the CPU reports these flags but cannot run them (a hypervisor "
            f"advertising AMX without enabling it is one known cause). Leave it out: {_setting(host, variant)}, or "
            f"build-ollama --cpu-exclude {variant}; ggml then loads the next best variant")


def describe_needs(variant: str) -> str:
    """What a variant needs, short: the flags it adds to the strongest variant below it (whose flags it all needs)."""
    flags = VARIANTS.get(variant)
    if flags is None:
        return "its flags are not in our table"
    if not flags:
        return "needs no flag beyond x86-64"
    below = [v for v, f in VARIANTS.items() if v != variant and set(f) < set(flags)]
    base = max(below, key=lambda v: len(VARIANTS[v])) if below else None
    if base is None or not VARIANTS[base]:
        return f"needs {' '.join(flags)}"
    extra = [f for f in flags if f not in VARIANTS[base]]
    return f"needs {' '.join(extra)} on top of {base}'s {len(VARIANTS[base])} flags"


def _setting(host: str, variant: str) -> str:
    return f"turbo.hosts.{host or '<host>'}.cpu_exclude: [{variant}]"
