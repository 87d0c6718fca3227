"""Era C build steps: llama-server with CMake (presets), then the Go binary, version-stamped."""

from __future__ import annotations

from pathlib import Path

from ollama_turbo.build.llama_server import cmake_build
from ollama_turbo.core import proc, toolchain

PRESETS = {"cpu": "cpu", "metal": "darwin", "cuda": "llama_cuda_v13_linux"}
VERSION_VAR = "github.com/ollama/ollama/version.Version"
MODE_VAR = "github.com/ollama/ollama/server.mode"


def ldflags(version: str) -> str:
    return f"-s -w -X={VERSION_VAR}={version} -X={MODE_VAR}=release"


def build_llama_server(ollama: Path, build_dir: Path, prefix: Path, *, preset: str,
                       source_dir: Path | None, log: Path) -> Path:
    configure: list[str | Path] = ["--preset", preset]
    if source_dir is not None:
        configure.append(f"-DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP={source_dir}")
    cmake_build(ollama / "llama/server", build_dir, configure, log=log, min_cmake="3.24")
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
