"""The field tier: the toolkit on real checkouts of Ollama and the TurboQuant fork.

Not run by CI (it has no copies). Point the variables at clones and run ``pytest -m field -s``:

- ``TURBO_FIELD_OLLAMA``: a clone of ollama/ollama with tags v0.24.0 and v0.30.0;
- ``TURBO_FIELD_FORK``: a clone of the fork with branch feature/turboquant-kv-cache checked out;
- ``TURBO_FIELD_UPSTREAM`` (optional): a clone of upstream llama.cpp with the tags Ollama pins,
  for api-check's header diff.

What each test measured is printed, for the record. Builds are cached under
``$TURBO_TEST_CACHE/field``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_turbo.builder import era_c
from ollama_turbo.builder import llama_server as llama_build
from ollama_turbo.core import proc, sources
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import CommandError
from ollama_turbo.fork import blocks
from ollama_turbo.prove import bench as bench_mod
from ollama_turbo.prove import smoke, targets

from .. import real_assets
from ..conftest import bench, invoke

pytestmark = pytest.mark.field

OLLAMA = os.environ.get("TURBO_FIELD_OLLAMA", "")
FORK = os.environ.get("TURBO_FIELD_FORK", "")
UPSTREAM = os.environ.get("TURBO_FIELD_UPSTREAM", "")
CACHE = real_assets.CACHE / "field"
# Files a clone can lack (fetched snapshots leave out files of 4 MiB and more); the CPU build
# needs them to exist, not to hold anything.
STUBS = ("tools/server/public/bundle.js",)

needs_ollama = pytest.mark.skipif(not OLLAMA, reason="set TURBO_FIELD_OLLAMA to a clone of ollama/ollama")
needs_fork = pytest.mark.skipif(not FORK, reason="set TURBO_FIELD_FORK to a clone of the TurboQuant fork")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("field-ws")


def fork_tree(fork: sources.Checkout) -> Path:
    """The fork's tree at its commit, exported once, with stubs for files a snapshot clone lacks."""
    dest = CACHE / f"fork-{fork.sha[:12]}"
    fork.export(dest)
    for rel in STUBS:
        if not (dest / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text("/* stub: not in the snapshot */\n")
    return dest


@needs_ollama
@pytest.mark.parametrize(("ref", "era", "pin"), [("v0.24.0", "B", "ec98e2002"), ("v0.30.0", "C", "b9452"),
                                                 ("main", "C", None)])
def test_era_and_pin_of_real_ollama(ref: str, era: str, pin: str | None, ws: Path) -> None:
    info = sources.detect(sources.open_source("ollama", OLLAMA, ref, ws))
    print(f"\n[field] Ollama {ref}: era {info.era}, pin {info.pin}, version {info.version}")
    assert info.era == era
    if pin:
        assert info.pin.startswith(pin)


@needs_ollama
def test_a_real_checkout_is_read_at_its_head(ws: Path) -> None:
    co = sources.open_source("ollama", OLLAMA, sources.ref_for(OLLAMA, "", config.parse({}).sources.ollama), ws)
    head = proc.run(["git", "-C", OLLAMA, "rev-parse", "HEAD"]).stdout.strip()
    print(f"\n[field] {OLLAMA} read at {co.ref} ({co.sha[:12]})")
    assert co.sha == head


@needs_ollama
@needs_fork
@pytest.mark.skipif(not UPSTREAM, reason="set TURBO_FIELD_UPSTREAM to a clone of upstream llama.cpp (api-check "
                                         "diffs the fork against the tag Ollama pins)")
@pytest.mark.parametrize("ref", ["v0.24.0", "v0.31.0", "main"])
def test_api_check_verdicts(ref: str, tmp_path: Path) -> None:
    """With llama.cpp at Ollama's exact pin: the facts, not only the exit code. (v0.30.0 pins b9452, of which no
    tree could be had here: api-check refuses to stand in another build for the pin.)"""
    out = tmp_path / "report.json"
    r = invoke("api-check", "--ollama", OLLAMA, "--ollama-ref", ref, "--fork", FORK, "--upstream", UPSTREAM,
               "--leave-out", "laguna", "--json", str(out), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    print(f"\n[field] api-check Ollama {ref} (exit {r.returncode}):\n{r.stdout[-3000:]}")
    rep = json.loads(out.read_text())
    kinds = {(c["kind"], c["symbol"]): c for c in rep["changes"]}
    if ref == "v0.24.0":  # era B: the vendored headers, Ollama's git am patches on the fork
        assert rep["era"] == "B" and r.returncode & 8
        conflict = [p for p in rep["patches"] if p["status"] == "conflict"]
        assert conflict[0]["patch"].endswith("0001-ggml-backend-malloc-and-free-using-the-same-compiler.patch")
        return
    assert rep["era"] == "C" and rep["pinned"]["tag"] == ("b9840" if ref == "v0.31.0" else "b10488")
    if ref == "main":  # the fork's TURBO2_0 took the id upstream later gave Q2_0: files one writes, the other misreads
        collision = kinds[("enum_collision", "GGML_TYPE_TURBO2_0")]
        assert collision["counts_as"] == "incompatible" and "42 is GGML_TYPE_Q2_0 in the pinned llama.cpp" in \
            collision["detail"]
    else:  # b9840 has no Q2_0 yet: nothing of the C API counts, the carried patch is for review
        assert not any(c["counts_as"] == "incompatible" for c in rep["changes"])
    assert kinds[("flag_missing", "--no-log-prefix")]["counts_as"] == "review"
    hooks = next(p for p in rep["patches"] if p["patch"].endswith("llama-cpp-hooks.patch"))
    assert hooks["status"] == "carried" and [h["method"] for h in hooks["hunks"]] == \
        ["3-way" if ref == "v0.31.0" else "rule", *["3-way"] * 7, "context", "3-way"]
    assert ("feature_left_out", "model architecture laguna") in kinds
    assert (("flag_renamed", "--load-mode") in kinds) == (ref == "main")  # --load-mode came with v0.32.6
    assert r.returncode == (12 if ref == "main" else 4)


@needs_ollama
@needs_fork
def test_build_ollama_offline_stops_at_the_go_modules_before_cmake(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = invoke("build-ollama", "--ollama", OLLAMA, "--ollama-ref", "v0.30.0", "--fork", FORK, "--backend", "cpu",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws"), "GOPROXY": "off",
                    "GOMODCACHE": str(tmp_path / "gomodcache"), "GOFLAGS": "-modcacherw"})
    seconds = time.perf_counter() - t0
    print(f"\n[field] build-ollama v0.30.0 offline, empty module cache: exit {r.returncode} after {seconds:.1f} s\n"
          f"{r.stdout[-1500:]}{r.stderr[-1500:]}")
    bench(f"field: build-ollama of real Ollama v0.30.0 offline: module error after {seconds:.1f} s (target < 30 s)")
    assert r.returncode == 1 and "Go modules Ollama requires cannot be downloaded" in r.stderr
    assert "build llama-server" not in r.stdout


@needs_ollama
@needs_fork
@pytest.mark.parametrize("ref", ["v0.30.0"])
def test_real_era_c_llama_server_build_with_ollamas_cmake_and_compat_patch(ref: str, ws: Path,
                                                                            tmp_path: Path) -> None:
    """The llama-server step of build-ollama on real Ollama: its own CMake preset and compat patches."""
    ollama = sources.open_source("ollama", OLLAMA, ref, ws)
    fork = sources.open_source("fork", FORK, "HEAD", ws)
    ollama_dir = ollama.export(tmp_path / "ollama")
    fork_dir = tmp_path / "fork"
    shutil.copytree(fork_tree(fork), fork_dir)
    proc.run(["git", "init", "-q", str(fork_dir)])  # apply-patch.cmake applies patches with git
    t0 = time.perf_counter()
    log = CACHE / f"era-c-{ref}-{fork.sha[:12]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        binary = era_c.build_llama_server(ollama_dir, tmp_path / "build", tmp_path / "dist", preset="cpu",
                                          source_dir=fork_dir, log=log)
    except CommandError as exc:
        print(f"\n[field] Ollama {ref} CMake with the fork failed after {time.perf_counter() - t0:.0f} s:\n"
              f"{exc.stderr_tail[-3000:]}\nlog: {log}")
        raise
    print(f"\n[field] Ollama {ref}'s CMake built the fork's llama-server in {time.perf_counter() - t0:.0f} s: {binary}")
    assert binary.is_file()


@pytest.fixture(scope="module")
def fork_server(ws: Path) -> Iterator[Path]:
    if not FORK:
        pytest.skip("set TURBO_FIELD_FORK to a clone of the TurboQuant fork")
    fork = sources.open_source("fork", FORK, "HEAD", ws)
    t0 = time.perf_counter()
    binary = llama_build.build(fork_tree(fork), CACHE, backend="cpu")
    print(f"\n[field] the fork's llama-server ({fork.ref} {fork.sha[:12]}): {binary} "
          f"({time.perf_counter() - t0:.0f} s, cached by source hash)")
    yield binary


@pytest.mark.parametrize("pair", ["turbo2", "turbo3", "turbo4", "q8_0/turbo4"])
def test_fork_llama_server_runs_its_turbo_types_through_smoke(fork_server: Path, smollm2: Path, pair: str,
                                                              tmp_path: Path) -> None:
    k, _, v = pair.partition("/")
    v = v or k
    log = tmp_path / "server.log"
    p, url = targets.start_llama_server(fork_server, smollm2, k, v, ctx=4096, log=log,
                                        extra_args=("-t", "2", "--no-webui"))
    try:
        r = smoke.smoke_llama_server(url, expect=smoke.Expect(type_k=k, type_v=v),
                                     log=lambda: log.read_bytes().decode("utf-8", errors="replace"))
    finally:
        proc.stop(p)
    print(f"\n[field] smoke, the fork's llama-server with SmolLM2, {pair}:\n{r.render()}")
    assert r.ok, r.render()


def test_fork_llama_server_bench_and_block_formats(fork_server: Path, smollm2: Path, ws: Path,
                                                   tmp_path: Path) -> None:
    from ollama_turbo.kv.geometry import geometry_from_gguf

    table = blocks.table_for_checkout(sources.open_source("fork", FORK, "HEAD", ws))
    print(f"\n[field] block formats from {table.source}: " + ", ".join(
        f"{n} {table.get(n).block_bytes}/{table.get(n).block}" for n in ("q8_0", "turbo2", "turbo3", "turbo4")))
    pairs = [("f16", "f16"), ("q8_0", "q8_0"), ("turbo2", "turbo2"), ("turbo3", "turbo3"), ("turbo4", "turbo4"),
             ("q8_0", "turbo4")]
    opts = bench_mod.Options(depths=[0, 1024], reps=1, n_predict=16, niah_lengths=[], niah_depths=[], ab_predict=8,
                             geometry=geometry_from_gguf(smollm2), blocks=table)
    eps = targets.local_llama_server(fork_server, smollm2, pairs, ctx=4096, logs=tmp_path / "logs")
    t0 = time.perf_counter()
    report = bench_mod.run(eps, opts, tmp_path / "bench", {"model": smollm2.name, "server": str(fork_server)})
    print(f"\n[field] bench of the fork's llama-server on CPU ({time.perf_counter() - t0:.0f} s):\n"
          + bench_mod.summary(report))
    for r in report["results"]:
        assert "error" not in r, r
        for x in r["perf"]:
            print(f"[field]   {r['label']}: depth asked {x['depth']}, actual {x.get('actual_depth')}, "
                  f"decode {x.get('decode_tps', {}).get('mean', 0):.1f} tok/s")
        kv = r["kv"]
        print(f"[field]   {r['label']}: KV {kv.get('logged_mib')} MiB logged, {kv.get('planned_mib')} MiB planned")
        assert kv["delta"] is not None and abs(kv["delta"]) < 0.01, kv


def test_fork_llama_perplexity_turbo_quality(fork_server: Path, smollm2: Path, tmp_path: Path) -> None:
    """invoke quality with the fork's own llama-perplexity on CPU: its turbo types against the f16 cache."""
    perplexity = fork_server.parent / "llama-perplexity"
    assert perplexity.is_file(), "the fork's build makes llama-perplexity beside llama-server"
    out = tmp_path / "q"
    t0 = time.perf_counter()
    r = invoke("quality", "--model", str(smollm2), "--llama-perplexity", str(perplexity), "--types",
               "q8_0,turbo2,turbo3,turbo4,q8_0/turbo4", "--ctx", "512", "--chunks", "8", "--out", str(out),
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    print(f"\n[field] quality, the fork's llama-perplexity with SmolLM2 on CPU ({time.perf_counter() - t0:.0f} s):\n"
          f"{r.stdout[-4000:]}{r.stderr[-2000:]}")
    assert r.returncode == 0
    import json

    rows = {x["label"]: x for x in json.loads((out / "quality.json").read_text())["results"]}
    assert set(rows) == {"q8_0", "turbo2", "turbo3", "turbo4", "q8_0/turbo4"}
    # fewer bits, more damage; 8-bit K protects: the order SmolLM2 showed by hand on CPU and CUDA
    assert rows["q8_0"]["kld"] < rows["q8_0/turbo4"]["kld"] < rows["turbo4"]["kld"] < rows["turbo3"]["kld"] \
        < rows["turbo2"]["kld"]
    assert rows["q8_0"]["verdict"] == "PASS" and rows["turbo2"]["verdict"] == "FAIL"
    assert all(x["graph_splits"] == 1 and x["cpu_fallback"] is None for x in rows.values())  # CPU: one backend


@needs_fork
def test_verify_fork_on_the_real_fork(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    t0 = time.perf_counter()
    r = invoke("verify-fork", "--fork", FORK, "--json", str(out), env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    print(f"\n[field] verify-fork on {FORK} (exit {r.returncode}, {time.perf_counter() - t0:.1f} s):\n{r.stdout}")
    import json

    report = json.loads(out.read_text())
    items = {i["item"]: i for i in report["items"]}
    assert r.returncode == report["exit_code"] and report["verdict"] in ("PASS", "WARN", "FAIL"), r.stderr
    # every cache type's table is checked where the fork keeps it, in each backend's copy
    for bits in (2, 3, 4):
        table = items[f"turbo{bits}: Lloyd-Max codebook for N(0, 1/128)"]
        assert re.match(rf"ggml/src/ggml-turbo-quant\.c:\d+ CENTROIDS_{bits}BIT: MSE \d\.\d+x the optimum's",
                        table["evidence"]), table
        assert items[f"turbo{bits}: every backend stores the same table"]["verdict"] == "PASS"
    head = proc.run(["git", "-C", FORK, "rev-parse", "HEAD"]).stdout.strip()
    if head.startswith(("69d8e4be4", "67436835d")):  # the May 2026 snapshot: its 4-bit table is mis-scaled
        assert report["verdict"] == "FAIL" and r.returncode == 8
        t4 = items["turbo4: Lloyd-Max codebook for N(0, 1/128)"]
        assert t4["verdict"] == "FAIL" and "CENTROIDS_4BIT: MSE 2.13" in t4["evidence"], t4
        assert items["turbo2: Lloyd-Max codebook for N(0, 1/128)"]["verdict"] == "PASS"
        assert items["turbo3: Lloyd-Max codebook for N(0, 1/128)"]["verdict"] == "PASS"
    bench(f"field: verify-fork static {report['seconds']['static']:.2f} s (target < 2 s), "
          f"dynamic {report['seconds'].get('dynamic', 0):.2f} s")
