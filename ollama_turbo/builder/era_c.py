"""Era C build steps: llama-server with CMake (presets), then the Go binary, version-stamped."""

from __future__ import annotations

import re
from pathlib import Path

from ollama_turbo.builder.llama_server import cmake_build
from ollama_turbo.core import proc, toolchain

VERSION_VAR = "github.com/ollama/ollama/version.Version"
MODE_VAR = "github.com/ollama/ollama/server.mode"


def ldflags(version: str) -> str:
    return f"-s -w -X={VERSION_VAR}={version} -X={MODE_VAR}=release"


PROGRAMS = ("llama-server", "llama-quantize")  # what Ollama runs from lib/ollama/


def install_targets(cmakelists: str) -> tuple[str, ...]:
    """The programs Ollama's ``llama/server`` project installs beside llama-server (its ``install(TARGETS ...)``):
    v0.30.0 also installs ``llama-quantize``, which ``ollama create`` runs to check a GGUF."""
    installed = {w for block in re.findall(r"install\(\s*TARGETS\s+([^)]*)\)", cmakelists) for w in block.split()}
    return tuple(p for p in PROGRAMS if p == "llama-server" or p in installed)


def build_llama_server(ollama: Path, build_dir: Path, prefix: Path, *, preset: str,
                       source_dir: Path | None, log: Path, defines: tuple[str, ...] = (),
                       targets: tuple[str, ...] | None = None) -> Path:
    """``targets``: what to build (a build plan's); without, what Ollama's ``llama/server`` installs."""
    configure: list[str | Path] = ["--preset", preset, *defines]
    if source_dir is not None:
        configure.append(f"-DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP={source_dir}")
    if targets is None:
        targets = install_targets((ollama / "llama/server/CMakeLists.txt").read_text(errors="replace"))
    cmake_build(ollama / "llama/server", build_dir, configure, log=log, min_cmake="3.24", targets=targets)
    proc.run(["cmake", "--install", build_dir, "--component", "llama-server", "--prefix", prefix], log=log)
    return prefix / "lib" / "ollama" / "llama-server"


def go_build(ollama: Path, out: Path, *, version: str, log: Path, force: bool = False,
             extra_env: dict[str, str] | None = None) -> Path:
    toolchain.require_go(toolchain.go_mod_version((ollama / "go.mod").read_text()))
    out.parent.mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = ["go", "build", "-trimpath", "-ldflags", ldflags(version), "-o", out]
    if force:
        argv.insert(2, "-a")
    argv.append(".")
    proc.run(argv, cwd=ollama, extra_env=toolchain.go_env(extra_env), log=log)
    return out


def fork_cmake_adaptations(server_cmakelists: str) -> list[dict[str, str]]:
    """CMake switches the fork names differently from the llama.cpp Ollama pins, set the way Ollama wants them.

    Ollama turns the web UI off (``LLAMA_BUILD_UI``/``LLAMA_BUILD_HTML`` OFF, ``--no-webui``); a fork from before
    upstream renamed it has ``LLAMA_BUILD_WEBUI`` (default ON), whose assets (``tools/server/public/bundle.js``)
    a checkout need not have.
    """
    out = []
    if re.search(r"option\(\s*LLAMA_BUILD_WEBUI\b", server_cmakelists):
        out.append({"define": "-DLLAMA_BUILD_WEBUI=OFF",
                    "why": "the fork's tools/server/CMakeLists.txt names its web-UI switch LLAMA_BUILD_WEBUI (ON by "
                           "default); Ollama builds llama-server without the web UI (it sets LLAMA_BUILD_UI OFF and "
                           "passes --no-webui), so it is turned off under the fork's name"})
    return out
