"""A CUDA build in two parts: the base (Go binary, llama-server and tools, CPU backends: no CUDA toolkit
needed) and the GPU backend (Ollama's CUDA preset: ``lib/ollama/cuda_vNN/libggml-cuda.so`` and the CUDA
runtime libraries it needs), which llama-server loads at run time (``GGML_BACKEND_PATH``), as Ollama's own
releases are assembled.

The two can be built on one machine, or the base where Go modules can be fetched and the GPU backend on the
GPU box (``--part base``, then ``--base-from``): one identity, checked when they are put together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ollama_turbo.builder.llama_server import cmake_build, publish
from ollama_turbo.core import manifest, proc
from ollama_turbo.core.errors import TurboError, UsageError

BASE_PRESET = "cpu"  # the base of a GPU build: Ollama's CPU preset (llama-server, libllama, CPU variants)
PART = "part.json"   # what a base part records of itself (its manifest minus the files: they are re-hashed)


class PartError(TurboError):
    pass


def runner_dir(preset: str) -> str:
    """Where Ollama's preset installs its GPU backend under lib/ollama (``llama_cuda_v13_linux``: cuda_v13)."""
    return "cuda_v12" if "v12" in preset else "cuda_v13"


def build_key(fork_sha: str, server_tree: str, preset: str, arch: str, nvcc: str) -> str:
    return hashlib.sha256("\0".join([fork_sha, server_tree, preset, arch, nvcc]).encode()).hexdigest()[:16]


def build_backend(ollama_dir: Path, fork_dir: Path, work: Path, cache: Path, *, preset: str, arch: str,
                  toolkit: str, fork_sha: str, defines: tuple[str, ...], log: Path) -> tuple[Path, str]:
    """Build (or reuse) the CUDA backend module for ``arch`` with Ollama's ``preset`` and the CUDA ``toolkit``
    (nvcc's version line); (installed tree, key).

    The tree holds ``lib/ollama/<runner_dir>/``: libggml-cuda.so and the cuBLAS/cudart libraries it links.
    """
    key = build_key(fork_sha, manifest.tree_hash(ollama_dir, ["llama/server", "llama/compat"]), preset, arch,
                    toolkit)
    out = cache / key
    done = out / "lib" / "ollama" / runner_dir(preset)
    if done.is_dir():
        return out, key
    tmp = cache / f".{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_dir = work / "cmake-build-gpu"
    configure: list[str | Path] = ["--preset", preset, f"-DCMAKE_CUDA_ARCHITECTURES={arch}", *defines,
                                   f"-DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP={fork_dir}"]
    cmake_build(ollama_dir / "llama/server", build_dir, configure, log=log, min_cmake="3.24", targets=("ggml-cuda",))
    proc.run(["cmake", "--install", build_dir, "--component", "llama-server", "--prefix", tmp], log=log)
    if not list((tmp / "lib" / "ollama" / runner_dir(preset)).glob("libggml-cuda*")):
        raise PartError(f"Ollama's preset {preset} installed no libggml-cuda under lib/ollama/{runner_dir(preset)}",
                        hint=f"see the build log {log}")
    cache.mkdir(parents=True, exist_ok=True)
    publish(tmp, out, done=done)
    return out, key


def module(preset: str) -> str:
    return f"lib/ollama/{runner_dir(preset)}/libggml-cuda.so"


def record(preset: str, arch: str, toolkit: str, key: str) -> dict[str, Any]:
    """The manifest's ``gpu`` entry: what a deploy checks and what the tools load."""
    return {"backend": "cuda", "arch": arch, "preset": preset, "runner_dir": f"lib/ollama/{runner_dir(preset)}",
            "module": module(preset), "toolkit": toolkit, "cache_key": key}


def write_part(root: Path, data: dict[str, Any]) -> None:
    (root / PART).write_text(json.dumps(data, indent=2) + "\n")


def load_part(path: Path, *, identity: str, version: str, platform: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """A base part given to ``--base-from``, checked against the build about to be made from it."""
    root = path if path.is_dir() else path.parent
    try:
        data: dict[str, Any] = json.loads((root / PART).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--base-from {path}: not a base part of invoke build-ollama ({exc})",
                         hint="build one with invoke build-ollama --backend cuda --part base, and copy "
                              "<workspace>/parts/<version>/ here") from None
    if data.get("platform") != platform:
        raise UsageError(f"--base-from {root}: built for {data.get('platform')}, this machine is {platform}",
                         hint="build the base part on a machine of the GPU box's OS and CPU architecture")
    if data.get("version") != version or data.get("identity") != identity:
        raise UsageError(f"--base-from {root}: the base part is {data.get('version')} (identity "
                         f"{str(data.get('identity'))[:12]}), this build is {version} (identity {identity[:12]})",
                         hint="build both parts from the same Ollama and fork commits, rules, settings and "
                              "--cuda-arch; invoke build-ollama --dry-run prints the identity")
    bad = manifest.verify(root, data.get("files", {}))
    bad = [b for b in bad if b != PART]
    if bad:
        raise UsageError(f"--base-from {root}: files differ from its record: {', '.join(bad[:5])}",
                         hint="copy the base part again (e.g. rsync -a), or rebuild it")
    return root, data

