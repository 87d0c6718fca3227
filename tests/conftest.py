from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import era_c as build_era_c
from ollama_turbo.core import proc
from ollama_turbo.core.ports import free_port
from ollama_turbo.prove.ollama_api import Client

from . import real_assets

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``invoke`` CLI on this project's tasks."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout)


@contextlib.contextmanager
def serving(binary: Path, log: Path, env: dict[str, str]) -> Iterator[Client]:
    """Run ``binary serve`` on a free loopback port for the duration of the block."""
    port = free_port()
    p = proc.spawn([binary, "serve"], log=log, extra_env={"OLLAMA_HOST": f"127.0.0.1:{port}", **env})
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=60)
        client.wait_ready(timeout=30)
        yield client
    finally:
        proc.stop(p)


def pytest_configure(config: pytest.Config) -> None:
    """Go builds in tests get their modules from the sample world's file-based proxy (no network).

    The user's GOPROXY is what a real build uses; tests that exercise the failure paths set
    their own GOPROXY and an empty GOMODCACHE.
    """
    import tempfile

    from ollama_turbo.sample import goproxy

    root = Path(tempfile.mkdtemp(prefix="turbo-goproxy-"))
    os.environ["GOPROXY"] = goproxy.url(goproxy.write_proxy(root))
    os.environ.pop("GOFLAGS", None)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> sample.World:
    return sample.generate(tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="session")
def era_c_dist(world: sample.World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Era C built the way Ollama builds it: llama.cpp fetched by tag, compat patch applied."""
    out = tmp_path_factory.mktemp("era-c")
    dist = out / "dist"
    build_era_c.build_llama_server(world.ollama_c, out / "build", dist, preset="cpu",
                                   source_dir=None, log=out / "build.log")
    build_era_c.go_build(world.ollama_c, dist / "bin" / "ollama", version="0.31.0-sample",
                         log=out / "build.log")
    return dist


@pytest.fixture(scope="session")
def era_b_dist(world: sample.World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("era-b")
    build_era_c.go_build(world.ollama_b, out / "bin" / "ollama", version="0.24.0-sample",
                         log=out / "build.log")
    return out


# --- real tier ---------------------------------------------------------------------------


SETUP_TIMES: list[tuple[str, float, bool | None]] = []  # None: not cached, so neither cold nor warm
BENCHMARKS: list[str] = []


def bench(line: str) -> None:
    """Record a benchmark line; pytest prints them all at the end of the run."""
    BENCHMARKS.append(line)


def _timed(name: str, marker: Callable[[], bool], make: Callable[[], Path]) -> Path:
    cold = not marker()
    t0 = time.perf_counter()
    try:
        out = make()
    except real_assets.Unavailable as exc:
        pytest.skip(f"real tier skipped: {exc}")
    SETUP_TIMES.append((name, time.perf_counter() - t0, cold))
    return out


@pytest.fixture(scope="session")
def real_llama_repo() -> Path:
    """Real llama.cpp (from the llama-cpp-python sdists) as a git repo: tags v0.3.16, v0.3.36."""
    src = real_assets.CACHE / "src"
    return _timed("llama.cpp sources (2 sdists -> git repo)",
                  lambda: src.exists() and any(src.glob("llama.cpp-*/.git/turbo-ready")),
                  real_assets.llama_repo)


@pytest.fixture(scope="session")
def real_llama_server(real_llama_repo: Path) -> Path:
    build = real_assets.CACHE / "build"
    return _timed("llama-server build (cmake, cpu)",
                  lambda: build.exists() and any(build.glob("llama-server-cpu-*/bin/llama-server")),
                  lambda: real_assets.llama_server(real_llama_repo))


@pytest.fixture(scope="session")
def real_model() -> Path:
    return _timed("SmolLM2-135M-Instruct.Q4_1.gguf (wheel)",
                  lambda: any((real_assets.CACHE / "models").glob("*.gguf")), real_assets.model)


@pytest.fixture(scope="session")
def real_servers(real_llama_server: Path, real_model: Path, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[Callable[[str], real_assets.RealServer]]:
    """``get(cache_type)``: a running real llama-server with that K and V cache type."""
    running: dict[str, real_assets.RealServer] = {}
    logs = tmp_path_factory.mktemp("real-servers")

    def get(cache_type: str) -> real_assets.RealServer:
        if cache_type not in running:
            t0 = time.perf_counter()
            running[cache_type] = real_assets.start_server(
                real_llama_server, real_model, cache_type, logs / f"{cache_type.replace('/', '-')}.log")
            SETUP_TIMES.append((f"llama-server start ({cache_type})", time.perf_counter() - t0, None))
        return running[cache_type]

    yield get
    for server in running.values():
        proc.stop(server.process)  # type: ignore[arg-type]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SETUP_TIMES:
        terminalreporter.section("real tier set-up times (benchmark)")
        for name, seconds, cold in SETUP_TIMES:
            state = "" if cold is None else ("cold" if cold else "warm")
            terminalreporter.write_line(f"{name:48s} {seconds:8.2f} s  {state}")
    if BENCHMARKS:
        terminalreporter.section("benchmarks")
        for line in BENCHMARKS:
            terminalreporter.write_line(line)
