"""invoke build-ollama on the sample world: both eras, backend cpu, and every way it can fail."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.build import build_ollama as build
from ollama_turbo.core import manifest, proc
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import SourceError, ToolMissing
from ollama_turbo.core.rules import RuleError
from ollama_turbo.kv import geometry
from ollama_turbo.sample.gitrepo import Repo

from .conftest import bench, invoke, serving

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sample.World]:
    root = tmp_path_factory.mktemp("bworlds")
    return {n: sample.generate(root / n, sample.scenario(n))
            for n in ("clean", "fork-behind", "patch-conflict")}


def settings_for(ws: Path) -> config.Settings:
    return config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})


def do_build(world: sample.World, era: str, ws: Path, **kw: object) -> build.Result:
    tree = world.ollama_c if era == "C" else world.ollama_b
    opts = build.Options(ollama=str(kw.pop("ollama", tree)), fork=str(world.fork), backend="cpu", **kw)  # type: ignore[arg-type]
    return build.run(settings_for(ws), opts, say=lambda s: None)


def git_state(repo: Path) -> tuple[str, str]:
    return (proc.run(["git", "rev-parse", "HEAD"], cwd=repo).stdout,
            proc.run(["git", "status", "--porcelain"], cwd=repo).stdout)


@pytest.fixture(scope="module")
def era_c_build(worlds: dict[str, sample.World], tmp_path_factory: pytest.TempPathFactory) -> build.Result:
    ws = tmp_path_factory.mktemp("ws-c")
    t0 = time.perf_counter()
    r = do_build(worlds["clean"], "C", ws)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = do_build(worlds["clean"], "C", ws)
    noop = time.perf_counter() - t0
    assert again.status == "up-to-date"
    bench(f"build-ollama, sample world era C: full build {full:.2f} s, no-op rebuild {noop:.2f} s "
          "(target: no-op under 2 s)")
    return r


def test_era_c_build_runs_turbo4_with_the_stamped_version(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    r = era_c_build
    assert r.status == "built" and r.plan.version.startswith("0.31.0-turbo+")
    dist = r.dist
    assert (dist / "bin/ollama").is_file() and (dist / "lib/ollama/llama-server").is_file()
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_KV_CACHE_TYPE": "turbo4", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(dist / "bin/ollama", log, env) as client:
        assert client.version() == r.plan.version
        client.create("s", gguf=worlds["clean"].model, parameters={"num_ctx": 2048})
        assert client.generate("s", "hello", num_predict=3)["eval_count"] == 3
        ps = client.get("/api/ps")["models"][0]
    text = log.read_text()
    assert "--cache-type-k turbo4 --cache-type-v turbo4" in text and "K (turbo4):" in text
    # Ollama's memory estimate now uses turbo4's 68 bytes per 128 values, not f16's 2 bytes
    geo = geometry.geometry_from_gguf(worlds["clean"].model)
    kv = geo.n_layer * 2048 * geo.n_head_kv[0] * geo.head_dim_k * 2 * 68 / 128
    assert ps["size_vram"] == worlds["clean"].model.stat().st_size + kv


def test_manifest_records_provenance_and_checksums(era_c_build: build.Result) -> None:
    m = manifest.read(era_c_build.dist)
    assert m is not None
    assert m["era"] == "C" and m["backend"] == "cpu" and m["pinned"] == {"tag": "b110"}
    assert m["fork"]["sha"] == era_c_build.plan.fork.sha and m["ollama"]["version"] == "0.31.0"
    assert m["cache_types"]["turbo4"] == {"ggml_type": "GGML_TYPE_TURBO4_0", "block": 128, "bytes": 68}
    assert {r["rule"] for r in m["rules"]} >= {"kv-bytes-turbo2", "kv-bytes-turbo3", "kv-bytes-turbo4"}
    assert m["patches"] == [{"patch": "llama/compat/0001-server-report-ollama-compat.patch", "status": "applied"}]
    assert set(m["toolchain"]) >= {"go", "cmake", "cc", "git"}
    assert "-X=github.com/ollama/ollama/version.Version=" in m["build_flags"]["ldflags"]
    assert set(m["files"]) == {"bin/ollama", "lib/ollama/llama-server"}
    for rel, digest in m["files"].items():
        assert manifest.sha256(era_c_build.dist / rel) == digest
    assert manifest.verify(era_c_build.dist, m) == []


def test_era_b_build_accepts_turbo4(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    r = do_build(worlds["clean"], "B", tmp_path / "ws")
    assert r.status == "built" and r.plan.version.startswith("0.24.0-turbo+")
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_KV_CACHE_TYPE": "turbo4", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(r.dist / "bin/ollama", log, env) as client:
        assert client.version() == r.plan.version
        client.create("s", gguf=worlds["clean"].model)
        assert client.generate("s", "hello", num_predict=2)["eval_count"] == 2
    text = log.read_text()
    assert "unsupported OLLAMA_KV_CACHE_TYPE" not in text and "K (turbo4):" in text
    assert f"llama.cpp={r.plan.fork.sha}" in text  # build-info regenerated from the fork
    m = manifest.read(r.dist)
    assert m and {x["rule"] for x in m["rules"]} >= {"supports-kv-cache-type", "llama-kv-type-turbo4",
                                                     "engine-kv-type-turbo4", "ml-dtypes"}
    assert [p["status"] for p in m["patches"]] == ["applied", "applied"]


def test_dry_run_changes_nothing(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    r = invoke("build-ollama", "--ollama", str(worlds["clean"].ollama_c), "--fork", str(worlds["clean"].fork),
               "--backend", "cpu", "--dry-run", "--json", str(tmp_path / "plan.json"),
               env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    assert "kv-bytes-turbo4" in r.stdout and "llama/compat/0001" in r.stdout and "dry run" in r.stdout
    assert not ws.exists()
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["status"] == "dry-run" and plan["era"] == "C"
    assert r.stdout.strip().splitlines()[-1] == plan["dist"]


def test_conflicting_compat_patch_leaves_checkouts_untouched(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["fork-behind"]
    before = git_state(w.ollama_c), git_state(w.fork)
    r = invoke("build-ollama", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 1
    assert "compat patch llama/compat/0001-server-report-ollama-compat.patch does not apply" in r.stderr
    assert "tools/server/server.cpp" in r.stderr and "next step:" in r.stderr
    assert (git_state(w.ollama_c), git_state(w.fork)) == before
    assert not list((tmp_path / "ws").glob("dist/*/manifest.json"))


def test_conflicting_era_b_patch_leaves_a_resolvable_worktree(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["patch-conflict"]
    before = git_state(w.ollama_b), git_state(w.fork)
    r = invoke("build-ollama", "--ollama", str(w.ollama_b), "--fork", str(w.fork), "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 1
    assert "patch llama/patches/0003-ggml-note-the-type-table-Ollama-mirrors.patch does not apply" in r.stderr
    assert "conflicts in ggml/include/ggml.h" in r.stderr and "am --continue" in r.stderr
    vendor = next((tmp_path / "ws/build").glob("*/ollama/llama/vendor"))
    assert "ggml/include/ggml.h" in proc.run(["git", "diff", "--name-only", "--diff-filter=U"], cwd=vendor).stdout
    assert (git_state(w.ollama_b), git_state(w.fork)) == before


def _copy_repo(src: Path, dest: Path) -> Repo:
    proc.run(["git", "clone", "-q", str(src), str(dest)])
    return Repo(dest)


def test_moved_anchor_is_a_clear_error(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    repo = _copy_repo(worlds["clean"].ollama_c, tmp_path / "ollama")
    go = repo.path / "fs/ggml/ggml.go"
    go.write_text(go.read_text().replace("func kvCacheBytesPerElement(", "func bytesPerKVElement("))
    repo.commit("rename")
    with pytest.raises(RuleError, match=r"fs/ggml/ggml.go: rule kv-bytes-\w+: function kvCacheBytesPerElement "
                                        "not found"):
        do_build(worlds["clean"], "C", tmp_path / "ws", ollama=repo.path)


def test_fork_without_an_always_passed_flag_drops_it_loudly(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["fork-behind"]
    repo = _copy_repo(w.ollama_c, tmp_path / "ollama")  # without the compat patch the fork lacks
    repo.remove("llama/compat/0001-server-report-ollama-compat.patch")
    repo.commit("no compat patch")
    r = invoke("build-ollama", "--ollama", str(repo.path), "--fork", str(w.fork), "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 0, r.stderr
    assert "WARNING: dropping --kv-unified" in r.stdout
    dist = Path(r.stdout.strip().splitlines()[-1])
    assert (manifest.read(dist) or {})["dropped_flags"] == ["--kv-unified"]
    log = tmp_path / "serve.log"
    with serving(dist / "bin/ollama", log, {"OLLAMA_MODELS": str(tmp_path / "m")}) as client:
        client.create("s", gguf=w.model)
        assert client.generate("s", "hi", num_predict=1)["eval_count"] == 1
    assert "--kv-unified" not in log.read_text()


def test_dirty_local_checkout_is_refused(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    repo = _copy_repo(worlds["clean"].ollama_c, tmp_path / "ollama")
    (repo.path / "version/version.go").write_text("package version\n\nvar Version = \"dirty\"\n")
    with pytest.raises(SourceError, match="uncommitted changes .*version/version.go"):
        do_build(worlds["clean"], "C", tmp_path / "ws", ollama=repo.path, dry_run=True)
    assert do_build(worlds["clean"], "C", tmp_path / "ws", ollama=repo.path, dry_run=True,
                    allow_dirty=True).status == "dry-run"


def test_missing_go_is_a_clear_error(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    path = "/usr/bin:/bin"
    if shutil.which("go", path=path):
        pytest.skip("a system Go is installed in /usr/bin")
    old = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        with pytest.raises(ToolMissing, match="required tool not found on PATH: go") as info:
            do_build(worlds["clean"], "C", tmp_path / "ws")
    finally:
        os.environ["PATH"] = old
    assert "brew install go" in str(info.value)


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="Metal builds are allowed on macOS")
def test_metal_on_linux_is_a_usage_error(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    r = invoke("build-ollama", "--ollama", str(worlds["clean"].ollama_c), "--fork", str(worlds["clean"].fork),
               "--backend", "metal", env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 2 and "macOS only" in r.stderr
