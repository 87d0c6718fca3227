"""Sanity of the real tier: a real llama-server (llama.cpp from PyPI) with a real model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from ollama_turbo.core import proc

from ..real_assets import RealServer

pytestmark = pytest.mark.real


def test_sources_are_a_git_repo_with_both_versions(real_llama_repo: Path) -> None:
    tags = proc.run(["git", "tag"], cwd=real_llama_repo).stdout.split()
    assert tags == ["v0.3.16", "v0.3.36"]
    old = proc.run(["git", "show", "v0.3.16:include/llama.h"], cwd=real_llama_repo).stdout
    new = (real_llama_repo / "include/llama.h").read_text()
    assert "llama_model_load_from_file" in old and old != new


@pytest.mark.parametrize("cache_type", ["f16", "q8_0", "q4_0"])
def test_real_server_answers_and_logs_its_cache_type(
        real_servers: Callable[[str], RealServer], cache_type: str) -> None:
    server = real_servers(cache_type)
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    r = requests.post(server.url + "/completion", json={
        "prompt": "The capital of France is", "n_predict": 8, "temperature": 0, "seed": 1,
    }, timeout=120)
    assert r.status_code == 200
    assert "Paris" in r.json()["content"]
    log = server.log_text()
    assert f"K ({cache_type}):" in log and f"V ({cache_type}):" in log


def test_real_server_rejects_a_cache_type_it_does_not_know(real_llama_server: Path) -> None:
    r = proc.run([real_llama_server, "--cache-type-k", "turbo4", "-m", "none.gguf"], check=False)
    assert r.returncode != 0
    assert "Unsupported cache type: turbo4" in r.stderr + r.stdout
