"""What a build-ollama run is asked for (its flags), and its error: shared by the plan and the choice of refs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ollama_turbo.core.errors import TurboError

PROBE_PATHS = ["go.mod", "fs/ggml/ggml.go", "llm/llama_server.go", "llama/llama.go", "ml/backend.go",
               "runner/ollamarunner/cache.go", "llama/patches", "llama/compat", "Makefile.sync",
               "llama/server/CMakeLists.txt"]


class BuildError(TurboError):
    pass


@dataclass
class Options:
    ollama: str = ""
    ollama_ref: str = ""
    fork: str = ""
    fork_ref: str = ""
    backend: str = ""
    dry_run: bool = False
    force: bool = False
    allow_dirty: bool = False
    go_env: dict[str, str] = field(default_factory=dict)  # e.g. GOPROXY for this build only
    skip_verify: bool = False  # build even when verify-fork finds a failing quantizer check
    cuda_arch: str = ""  # --backend cuda: the GPU architecture (default: turbo.build.cuda_arch, else this GPU's)
    part: str = ""  # "base": all but the GPU backend (no CUDA toolkit needed), into <workspace>/parts/<version>
    base_from: str = ""  # a base part built elsewhere: build the GPU backend here and assemble one dist
    upstream: str = ""  # the llama.cpp Ollama pins (a checkout or URL), the base of 3-way merges
    leave_out: tuple[str, ...] = ()  # model architectures whose compat patches to leave out (with the settings')
    placements: str = ""  # a YAML file of placement rules (with turbo.build.placements)
    stock: bool = False  # stock Ollama: the llama.cpp it pins (from the upstream source), no fork, no rules of ours
    cpu_exclude: tuple[str, ...] = ()  # ggml CPU variants left out of the dist (with turbo.build.cpu_exclude)


