"""invoke build-ollama on the sample world: both eras, backend cpu, and every way it can fail."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest, proc
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import SourceError, ToolMissing
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.rules import RuleError
from ollama_turbo.kv import geometry
from ollama_turbo.sample.gitrepo import Repo

from .conftest import bench, free_port, invoke, serving

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sample.World]:
    root = tmp_path_factory.mktemp("bworlds")
    return {n: sample.generate(root / n, sample.scenario(n))
            for n in ("clean", "fork-behind", "patch-conflict", "fork-2026-06")}


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
    text = log.read_text(errors="replace")
    assert "--cache-type-k turbo4 --cache-type-v turbo4" in text and "K (turbo4):" in text
    # Ollama's memory estimate now uses turbo4's 68 bytes per 128 values, not f16's 2 bytes
    geo = geometry.geometry_from_gguf(worlds["clean"].model)
    kv = geo.n_layer * 2048 * geo.n_head_kv[0] * geo.head_dim_k * 2 * 68 / 128
    assert ps["size_vram"] == worlds["clean"].model.stat().st_size + kv


def test_manifest_records_provenance_and_checksums(era_c_build: build.Result) -> None:
    m = manifest.load(era_c_build.dist).data
    assert m["era"] == "C" and m["backend"] == "cpu" and m["pinned"]["tag"] == "b110"
    assert m["pinned"]["merge_base"].endswith(": not needed (no 3-way merge)")
    assert m["fork"]["sha"] == era_c_build.plan.fork.sha and m["ollama"]["version"] == "0.31.0"
    assert m["cache_types"]["turbo4"] == {"ggml_type": "GGML_TYPE_TURBO4_0", "block": 128, "bytes": 68}
    assert {r["rule"] for r in m["rules"]} >= {"kv-bytes-turbo2", "kv-bytes-turbo3", "kv-bytes-turbo4"}
    patch = m["patches"][0]
    assert len(m["patches"]) == 1 and patch["patch"] == "llama/compat/0001-server-report-ollama-compat.patch"
    assert patch["status"] == "applied" and [(h["method"], h["file"]) for h in patch["hunks"]] == \
        [("plain", "tools/server/server.cpp")]
    assert set(m["toolchain"]) >= {"go", "cmake", "cc", "git"}
    assert "-X=github.com/ollama/ollama/version.Version=" in m["build_flags"]["ldflags"]
    assert set(m["files"]) == {"bin/ollama", "lib/ollama/llama-server", "lib/ollama/llama-perplexity"}
    # the sample llama.cpp has no llama-bench target: recorded as not built, with the log to read, and the
    # build goes on (its llama-server and llama-perplexity are what Ollama and quality need)
    tools = m["build_flags"]["tools"]
    assert tools["llama-perplexity"] == "built" and set(tools) == {"llama-perplexity", "llama-bench"}
    assert re.fullmatch(r"not built \(exit \d+; see .*/logs/build-.*\.log\)", tools["llama-bench"])
    assert m["build_flags"]["tool_paths"] == {"llama-perplexity": "lib/ollama/llama-perplexity"}
    for rel, digest in m["files"].items():
        assert manifest.sha256(era_c_build.dist / rel) == digest
    assert manifest.load(era_c_build.dist).verify() == []


def test_era_b_build_accepts_turbo4(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    r = do_build(worlds["clean"], "B", tmp_path / "ws")
    assert r.status == "built" and r.plan.version.startswith("0.24.0-turbo+")
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_KV_CACHE_TYPE": "turbo4", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(r.dist / "bin/ollama", log, env) as client:
        assert client.version() == r.plan.version
        client.create("s", gguf=worlds["clean"].model)
        assert client.generate("s", "hello", num_predict=2)["eval_count"] == 2
    text = log.read_text(errors="replace")
    assert "unsupported OLLAMA_KV_CACHE_TYPE" not in text and "K (turbo4):" in text
    assert f"llama.cpp={r.plan.fork.sha}" in text  # build-info regenerated from the fork
    m = manifest.load(r.dist).data
    assert {x["rule"] for x in m["rules"]} >= {"supports-kv-cache-type", "llama-kv-type-turbo4",
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
               "--upstream", str(w.upstream), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 1
    assert "llama/compat/0001-server-report-ollama-compat.patch: hunk 1 (tools/server/server.cpp" in r.stderr
    assert "cannot be placed in the fork: 3-way: a 3-way merge with llama.cpp b110" in r.stderr
    assert "next step:" in r.stderr
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
    assert manifest.load(dist).data["dropped_flags"] == ["--kv-unified"]
    log = tmp_path / "serve.log"
    with serving(dist / "bin/ollama", log, {"OLLAMA_MODELS": str(tmp_path / "m")}) as client:
        client.create("s", gguf=w.model)
        assert client.generate("s", "hi", num_predict=1)["eval_count"] == 1
    assert "--kv-unified" not in log.read_text(errors="replace")


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


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="Metal builds are allowed on macOS")
def test_metal_dry_run_on_linux_prints_the_plan_and_says_the_build_needs_macos(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    out = tmp_path / "plan.json"
    r = invoke("build-ollama", "--ollama", str(worlds["clean"].ollama_c), "--fork", str(worlds["clean"].fork),
               "--backend", "metal", "--dry-run", "--json", str(out), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    assert "backend  metal (cmake preset darwin)" in r.stdout
    assert "NOTE: the build itself needs macOS (this is Linux): run it on the Mac" in r.stdout
    assert "dry run: nothing was built or changed" in r.stdout
    plan = json.loads(out.read_text())
    assert plan["status"] == "dry-run" and plan["backend"] == "metal" and plan["notes"]
    assert not (ws / "dist").exists() and not (ws / "build").exists()


def test_a_builds_identity_names_its_backend_and_both_commits(worlds: dict[str, sample.World],
                                                              tmp_path: Path) -> None:
    """A CPU and a Metal build of the same sources once shared one version, one dist folder and one
    release name on a host; the version now carries the fork commit, the backend and an identity digest."""
    w = worlds["clean"]
    plans = {}
    for backend in ("cpu", "metal"):
        out = tmp_path / f"{backend}.json"
        r = invoke("build-ollama", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--backend", backend,
                   "--dry-run", "--json", str(out), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
        assert r.returncode == 0, r.stderr
        plans[backend] = json.loads(out.read_text())
    cpu, metal = plans["cpu"], plans["metal"]
    assert cpu["version"] != metal["version"] and cpu["dist"] != metal["dist"]
    assert ".cpu." in cpu["version"] and ".metal." in metal["version"]
    assert re.fullmatch(r"0\.31\.0-turbo\+[0-9a-f]{9}\.cpu\.[0-9a-f]{6}", cpu["version"]), cpu["version"]
    dry = invoke("build-ollama", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--backend", "cpu", "--dry-run",
                 env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert f"version  {cpu['version']} (identity " in dry.stdout and "rules)" in dry.stdout


# --- Go modules: through the user's proxy, or a clear early stop ---------------------------


def _module_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy: str) -> Path:
    cache = tmp_path / "gomodcache"
    monkeypatch.setenv("GOPROXY", proxy)
    monkeypatch.setenv("GOMODCACHE", str(cache))
    monkeypatch.setenv("GOFLAGS", "-modcacherw")  # lets pytest remove the cache afterwards
    return cache


def test_build_downloads_go_modules_through_the_users_proxy(
        worlds: dict[str, sample.World], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = worlds["clean"]
    cache = _module_env(monkeypatch, tmp_path, world.goproxy_url)
    r = do_build(world, "B", tmp_path / "ws")
    assert r.status == "built"
    downloaded = cache / "cache/download/example.com/turbo-sample/units/@v/v1.0.0.zip"
    assert downloaded.is_file(), "the module did not come through GOPROXY into the (empty) module cache"


@pytest.mark.parametrize("era", ["C", "B"])
def test_no_proxy_and_an_empty_cache_stops_before_cmake_naming_the_modules(
        worlds: dict[str, sample.World], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, era: str) -> None:
    world = worlds["clean"]
    _module_env(monkeypatch, tmp_path, "off")
    ws = tmp_path / "ws"
    t0 = time.perf_counter()
    r = invoke("build-ollama", "--ollama", str(world.ollama_c if era == "C" else world.ollama_b),
               "--fork", str(world.fork), "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(ws), "GOPROXY": "off", "GOMODCACHE": str(tmp_path / "gomodcache"),
                    "GOFLAGS": "-modcacherw"})
    seconds = time.perf_counter() - t0
    bench(f"build-ollama (era {era}) offline with an empty module cache: module error after {seconds:.1f} s "
          "(target < 30 s, before any CMake work)")
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr
    assert "example.com/turbo-sample/units@v1.0.0" in err and "1 of 1 Go modules" in err, err
    assert "GOPROXY=off" in err and "GOFLAGS=-mod=vendor" in err and "module cache" in err, err
    assert "Traceback" not in err
    assert "build llama-server" not in r.stdout and "cmake" not in r.stdout.lower(), r.stdout
    assert not (ws / "dist").exists() or not any((ws / "dist").iterdir())
    assert not list((ws / "cache").glob("llama-server/*")) if (ws / "cache").exists() else True


def test_a_proxy_answering_404_is_named_with_the_module(
        worlds: dict[str, sample.World], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools
    import http.server
    import threading

    empty = tmp_path / "empty-proxy"
    empty.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(empty))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _module_env(monkeypatch, tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("GOINSECURE", "*")
        with pytest.raises(build.go_modules.GoModulesError) as exc:
            do_build(worlds["clean"], "C", tmp_path / "ws")
    finally:
        server.shutdown()
    msg = str(exc.value)
    assert "example.com/turbo-sample/units@v1.0.0" in msg and "404" in msg, msg
    assert "GOPROXY=http://127.0.0.1:" in msg


# --- what the fork does to a cache: smoke and deploy ask fork.behaviour, not the settings --------


def _local_host(tmp_path: Path, extra_env: dict[str, str] | None = None, name: str = "here",
                listen_host: str = "127.0.0.1") -> config.Settings:
    return config.parse({"workspace": str(tmp_path / "ws"), "kv": {"type_k": "turbo4", "type_v": "turbo4",
                                                                  "env": extra_env or {}},
                         "hosts": {name: {"ssh": "local", "os": "linux", "service": "none",
                                          "listen": f"{listen_host}:{free_port()}", "memory_gib": 8,
                                          "prefix": str(tmp_path / "host"), "models_dir": str(tmp_path / "m"),
                                          "health_timeout": 30}}})


@contextlib.contextmanager
def _deployed_here(s: config.Settings, name: str, dist: Path, model: Path, tmp_path: Path) -> Iterator[Any]:
    """Deploy ``dist`` with one model to the local host ``name``; its server is stopped afterwards."""
    from ollama_turbo.deploy import releases
    from ollama_turbo.deploy.managers import manager_for
    from ollama_turbo.deploy.services import Layout
    from ollama_turbo.deploy.transport import LocalTransport

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / f"{model.stem}.yaml").write_text(f"from: {model}\nnum_ctx: 2048\nhosts: [{name}]\n")
    host = s.host(name)
    try:
        yield releases.deploy(s, host, dist, specs_dir=specs, say=lambda line: None, accept_unmeasured=True)
    finally:
        manager_for(LocalTransport(), host, Layout("", str(tmp_path / "host"), "")).stop()


def _deploy_gqa6(era_c_build: build.Result, world: sample.World, tmp_path: Path,
                 extra_env: dict[str, str] | None = None) -> tuple[Any, str]:
    with _deployed_here(_local_host(tmp_path, extra_env), "here", era_c_build.dist, world.model_gqa6,
                        tmp_path) as d:
        log = (tmp_path / "host" / "logs" / "ollama.log").read_bytes()
    return d, log.decode("utf-8", errors="replace")


def test_deploy_of_symmetric_turbo_to_a_gqa6_model_passes_with_the_forks_q8_0_k(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    d, log = _deploy_gqa6(era_c_build, worlds["clean"], tmp_path)
    assert d.status == "deployed", d.error
    cache = next(c for c in d.smoke["checks"] if c["name"] == "cache type")
    assert cache["ok"] is True
    assert "argv --cache-type-k turbo4 --cache-type-v turbo4" in cache["evidence"]
    assert "llama_kv_cache K (q8_0) V (turbo4)" in cache["evidence"]
    assert "configured turbo4, the fork runs q8_0/turbo4: auto-asymmetric: 6 query heads per KV head" \
        in cache["evidence"], cache["evidence"]
    assert "auto-asymmetric" in log and "\ufffd" in log  # the sample server's log carries a cut UTF-8 character


def test_with_auto_asymmetric_off_the_fork_runs_turbo4_k_and_smoke_expects_it(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    d, _ = _deploy_gqa6(era_c_build, worlds["clean"], tmp_path, {"TURBO_AUTO_ASYMMETRIC": "0"})
    assert d.status == "deployed", d.error
    cache = next(c for c in d.smoke["checks"] if c["name"] == "cache type")
    assert "llama_kv_cache K (turbo4) V (turbo4)" in cache["evidence"] and "the fork runs" not in cache["evidence"]


def test_cache_check_without_the_forks_rule_fails_as_deploy_did(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    from ollama_turbo.fork.behaviour import ForkBehaviour
    from ollama_turbo.prove import smoke

    _, log = _deploy_gqa6(era_c_build, worlds["clean"], tmp_path)
    ok, evidence = smoke.cache_type_from_log(log, "turbo4", "turbo4", "C", ForkBehaviour.none())
    assert not ok and "expected K turbo4 V turbo4" in evidence
    ok, evidence = smoke.cache_type_from_log(log, "turbo4", "turbo4", "C", ForkBehaviour())
    assert ok, evidence


def test_logs_with_invalid_utf8_are_read_with_replacement(tmp_path: Path) -> None:
    from ollama_turbo.prove import server_log

    log = tmp_path / "server.log"
    log.write_bytes(b"print_info: n_layer          = 4\nprint_info: n_head           = 24\n"
                    b"print_info: n_head_kv        = 4\nslot: token text '\xe2\x82' \xff\xfe garbage\n"
                    b"llama_kv_cache: size =   10.00 MiB (  2048 cells,   4 layers,  1/1 seqs), "
                    b"K (q8_0):    6.00 MiB, V (turbo4):    4.00 MiB\n")
    text = server_log.file_reader(log)()
    assert "\ufffd" in text
    assert [(x.type_k, x.type_v, x.cells) for x in server_log.kv_lines(text)] == [("q8_0", "turbo4", 2048)]
    assert server_log.model_shape(text) == (4, 6.0)
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(bytes(range(256)) * 64)
    from ollama_turbo.prove import smoke

    ok, evidence = smoke.cache_type_from_log(server_log.file_reader(garbage)(), "turbo4", "turbo4", None)
    assert not ok and "no llama_kv_cache size line in the log" in evidence
    r = invoke("smoke", "--url", f"http://127.0.0.1:{free_port()}", "--log", str(garbage))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "UnicodeDecodeError" not in r.stdout + r.stderr



# --- the fork's facts are read from the fork or the build, never from constants ------------------


def _served_kv(dist: Path, gguf: Path, cache_type: str, tmp_path: Path) -> str:
    """Serve ``gguf`` from the build with this cache type; return the service log."""
    log = tmp_path / f"serve-{cache_type}.log"
    env = {"OLLAMA_MODELS": str(tmp_path / f"m-{cache_type}"), "OLLAMA_KV_CACHE_TYPE": cache_type,
           "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(dist / "bin/ollama", log, env) as client:
        client.create("m", gguf=gguf, parameters={"num_ctx": 4096})
        client.generate("m", "hello", num_predict=2)
    return log.read_bytes().decode("utf-8", errors="replace")


def test_plans_for_a_build_use_its_blocks_when_the_fork_changed_turbo4(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    from ollama_turbo.fork.cache_types import BUILTIN, BlockTable
    from ollama_turbo.kv import memory
    from ollama_turbo.prove.server_log import kv_lines

    world = worlds["fork-2026-06"]
    r = do_build(world, "C", tmp_path / "ws")
    built = manifest.load(r.dist)
    m = built.data
    assert m["cache_types"]["turbo4"] == {"ggml_type": "GGML_TYPE_TURBO4_0", "block": 128, "bytes": 66}
    assert m["cache_types"]["q8_0"]["bytes"] == 34  # every type the fork accepts is recorded
    logged = kv_lines(_served_kv(r.dist, world.model, "turbo4", tmp_path))[-1]
    geo = geometry.geometry_from_gguf(world.model)
    from_build = memory.estimate(geo, logged.cells, "turbo4", blocks=BlockTable.from_manifest(built))
    from_constants = memory.estimate(geo, logged.cells, "turbo4", blocks=BUILTIN)
    assert abs(from_build.mib - logged.mib) / logged.mib < 0.01, (from_build.mib, logged.mib)
    assert abs(from_constants.mib - logged.mib) / logged.mib > 0.02  # what the planner said before
    # plan says where its numbers come from, from the build or from the fork's sources
    out = invoke("plan", "--model", str(world.model), "--ctx", "4096", "--types", "turbo4", "--manifest",
                 str(r.dist), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert out.returncode == 0, out.stderr
    assert f"block sizes: the build {r.plan.version}" in out.stdout and "66/128 B [turbo4]" in out.stdout
    out = invoke("plan", "--model", str(world.model), "--ctx", "4096", "--types", "turbo4", "--fork",
                 str(world.fork), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert out.returncode == 0, out.stderr
    assert f"block sizes: the fork {world.fork} @ feature/turboquant-kv-cache" in out.stdout
    assert "66/128 B [turbo4]" in out.stdout
    out = invoke("plan", "--model", str(world.model), "--ctx", "4096", "--types", "turbo4",
                 env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert "block sizes: the built-in table" in out.stdout and "68/128 B [turbo4]" in out.stdout


def test_a_fork_whose_type_table_cannot_be_read_is_named(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    clone = tmp_path / "fork"
    proc.run(["git", "clone", "-q", "-b", "feature/turboquant-kv-cache", str(worlds["clean"].fork), str(clone)])
    ggml_c = clone / "ggml/src/ggml.c"
    ggml_c.write_text(ggml_c.read_text().replace(".type_name", ".name"))
    proc.run(["git", "-C", str(clone), "commit", "-qam", "type table reshaped"])
    before = git_state(clone)
    out = invoke("plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "128", "--ctx", "4096", "--fork",
                 str(clone), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert out.returncode == 1, out.stdout
    assert "ggml/src/ggml.c: no type named" in out.stderr and "type table" in out.stderr
    assert "Traceback" not in out.stderr and git_state(clone) == before


def test_a_hybrid_model_keeps_kv_only_in_its_attention_layers(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    from ollama_turbo.kv import memory
    from ollama_turbo.prove.server_log import kv_lines

    world = worlds["clean"]
    geo = geometry.geometry_from_gguf(world.model_hybrid)
    assert geo.n_layer == 8 and geo.n_recurrent == 6
    for cache_type in ("f16", "turbo4"):
        log = _served_kv(era_c_build.dist, world.model_hybrid, cache_type, tmp_path)
        kv = kv_lines(log)[-1]
        est = memory.estimate(geo, kv.cells, cache_type)
        assert abs(est.mib - kv.mib) / kv.mib < 0.01, (cache_type, est.mib, kv.mib)
        rec = re.findall(r"llama_memory_recurrent: size = +([\d.]+) MiB", log)
        assert rec and abs(est.recurrent_bytes / 2**20 - float(rec[-1])) < 0.01, (rec, est.recurrent_bytes)
        # what the planner said before: every layer with a KV cache, no recurrent state
        flat = geometry.Geometry.simple(8, geo.n_head_kv[0], geo.head_dim_k, heads=geo.n_head[0])
        assert memory.estimate(flat, kv.cells, cache_type).mib > 3.9 * kv.mib
    out = invoke("plan", "--model", str(world.model_hybrid), "--ctx", "4096", "--types", "f16",
                 env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert "recurrent state: 0.2 MiB in 6 of 8 layers" in out.stdout, out.stdout
    assert "hybrid model: 2 of 8 layers keep a KV cache" in out.stdout


# --- bench: exact depth by the server's tokenizer, the context respected, failures recorded ----------


def test_bench_depth_is_counted_by_the_servers_tokenizer_and_never_exceeds_its_context(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    server = era_c_build.dist / "lib/ollama/llama-server"
    out = tmp_path / "bench"
    r = invoke("bench", "--llama-server", str(server), "--gguf", str(worlds["clean"].model), "--types",
               "f16,turbo4", "--depths", "0,300,1000,8192", "--ctx", "2048", "--reps", "1", "--n-predict", "4",
               "--niah-lengths", "", "--ab-predict", "2", "--out", str(out),
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "bench.json").read_text())
    rows = []
    for res in report["results"]:
        assert res["n_ctx"] == 2048
        assert res["prefill"]["tokens"] == 512, res["prefill"]  # pp512: a fixed 512-token prompt
        by_depth = {x["depth"]: x for x in res["perf"]}
        for asked in (300, 1000):
            x = by_depth[asked]
            rows.append(f"{res['label']} asked {asked} actual {x['actual_depth']}")
            assert asked - 2 <= x["actual_depth"] <= asked, x  # the sample tokenizer counts words, not 4 chars
        assert "error" in by_depth[8192] and "context of 2048" in by_depth[8192]["error"]
        assert "decode_tps" not in by_depth[8192]
    bench("bench depth, sample llama-server (1 token per word): " + "; ".join(rows))
    md = (out / "report.md").read_text()
    assert "| depth asked | depth actual |" in md and "failed: depth 8192" in md
    assert "failed at depth 8192" in r.stdout


def test_bench_records_a_failing_type_and_keeps_what_was_measured(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    import contextlib

    from ollama_turbo.core.errors import TurboError
    from ollama_turbo.prove import bench as bench_mod
    from ollama_turbo.prove import targets
    from ollama_turbo.prove.client import Endpoint

    good = targets.local_llama_server(era_c_build.dist / "lib/ollama/llama-server", worlds["clean"].model,
                                      [KVPair("q8_0", "q8_0")], ctx=2048, logs=tmp_path / "logs")

    @contextlib.contextmanager
    def broken():  # type: ignore[no-untyped-def]
        raise TurboError("llama-server (turbo3) exited with 1: out of memory")
        yield

    bad = [(Endpoint("turbo3", "turbo3", "turbo3", "", "llama-server"), broken)]
    opts = bench_mod.Options(depths=[0, 128], reps=1, n_predict=4, niah_lengths=[], niah_depths=[], ab_predict=2)

    @contextlib.contextmanager
    def quiet(total: int):  # type: ignore[no-untyped-def]
        yield lambda what: None

    out = tmp_path / "out"
    report = bench_mod.run([*bad, *good], opts, out, {"model": "sample"}, progress=quiet)
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    failed, ok = on_disk["results"]
    assert failed["label"] == "turbo3" and "out of memory" in failed["error"]
    assert ok["label"] == "q8_0" and [x["actual_depth"] for x in ok["perf"]][1] >= 126
    text = bench_mod.summary(report)
    assert "turbo3         FAILED: llama-server (turbo3) exited with 1" in text and "q8_0" in text


def test_deploy_warns_when_a_host_listens_on_every_interface(era_c_build: build.Result, tmp_path: Path) -> None:
    from ollama_turbo.deploy import releases

    s = config.parse({"workspace": str(tmp_path / "ws"), "hosts": {"lan": {
        "ssh": "local", "os": "linux", "service": "none", "listen": f"0.0.0.0:{free_port()}",
        "prefix": str(tmp_path / "host")}}})
    said: list[str] = []
    r = releases.deploy(s, s.host("lan"), era_c_build.dist, dry_run=True, say=said.append)
    assert r.status == "dry-run" and not (tmp_path / "host/releases").exists()
    assert any(line.startswith("WARNING: lan listens on 0.0.0.0:") and "no authentication" in line for line in said)


def test_deploy_refuses_a_build_for_another_platform(era_c_build: build.Result, tmp_path: Path) -> None:
    import shutil as sh

    from ollama_turbo.core import manifest as manifest_mod
    from ollama_turbo.deploy import releases

    s = _local_host(tmp_path)
    mac = tmp_path / "dist-mac"
    sh.copytree(era_c_build.dist, mac)
    m = manifest_mod.load(mac).data
    manifest_mod.write(mac, dict(m, platform={"os": "darwin", "arch": "arm64"}))
    with pytest.raises(releases.DeployError, match=r"dist-mac was built on darwin; here is os: linux"):
        releases.deploy(s, s.host("here"), mac, say=lambda line: None, accept_unmeasured=True)
    manifest_mod.write(mac, dict(m, backend="metal"))
    with pytest.raises(releases.DeployError, match=r"dist-mac is a metal build; here is os: linux"):
        releases.deploy(s, s.host("here"), mac, say=lambda line: None, accept_unmeasured=True)
    assert not (tmp_path / "host").exists()


def test_a_cache_type_the_builds_fork_lacks_is_refused_before_the_host_is_contacted(
        era_c_build: build.Result, tmp_path: Path) -> None:
    import shutil as sh

    from ollama_turbo.core import manifest as manifest_mod
    from ollama_turbo.deploy import releases

    s = _local_host(tmp_path)
    older = tmp_path / "dist-older-fork"
    sh.copytree(era_c_build.dist, older)
    m = manifest_mod.load(older).data
    manifest_mod.write(older, dict(m, cache_types={k: v for k, v in m["cache_types"].items() if k != "turbo4"}))
    with pytest.raises(releases.DeployError) as info:
        releases.deploy(s, s.host("here"), older, say=lambda line: None, accept_unmeasured=True)
    assert f"{m['version']} cannot run turbo.kv (turbo4): its fork has no turbo4 cache type (it has f32" in str(
        info.value)
    assert not (tmp_path / "host").exists()


def test_the_newest_build_is_chosen_by_its_build_time_not_its_mtime(era_c_build: build.Result,
                                                                    tmp_path: Path) -> None:
    import os
    import shutil as sh

    from ollama_turbo.core import manifest as manifest_mod
    from ollama_turbo.deploy import dists

    s = config.parse({"workspace": str(tmp_path / "ws")})
    for name, built_at in (("new", "2026-11-26T10:00:00+00:00"), ("old", "2026-11-01T10:00:00+00:00")):
        d = tmp_path / "ws/dist" / name
        sh.copytree(era_c_build.dist, d)
        manifest_mod.write(d, dict(manifest_mod.load(d).data, built_at=built_at))
    os.utime(tmp_path / "ws/dist/old", None)  # copied last: the newest mtime
    assert dists.latest_dist(s).name == "new"


def test_a_host_listening_on_another_address_is_reached_there(
        era_c_build: build.Result, worlds: dict[str, sample.World], tmp_path: Path) -> None:
    """127.0.0.2 stands in for a LAN address: health, models and smoke go to the listen address."""
    from ollama_turbo.deploy import hostview

    s = _local_host(tmp_path, name="lan", listen_host="127.0.0.2")
    with _deployed_here(s, "lan", era_c_build.dist, worlds["clean"].model, tmp_path) as d:
        st = hostview.status(s, s.host("lan"))
    assert d.status == "deployed" and d.smoke and d.smoke["url"].startswith("http://127.0.0.2:")
    assert st["serving"] == d.version


def test_a_stock_build_is_ollama_with_the_llama_cpp_it_pins(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    """No fork, no Go rules, Ollama's own patches as they are: stock Ollama through the same pipeline."""
    w = worlds["clean"]
    r = invoke("build-ollama", "--ollama", str(w.ollama_c), "--upstream", str(w.upstream), "--stock", "--backend",
               "cpu", env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 0, r.stderr
    dist = Path(r.stdout.strip().splitlines()[-1])
    m = manifest.load(dist)
    assert m.stock and m.version.startswith("0.31.0-stock+b110.cpu.") and m.data["fork"]["ref"] == "b110"
    assert m.data["rules"] == [] and not m.per_model_kv.supported and "turbo4" not in m.cache_types
    assert [p["status"] for p in m.data["patches"]] == ["applied"]
    log = tmp_path / "serve.log"
    with serving(dist / "bin/ollama", log, {"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_KV_CACHE_TYPE": "q8_0",
                                            "OLLAMA_FLASH_ATTENTION": "1"}) as client:
        assert client.version() == m.version
        client.create("s", gguf=w.model)
        assert client.generate("s", "hi", num_predict=1)["eval_count"] == 1
    assert "K (q8_0):" in log.read_text(errors="replace")
    # stock means the llama.cpp Ollama pins: a fork, or an upstream without the pin, is refused up front
    r = invoke("build-ollama", "--ollama", str(w.ollama_c), "--stock", "--fork", str(w.fork), "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws2")})
    assert r.returncode == 2 and "--stock builds the llama.cpp Ollama pins" in r.stderr
    r = invoke("build-ollama", "--ollama", str(w.ollama_c), "--stock", "--upstream", str(w.ollama_c), "--backend",
               "cpu", "--dry-run", env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws2")})
    assert r.returncode == 1 and "a stock build of Ollama" in r.stderr and "needs llama.cpp at its pin b110" in r.stderr
    assert "invoke upstream-tree --builds 110" in r.stderr
