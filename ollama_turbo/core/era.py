"""Ollama's integration eras, as one type with their rules.

An Ollama tree is era B (llama.cpp vendored into Ollama and linked through cgo, v0.4.0 … v0.24.0) or era C
(llama.cpp fetched by Ollama's CMake and run as a ``llama-server`` subprocess, v0.30.0 on). Everything that
differs between them (how a tree is recognised, where Ollama keeps its patches, what its contract with
llama.cpp is, which Go rules a custom build needs, how it is built, what a server can be given) is an
attribute of :class:`Era` here; the stages ask the era instead of comparing its name.

``Era`` is a string enum: it is written as ``"B"``/``"C"`` in manifests and reports and compares equal to
those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Go rule families (ollama_turbo.builder.go_rules) an era's custom build applies; FAMILIES is their order
KV_BYTES = "kv-bytes"            # kvCacheBytesPerElement learns the fork's block sizes
ALLOWLISTS = "allowlists"        # the Go KV-cache allowlists learn the fork's types (era B drops unknown ones)
DROP_FLAGS = "drop-flags"        # flags Ollama always passes that the fork lacks are dropped from the argv
RENAME_FLAGS = "rename-flags"    # flags the fork has under an older name are passed by that name
PER_MODEL = "per-model"          # PARAMETER kv_cache_type: a cache type per model
CONTEXT_SHIFT = "context-shift"  # no --context-shift for a quantized K cache
FAMILIES = (KV_BYTES, ALLOWLISTS, DROP_FLAGS, RENAME_FLAGS, PER_MODEL, CONTEXT_SHIFT)


@dataclass(frozen=True)
class EraRules:
    """What one era is made of."""

    releases: str
    markers: tuple[str, ...]      # files that, all present, make a tree this era
    pin_file: str                 # where Ollama names the llama.cpp it pins
    pin_label: str                # how the pin is shown: "FETCH_HEAD <sha>" or "<tag>"
    patch_dir: str                # Ollama's own patches to llama.cpp
    patch_mechanism: str          # how Ollama applies them
    integration: str              # how llama.cpp (and so the fork) becomes part of Ollama
    links_c_api: bool             # Ollama calls llama.cpp's C API through cgo (the contract is the ABI)
    pinned_includes: tuple[str, ...]  # the pinned llama.cpp headers inside Ollama's tree (vendored eras)
    server_argv: bool             # Ollama runs llama-server and passes it flags (the contract is its CLI)
    carries_patches: bool         # Ollama's patches are carried onto the fork hunk by hunk before the build
    kv_split: bool                # a server can be given different K and V types
    per_model_kv: bool            # a cache type per model (PARAMETER kv_cache_type) is possible
    per_model_why_not: str        # why not, where it is not
    cmake_presets: bool           # llama.cpp is built with Ollama's CMake presets (cpu, CUDA, darwin)
    cuda: bool                    # a CUDA build of the custom Ollama can be made
    stock: bool                   # a stock build (Ollama with the llama.cpp it pins) can be made
    go_rules: tuple[str, ...]     # the Go rule families a custom build applies
    build_steps: tuple[str, ...]  # the build's commands, with {fork_git} {fork_sha} {ldflags} {preset}
                                  # {defines} {targets} to fill


_RULES: dict[str, EraRules] = {
    "B": EraRules(
        releases="v0.4.0 … v0.24.0",
        markers=("Makefile.sync", "llama/llama.cpp"),
        pin_file="Makefile.sync",
        pin_label="FETCH_HEAD",
        patch_dir="llama/patches",
        patch_mechanism="git am -3 in llama/vendor (make -f Makefile.sync apply-patches)",
        integration="vendored: the fork is synced into llama/llama.cpp and ml/backend/ggml/ggml and built into "
                    "Ollama's binary through cgo",
        links_c_api=True,
        pinned_includes=("llama/llama.cpp/include", "ml/backend/ggml/ggml/include"),
        server_argv=False,
        carries_patches=False,
        kv_split=False,
        per_model_kv=False,
        per_model_why_not="era B runs llama.cpp inside Ollama through cgo, with one cache type per process; "
                          "a cache type per model needs an era C Ollama (v0.30.0 or later)",
        cmake_presets=False,
        cuda=False,
        stock=False,
        go_rules=(KV_BYTES, ALLOWLISTS),
        build_steps=(
            "go mod download (through GOPROXY, vendor/ or the module cache)",
            "make -f Makefile.sync UPSTREAM={fork_git} FETCH_HEAD={fork_sha} clean apply-patches sync",
            'go build -trimpath -ldflags "{ldflags}" -o bin/ollama .',
        ),
    ),
    "C": EraRules(
        releases="v0.30.0 … now",
        markers=("LLAMA_CPP_VERSION", "llama/server/CMakeLists.txt"),
        pin_file="LLAMA_CPP_VERSION",
        pin_label="",
        patch_dir="llama/compat",
        patch_mechanism="llama/compat/apply-patch.cmake at configure time",
        integration="llama-server subprocess: Ollama's CMake builds the fork given as "
                    "FETCHCONTENT_SOURCE_DIR_LLAMA_CPP, and Ollama runs its llama-server",
        links_c_api=False,
        pinned_includes=(),
        server_argv=True,
        carries_patches=True,
        kv_split=True,
        per_model_kv=True,
        per_model_why_not="",
        cmake_presets=True,
        cuda=True,
        stock=True,
        go_rules=(KV_BYTES, DROP_FLAGS, RENAME_FLAGS, PER_MODEL, CONTEXT_SHIFT),
        build_steps=(
            "go mod download (through GOPROXY, vendor/ or the module cache; before any CMake work)",
            "cmake -S llama/server -B <build> --preset {preset} -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<fork copy>"
            "{defines}",
            "cmake --build <build> --target {targets}",
            "cmake --install <build> --component llama-server",
            'go build -trimpath -ldflags "{ldflags}" -o bin/ollama .',
        ),
    ),
}


class UnknownEra(ValueError):
    """A name that is no era of Ollama's this toolkit builds."""


class Era(StrEnum):
    """One of Ollama's integration eras; :attr:`rules` says what it is made of."""

    B = "B"
    C = "C"

    @classmethod
    def named(cls, name: str) -> Era:
        """The era called ``name`` ("B" or "C"); :class:`UnknownEra` for anything else."""
        try:
            return cls(name)
        except ValueError:
            raise UnknownEra(f"{name!r} is not an era ({' or '.join(e.value for e in cls)})") from None

    @property
    def rules(self) -> EraRules:
        return _RULES[self.value]

    def pin_text(self, pin: str) -> str:
        """The pin as a person reads it: ``FETCH_HEAD 1234abcd5678`` or ``b9452``."""
        label = self.rules.pin_label
        return f"{label} {pin[:12]}" if label else pin

    def pin_record(self, pin: str, merge_base: str = "") -> dict[str, str]:
        """The pin as a manifest records it."""
        return {"fetch_head": pin} if self.rules.pin_label else {"tag": pin, "merge_base": merge_base}

    def build_steps(self, **values: str) -> list[str]:
        """The build's commands, filled in (see :attr:`EraRules.build_steps`)."""
        return [step.format(**values) for step in self.rules.build_steps]
