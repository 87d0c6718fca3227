"""build-ollama with real llama.cpp (the 0.3.36 sources from PyPI) as the fork, era C.

The sample Ollama's argv builder and HTTP server then drive a real llama-server with the
real SmolLM2 model. The build lives in the test cache, so the llama-server is compiled once
per machine (cached by source hash) and later runs are no-ops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest, proc
from ollama_turbo.core import settings as config
from ollama_turbo.sample.gitrepo import Repo

from .. import real_assets
from ..conftest import bench, serving

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_build(real_llama_repo: Path) -> build.Result:
    root = real_assets.CACHE / "build-ollama"
    world_dir = root / "world"
    shutil.rmtree(world_dir, ignore_errors=True)
    world = sample.generate(world_dir)
    ollama = Repo(world.ollama_c)  # real llama.cpp does not take the sample's compat patch
    ollama.remove("llama/compat/0001-server-report-ollama-compat.patch")
    ollama.commit("build without compat patches")
    s = config.parse({"workspace": str(root / "ws"), "build": {"backend": "cpu"}})
    opts = build.Options(ollama=str(world.ollama_c), fork=str(real_llama_repo), fork_ref="v0.3.36")
    r = build.run(s, opts, say=print)
    bench(f"build-ollama with real llama.cpp 0.3.36 as the fork: {r.status} in {r.seconds:.1f} s")
    return r


def test_real_llama_server_built_through_ollamas_cmake(real_build: build.Result) -> None:
    m = manifest.load(real_build.dist)
    assert m.era == "C" and m.verify() == []
    server = real_build.dist / "lib/ollama/llama-server"
    help_text = proc.run([server, "--help"]).stdout
    assert "--cache-type-k" in help_text and "--kv-unified" in help_text
    # real llama.cpp has no turbo types: the rules teach Ollama only what the fork has
    assert "turbo4" not in m.cache_types and m.cache_types["q4_1"] == (32, 20)


def test_sample_ollama_drives_the_real_server(real_build: build.Result, real_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "models"), "OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(real_build.dist / "bin/ollama", log, env) as client:
        assert client.version() == real_build.plan.version
        client.create("smollm2", gguf=real_model, parameters={"num_ctx": 2048})
        out = client.generate("smollm2", "The capital of France is", num_predict=8)
        assert out["done"] and out["eval_count"] > 0 and out["eval_duration"] > 0
        assert client.post("/api/show", {"model": "smollm2"})["details"]["family"] == "llama"
    assert "--cache-type-k q8_0 --cache-type-v q8_0" in log.read_text(errors="replace")
