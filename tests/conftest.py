from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_turbo import build_era_c, proc, sample
from ollama_turbo.ollama_api import Client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
