"""Build llama.cpp's own ``llama-server`` (no Ollama around it), cached by source hash.

Used for hosts that run the fork's server directly, and by the real test tier. The binary
is linked statically (``BUILD_SHARED_LIBS=OFF``) and built for any CPU of the architecture
(``GGML_NATIVE=OFF``) so it can be cached and copied to other machines.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ollama_turbo.core import proc, toolchain
from ollama_turbo.core.manifest import tree_hash

BACKEND_FLAGS = {
    "cpu": [],
    "metal": ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"],
    "cuda": ["-DGGML_CUDA=ON"],
}
COMMON_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
]
# Files whose content decides the build (everything else in a llama.cpp tree is docs, models,
# scripts and tests).
SOURCE_DIRS = ("CMakeLists.txt", "cmake", "common", "ggml", "include", "src", "tools/server",
               "vendor")


def cmake_build(src: Path, build_dir: Path, configure: list[str | Path], *, log: Path, min_cmake: str,
                targets: tuple[str, ...] = ("llama-server",)) -> None:
    """The one way a llama-server is built: configure ``src`` into ``build_dir``, build ``targets``.

    ``src`` is llama.cpp itself or Ollama's ``llama/server`` project around it; ``configure``
    carries the generator, preset and flags.
    """
    toolchain.require_cmake(min_cmake)
    launcher, env = compiler_cache(build_dir.parent)
    proc.run(["cmake", "-S", src, "-B", build_dir, *configure, *launcher], log=log, extra_env=env)
    proc.run(["cmake", "--build", build_dir, "--target", *targets, "-j", toolchain.jobs()], log=log, extra_env=env)


def compiler_cache(base: Path) -> tuple[list[str], dict[str, str]]:
    """ccache as the compiler launcher where it is installed, with paths under ``base`` hashed as relative ones:
    a rebuild from another scratch copy, or of a fork commit that changed a few files, compiles only those."""
    if not shutil.which("ccache") or os.environ.get("TURBO_NO_CCACHE"):
        return [], {}
    return (["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"],
            {"CCACHE_BASEDIR": str(base.resolve()), "CCACHE_NOHASHDIR": "1"})


# built from the same sources and flags as llama-server: for invoke quality, and bench's llama-bench column
TOOLS = ("llama-perplexity", "llama-bench")
TOOLS_KEY = "tools with their own libraries: " + " ".join(TOOLS)  # what the llama-server cache holds of them
SHARED = re.compile(r"\.(so(\.\d+)*|dylib)$")


def build_tools(build_dir: Path, dest: Path, *, log: Path) -> dict[str, str]:
    """Build :data:`TOOLS` in a configured ``build_dir`` and copy them into ``dest``; name -> outcome.

    Best effort: a tree whose CMake has no such target still gives its llama-server.
    """
    outcome = {}
    for tool in TOOLS:
        r = proc.run(["cmake", "--build", build_dir, "--target", tool, "-j", toolchain.jobs()], check=False, log=log,
                     extra_env=compiler_cache(build_dir.parent)[1])
        found = [p for p in build_dir.rglob(tool) if p.is_file() and os.access(p, os.X_OK)] if r.ok else []
        if found:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found[0], dest / tool)
            # newer llama.cpp builds a tool as a thin program over a library of its own (libllama-bench-impl.so)
            for lib in sorted(p for p in build_dir.rglob(f"lib{tool}*") if p.is_file() and SHARED.search(p.name)):
                shutil.copy2(lib, dest / lib.name)
            outcome[tool] = "built"
        else:
            outcome[tool] = f"not built (exit {r.returncode}; see {log})"
    return outcome


def source_hash(src: Path) -> str:
    """A content hash of the parts of a llama.cpp tree that the server build reads."""
    return tree_hash(src, SOURCE_DIRS)


def build_key(src: Path, backend: str) -> str:
    h = hashlib.sha256(source_hash(src).encode())
    h.update(" ".join(COMMON_FLAGS + BACKEND_FLAGS[backend] + list(TOOLS)).encode())
    cc = shutil.which("cc") or ""
    h.update(cc.encode())
    return h.hexdigest()[:16]


def build(src: Path, cache: Path, *, backend: str = "cpu", log: Path | None = None) -> Path:
    """Build ``llama-server`` (and llama-perplexity beside it) from ``src`` once per (sources, flags);
    return the cached llama-server."""
    key = build_key(src, backend)
    out = cache / f"llama-server-{backend}-{key}"
    binary = out / "bin" / "llama-server"
    if binary.is_file():
        return binary
    work = cache / f".build-{key}-{os.getpid()}"
    tmp = cache / f".out-{key}-{os.getpid()}"
    log = log or (cache / f"llama-server-{backend}-{key}.log")
    generator: list[str | Path] = ["-G", "Ninja"] if shutil.which("ninja") else []
    try:
        cmake_build(src, work, [*generator, *COMMON_FLAGS, *BACKEND_FLAGS[backend]], log=log, min_cmake="3.14")
        (tmp / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "bin" / "llama-server", tmp / "bin" / "llama-server")
        build_tools(work, tmp / "bin", log=log)
        publish(tmp, out, done=binary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


def publish(tmp: Path, out: Path, *, done: Path) -> None:
    """Move a finished build from ``tmp`` to ``out`` in one rename. Another process that published the same
    build first wins (``done`` exists): this one's copy is dropped, not an error."""
    try:
        tmp.rename(out)
    except OSError:
        if not done.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
