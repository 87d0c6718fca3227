"""The sample world, exercised with the real toolchains: git, cmake, a C/C++ compiler, Go, make, rsync."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import era_c as build_era_c
from ollama_turbo.core import proc, toolchain
from ollama_turbo.core.errors import CommandError, UsageError

from .conftest import invoke, serving

pytestmark = pytest.mark.sample


def git(repo: Path, *args: str) -> str:
    return proc.run(["git", *args], cwd=repo).stdout


def enum_value(header: str, name: str) -> int:
    m = re.search(rf"\b{name}\s*=\s*(\d+)", header)
    assert m, name
    return int(m.group(1))


def test_four_repositories_with_tags_and_branches(world: sample.World) -> None:
    assert git(world.upstream, "tag").split() == ["b100", "b110", "b120"]
    assert "feature/turboquant-kv-cache" in git(world.fork, "branch")
    assert git(world.ollama_c, "tag").split() == ["v0.30.0", "v0.31.0"]
    assert git(world.ollama_b, "tag").split() == ["v0.24.0"]
    assert git(world.ollama_c, "show", "v0.30.0:LLAMA_CPP_VERSION").strip() == "b100"
    assert (world.ollama_c / "LLAMA_CPP_VERSION").read_text().strip() == "b110"
    for path in ("llama/server/CMakeLists.txt", "llama/compat/apply-patch.cmake", "llm/llama_server.go",
                 "fs/ggml/ggml.go", "version/version.go", "go.mod"):
        assert (world.ollama_c / path).is_file(), path
    for path in ("Makefile.sync", "llama/llama.cpp/include/llama.h", "llama/llama.cpp/.rsync-filter",
                 "ml/backend/ggml/ggml/include/ggml.h", "ml/backend/ggml/ggml/.rsync-filter",
                 "llama/llama.go", "fs/ggml/ggml.go", "runner/ollamarunner/cache.go"):
        assert (world.ollama_b / path).is_file(), path
    assert len(list((world.ollama_b / "llama/patches").glob("*.patch"))) == 2
    assert world.model.read_bytes()[:4] == b"GGUF"


def test_fork_type_collides_with_the_type_upstream_added_later(world: sample.World) -> None:
    fork_h = (world.fork / "ggml/include/ggml.h").read_text()
    b120_h = git(world.upstream, "show", "b120:ggml/include/ggml.h")
    assert enum_value(fork_h, "GGML_TYPE_TURBO2_0") == enum_value(b120_h, "GGML_TYPE_Q2_0") == 42
    assert enum_value(fork_h, "GGML_TYPE_COUNT") == 45
    assert enum_value(b120_h, "GGML_TYPE_COUNT") == 43


def test_fork_inserts_an_op_mid_enum_and_adds_a_function(world: sample.World) -> None:
    fork_h = (world.fork / "ggml/include/ggml.h").read_text()
    ops = re.findall(r"GGML_OP_(\w+),", fork_h)
    assert ops.index("TURBO_WHT") == ops.index("UNARY") - 1
    assert "ggml_turbo_wht(" in fork_h
    arg = (world.fork / "common/arg.cpp").read_text()
    assert "GGML_TYPE_TURBO4_0," in arg and "GGML_TYPE_TURBO4_0" not in git(
        world.upstream, "show", "b110:common/arg.cpp")


def test_b110_adds_the_flag_ollama_passes(world: sample.World) -> None:
    assert '"--kv-unified"' not in git(world.upstream, "show", "b100:common/arg.cpp")
    assert '"--kv-unified"' in git(world.upstream, "show", "b110:common/arg.cpp")
    assert '"--kv-unified"' in (world.ollama_c / "llm/llama_server.go").read_text()
    assert '"--kv-unified"' not in git(world.ollama_c, "show", "v0.30.0:llm/llama_server.go")


def test_scenarios(tmp_path: Path) -> None:
    behind = sample.generate(tmp_path / "behind", sample.scenario("fork-behind"))
    assert git(behind.fork, "merge-base", "HEAD", "b100").strip() == behind.tags["b100"]
    assert '"--kv-unified"' not in (behind.fork / "common/arg.cpp").read_text()
    removed = sample.generate(tmp_path / "removed", sample.scenario("removed-function"))
    assert "llama_n_ctx(" not in (removed.fork / "include/llama.h").read_text()
    coll = sample.generate(tmp_path / "coll", sample.scenario("collision"))
    assert (coll.ollama_c / "LLAMA_CPP_VERSION").read_text().strip() == "b120"
    conflict = sample.generate(tmp_path / "conflict", sample.scenario("patch-conflict"))
    assert len(list((conflict.ollama_b / "llama/patches").glob("*.patch"))) == 3
    with pytest.raises(UsageError, match="unknown sample scenario"):
        sample.scenario("nope")
    with pytest.raises(UsageError, match="not empty"):
        sample.generate(tmp_path / "behind")


def test_era_c_compat_patch_applied_and_llama_server_speaks_llama_cpp(era_c_dist: Path) -> None:
    server = era_c_dist / "lib/ollama/llama-server"
    r = proc.run([server, "--bogus"], check=False)
    assert r.returncode == 1 and "error: invalid argument: --bogus" in r.stderr
    r = proc.run([server, "--cache-type-k", "turbo4"], check=False)
    assert r.returncode == 1
    assert 'error while handling argument "--cache-type-k": Unsupported cache type: turbo4' in r.stderr
    r = proc.run([server, "--help"])
    assert "allowed values: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1" in r.stderr
    assert "Available devices:" in proc.run([server, "--list-devices"]).stdout


def test_era_c_binary_stamps_version_and_passes_the_cache_type(
        era_c_dist: Path, world: sample.World, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "models"), "OLLAMA_KV_CACHE_TYPE": "q8_0",
           "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(era_c_dist / "bin/ollama", log, env) as client:
        assert client.version() == "0.31.0-sample"
        client.create("sample", gguf=world.model, parameters={"num_ctx": 2048})
        out = client.generate("sample", "hello there", num_predict=5)
        assert out["done"] and out["eval_count"] == 5 and out["eval_duration"] > 0
        chunks = list(client.generate_stream("sample", "hello there", num_predict=3))
        assert [c["done"] for c in chunks] == [False, False, False, True]
        ps = client.get("/api/ps")["models"][0]
        assert ps["context_length"] == 2048 and ps["size_vram"] > 0
        assert client.post("/api/show", {"model": "sample"})["details"]["format"] == "gguf"
    text = log.read_text(errors="replace")
    assert "--cache-type-k q8_0 --cache-type-v q8_0" in text
    assert "K (q8_0):" in text and "V (q8_0):" in text
    assert '\\"ollama\\":true' in text  # the compat patch is in the server Ollama runs


def test_era_c_configure_is_idempotent_and_a_conflicting_patch_is_fatal(
        world: sample.World, tmp_path: Path) -> None:
    build = tmp_path / "build"
    fork = tmp_path / "fork"
    proc.run(["git", "clone", "-q", world.fork, fork])
    configure = ["cmake", "-S", world.ollama_c / "llama/server", "-B", build, "--preset", "cpu",
                 f"-DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP={fork}"]
    assert "applied compat patch: 0001" in proc.run(configure).stdout
    assert "compat patch already applied: 0001" in proc.run(configure).stdout
    behind = sample.generate(tmp_path / "behind", sample.scenario("fork-behind"))
    with pytest.raises(CommandError) as info:
        proc.run(["cmake", "-S", world.ollama_c / "llama/server", "-B", tmp_path / "b2", "--preset",
                  "cpu", f"-DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP={behind.fork}"])
    assert "compat patch 0001-server-report-ollama-compat.patch does not apply" in info.value.stderr_tail


def test_era_b_builds_and_drops_unknown_cache_types(
        era_b_dist: Path, world: sample.World, tmp_path: Path) -> None:
    for cache_type, expect in (("q8_0", "K (q8_0):"), ("turbo4", "K (f16):")):
        log = tmp_path / f"{cache_type}.log"
        env = {"OLLAMA_MODELS": str(tmp_path / "models"), "OLLAMA_KV_CACHE_TYPE": cache_type,
               "OLLAMA_FLASH_ATTENTION": "1"}
        with serving(era_b_dist / "bin/ollama", log, env) as client:
            assert client.version() == "0.24.0-sample"
            client.create("sample", gguf=world.model)
            assert client.generate("sample", "hi", num_predict=2)["eval_count"] == 2
        text = log.read_text(errors="replace")
        assert expect in text
        assert ("unsupported OLLAMA_KV_CACHE_TYPE" in text) == (cache_type == "turbo4")


def test_era_b_makefile_sync_reproduces_the_vendored_tree(world: sample.World, tmp_path: Path) -> None:
    toolchain.require("rsync")
    tree = tmp_path / "ollama-b"
    shutil.copytree(world.ollama_b, tree)
    r = proc.run(["make", "-f", "Makefile.sync", "clean", "apply-patches", "sync"], cwd=tree,
                 extra_env=toolchain.go_env())
    assert "Applying: llama: report the ollama build in system info" in r.stdout
    assert git(tree, "status", "--porcelain") == ""
    # A vendored file edited by hand is put back by sync.
    (tree / "ml/backend/ggml/ggml/src/ggml.c").write_text("/* edited */\n")
    proc.run(["make", "-f", "Makefile.sync", "sync"], cwd=tree, extra_env=toolchain.go_env())
    assert git(tree, "status", "--porcelain") == ""


def test_invoke_sample_cli(tmp_path: Path) -> None:
    r = invoke("sample", "--dest", str(tmp_path / "w"), "--scenario", "collision")
    assert r.returncode == 0, r.stderr
    for name in ("upstream", "fork", "ollama-c", "ollama-b"):
        assert (tmp_path / "w" / name / ".git").is_dir()
    assert "collision" in r.stdout
    r = invoke("sample", "--dest", str(tmp_path / "w"))
    assert r.returncode == 2 and "is not empty" in r.stderr
    r = invoke("sample", "--dest", str(tmp_path / "x"), "--scenario", "nope")
    assert r.returncode == 2 and "unknown sample scenario 'nope'" in r.stderr


def test_go_build_errors_when_go_mod_wants_a_newer_go(world: sample.World, tmp_path: Path) -> None:
    tree = tmp_path / "c"
    shutil.copytree(world.ollama_c, tree)
    (tree / "go.mod").write_text("module github.com/ollama/ollama\n\ngo 9.1.0\n")
    with pytest.raises(Exception, match="older than the 9.1.0 that go.mod requires"):
        build_era_c.go_build(tree, tmp_path / "o", version="x", log=tmp_path / "l")
