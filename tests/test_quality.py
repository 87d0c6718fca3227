"""invoke quality, the pass-criteria table, recommend and the deploy gate, on the sample world's build
(its llama-perplexity stands in for llama.cpp's: the same flags, the same output format)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import settings as config

from .conftest import bench, free_port, invoke

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[sample.World, Path, Path]:
    root = tmp_path_factory.mktemp("quality")
    world = sample.generate(root / "world")
    ws = root / "ws"
    r = build.run(config.parse({"workspace": str(ws), "build": {"backend": "cpu"}}),
                  build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    assert (r.dist / "lib/ollama/llama-perplexity").is_file(), r.manifest.get("build_flags")
    return world, r.dist, ws


@pytest.fixture(scope="module")
def measured(built: tuple[sample.World, Path, Path]) -> dict:
    world, dist, ws = built
    out = ws / "q1"
    t0 = time.perf_counter()
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dist), "--types", "q8_0,turbo4,turbo2",
               "--ctx", "512,1024", "--out", str(out), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "quality.json").read_text())
    rows = "; ".join(f"{x['label']}@{x['ctx']} KLD {x['kld']:.5f} top-1 {100 * x['top1']:.1f} % {x['verdict']}"
                     for x in report["results"])
    bench(f"quality on the sample build (f16 + 3 configs, 2 contexts): {time.perf_counter() - t0:.1f} s; {rows}")
    return report


def test_quality_measures_kld_top1_and_dppl_against_the_f16_cache(measured: dict, built: tuple) -> None:
    _, _, ws = built
    out = ws / "q1"
    by = {(x["label"], x["ctx"]): x for x in measured["results"]}
    assert set(by) == {(t, c) for t in ("q8_0", "turbo4", "turbo2") for c in (512, 1024)}
    for ctx in (512, 1024):
        assert 0 < by[("q8_0", ctx)]["kld"] < by[("turbo4", ctx)]["kld"] < by[("turbo2", ctx)]["kld"]
        assert 0 < by[("q8_0", ctx)]["top1"] <= 1 and by[("q8_0", ctx)]["ppl"] > 0
    assert by[("turbo4", 512)]["verdict"] == "PASS" and by[("turbo2", 1024)]["verdict"] == "FAIL"
    assert by[("turbo4", 512)]["bits_per_value"] == 4.25
    assert measured["corpus"]["name"] == "ollama-turbo's README (its documentation)"
    assert measured["corpus"]["tokens"] > 2 * 1024 and measured["corpus"]["evaluated_tokens"]["1024"] > 0
    md = (out / "quality.md").read_text()
    assert "| K/V | build | ctx | bits/value | KV MiB at 32,768 | mean KLD |" in md and "## Pass criteria" in md
    assert "| turbo4 | custom | 512 | 4.25 | 34.0 |" in md  # the sample model's heads pad to 128: as q8_0
    assert (out / "kld_vs_memory.png").read_bytes()[:4] == b"\x89PNG"
    index = json.loads((ws / "quality/index.json").read_text())
    entry = next(iter(index.values()))
    assert entry["configs"]["turbo2"]["verdict"] == "FAIL" and entry["configs"]["turbo4"]["verdict"] == "PASS"


def test_the_verdict_table_adds_speed_memory_and_oom_from_a_bench(built: tuple, measured: dict,
                                                                   tmp_path: Path) -> None:
    world, dist, ws = built
    b = tmp_path / "bench"
    r = invoke("bench", "--llama-server", str(dist / "lib/ollama/llama-server"), "--gguf", str(world.model),
               "--types", "f16,turbo4", "--depths", "0,256", "--reps", "1", "--n-predict", "8", "--niah-lengths", "",
               "--ab-predict", "2", "--out", str(b), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    out = tmp_path / "q"
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dist), "--types", "turbo4", "--ctx", "512",
               "--bench", str(b), "--out", str(out), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "quality.json").read_text())["criteria"]
    kinds = {(x["criterion"].split(" ")[0], x["at"]) for x in rows if x["config"] == "turbo4"}
    assert {("quality", "ctx 512"), ("decode", "depth 256"), ("prefill", "depth 0"), ("KV", "-"),
            ("no", "depth 256")} <= kinds, kinds
    mem = next(x for x in rows if x["criterion"].startswith("KV memory"))
    assert mem["verdict"] == "PASS" and "planner" in mem["number"]
    assert all(x["verdict"] in ("PASS", "BORDERLINE", "FAIL") for x in rows)
    assert "| turbo4 | decode >= 90% of f16 | depth 256 |" in r.stdout


def _fleet(tmp_path: Path, ws: Path, memory: float) -> Path:
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {
        "box": {"ssh": "local", "os": "linux", "service": "none", "listen": f"127.0.0.1:{free_port()}",
                "memory_gib": memory, "prefix": str(tmp_path / "host"), "models_dir": str(tmp_path / "m"),
                "health_timeout": 30}}}}))
    return f


def test_recommend_picks_a_passing_config_and_explains_the_others(built: tuple, measured: dict,
                                                                  tmp_path: Path) -> None:
    world, _, ws = built
    fleet = _fleet(tmp_path, ws, 1.0)
    out = tmp_path / "rec.json"
    r = invoke("-f", str(fleet), "recommend", "--model", str(world.model), "--host", "box", "--ctx", "8k",
               "--reserve-gib", "0.5", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    # no bench given: among the configs that pass, the lowest KL divergence (q8_0's, from 8-bit blocks)
    assert rec["choice"] == "q8_0" and rec["measured"]
    by = {o["config"]: o for o in rec["options"]}
    assert by["turbo2"]["quality"] == "FAIL" and by["turbo2"]["reason"].startswith("fails the quality gate: mean KLD")
    assert by["q4_0"]["quality"] == "unmeasured"
    assert "PARAMETER kv_cache_type q8_0" in r.stdout and "    type_k: q8_0\n    type_v: q8_0" in r.stdout
    assert "kv: " in r.stdout


def test_recommend_without_measurements_follows_the_field_and_says_so(built: tuple, tmp_path: Path) -> None:
    world, _, _ = built
    ws = tmp_path / "empty-ws"
    fleet = _fleet(tmp_path, ws, 1.0)
    r = invoke("-f", str(fleet), "recommend", "--model", str(world.model_gqa6), "--host", "box", "--ctx", "4k",
               "--reserve-gib", "0.5")
    assert r.returncode == 0, r.stderr
    assert "choice: q8_0/turbo4 — UNMEASURED" in r.stdout
    assert "(6 query heads per KV head) protects K with q8_0" in r.stdout


def test_deploy_refuses_a_config_that_failed_the_gate_and_an_unmeasured_one(built: tuple, measured: dict,
                                                                            tmp_path: Path) -> None:
    world, dist, ws = built
    fleet = _fleet(tmp_path, ws, 4.0)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: 2048\nkv: turbo2\nhosts: [box]\n")
    r = invoke("-f", str(fleet), "deploy", "--host", "box", "--dist", str(dist), "--specs", str(specs))
    assert r.returncode == 1
    assert "sample with turbo2 failed the quality gate: mean KLD" in r.stderr and "report " in r.stderr
    assert "invoke recommend" in r.stderr and not (tmp_path / "host").exists()
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: 2048\nkv: q4_0\nhosts: [box]\n")
    r = invoke("-f", str(fleet), "deploy", "--host", "box", "--dist", str(dist), "--specs", str(specs))
    assert r.returncode == 1 and "sample has no quality measurement with q4_0" in r.stderr
    assert "--accept-unmeasured" in r.stderr and not (tmp_path / "host").exists()
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: 2048\nkv: turbo4\nhosts: [box]\n")
    try:
        r = invoke("-f", str(fleet), "deploy", "--host", "box", "--dist", str(dist), "--specs", str(specs),
                   "--json", str(tmp_path / "d.json"))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        from ollama_turbo.deploy.managers import manager_for
        from ollama_turbo.deploy.services import Layout
        from ollama_turbo.deploy.transport import LocalTransport

        s = config.parse(yaml.safe_load(fleet.read_text())["turbo"])
        manager_for(LocalTransport(), s.host("box"), Layout("", str(tmp_path / "host"), "")).stop()
    q = json.loads(next((tmp_path / "host/releases").glob("*/quality.json")).read_text())
    assert q[0]["model"] == "sample" and q[0]["verdict"] == "PASS" and len(q[0]["report_sha256"]) == 64
    assert json.loads((tmp_path / "d.json").read_text())["quality"][0]["config"] == "turbo4"


def test_bad_input(built: tuple, measured: dict, tmp_path: Path) -> None:
    world, dist, ws = built
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
    base = ("quality", "--model", str(world.model), "--manifest", str(dist), "--types", "turbo4")
    short = tmp_path / "short.txt"
    short.write_text("only a few words here\n" * 20)
    r = invoke(*base, "--corpus", str(short), "--ctx", "512", env=env)
    assert r.returncode == 1 and f"the corpus {short} is too short for a context of 512" in r.stderr
    assert "needs 1024 tokens" in r.stderr and "Traceback" not in r.stderr
    notgguf = tmp_path / "model.gguf"
    notgguf.write_bytes(b"not a model")
    r = invoke("quality", "--model", str(notgguf), "--manifest", str(dist), "--types", "turbo4", "--ctx", "512",
               env=env)
    assert r.returncode == 1 and "llama-perplexity failed for the f16 baseline" in r.stderr, r.stderr
    r = invoke("quality", "--model", str(world.model_gqa6), "--manifest", str(dist), "--types", "turbo4",
               "--ctx", "512", "--baseline", str(ws / "q1"), env=env)
    assert r.returncode == 2 and "was measured on another model (sample-model.gguf" in r.stderr
    nodist = tmp_path / "nodist"
    nodist.mkdir()
    (nodist / "manifest.json").write_text(json.dumps({"version": "0.0.1", "build_flags": {}}))
    r = invoke("quality", "--model", str(world.model), "--manifest", str(nodist), env=env)
    assert r.returncode == 2 and f"{nodist / 'manifest.json'}: not a build manifest (no era, files)" in r.stderr
    (nodist / "manifest.json").write_text(json.dumps({"version": "0.0.1", "era": "C", "files": {}}))
    r = invoke("quality", "--model", str(world.model), "--manifest", str(nodist), env=env)
    assert r.returncode == 1 and "the build 0.0.1 has no tools/llama-perplexity" in r.stderr
    r = invoke(*base, "--ctx", "512", "--max-kld", "tiny", env=env)
    assert r.returncode == 2 and "--max-kld 'tiny' is not a number" in r.stderr


def test_quality_uses_this_machines_cores_and_records_how_it_ran(measured: dict, built: tuple) -> None:
    run = measured["run"]
    assert run["threads"] == (os.cpu_count() or 2) and run["gpu_layers"] == 0 and run["gpu_backend"] is None
    assert run["passes"] == 2 * (1 + 3) and run["baseline_reused"] is False and run["seconds"] > 0
    world, dist, ws = built
    out = ws / "q-threads"
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dist), "--types", "q8_0", "--ctx", "512",
               "--threads", "3", "--gpu-layers", "0", "--baseline", str(ws / "q1"), "--out", str(out),
               env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    assert "[1/1] q8_0 at ctx 512:" in r.stdout and "quality: 1 passes in" in r.stdout
    again = json.loads((out / "quality.json").read_text())["run"]
    assert (again["threads"], again["gpu_layers"], again["baseline_reused"], again["passes"]) == (3, 0, True, 1)
    log = (out / "llama-perplexity.log").read_text()
    assert " -t 3 -lv 4 -ngl 0" in log  # and llama.cpp's own lines printed: the cache it made, its rotation


def test_a_baseline_of_another_text_is_refused_before_llama_perplexity_runs(built: tuple, measured: dict,
                                                                            tmp_path: Path) -> None:
    world, dist, ws = built
    corpus = tmp_path / "other.txt"
    corpus.write_text("A different text entirely. " * 400)
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dist), "--types", "q8_0", "--ctx", "512",
               "--corpus", str(corpus), "--baseline", str(ws / "q1"), "--out", str(tmp_path / "q"),
               env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 2
    assert f"the baseline in {ws / 'q1'} was measured on another text (ollama-turbo's README" in r.stderr
    assert not (tmp_path / "q" / "llama-perplexity.log").exists()


def test_stock_ollama_beside_the_custom_build(built: tuple[sample.World, Path, Path], tmp_path: Path) -> None:
    """Stock's types on stock's own llama-perplexity, the fork's on the custom build's, against stock's f16."""
    world, dist, ws = built
    r = invoke("build-ollama", "--ollama", str(world.ollama_c), "--upstream", str(world.upstream), "--stock",
               "--backend", "cpu", env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stderr
    stock = Path(r.stdout.strip().splitlines()[-1])
    out = tmp_path / "side"
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dist), "--stock", str(stock), "--types",
               "q8_0,q4_0,turbo4", "--ctx", "512", "--out", str(out), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "quality.json").read_text())
    rows = {x["label"]: x for x in report["results"]}
    assert set(rows) == {"stock q8_0", "stock q4_0", "turbo4"}
    assert (rows["stock q8_0"]["build"], rows["turbo4"]["build"]) == ("stock", "custom")
    assert report["stock"]["version"].startswith("0.31.0-stock+b110") and report["kv_ctx"] == 32768
    assert rows["stock q8_0"]["kv_mib"] == 8.5 * 1024 / 1024 * 4 and rows["turbo4"]["kv_mib"] > 0
    log = (out / "llama-perplexity.log").read_text()
    assert f"{stock}/lib/ollama/llama-perplexity" in log and f"{dist}/lib/ollama/llama-perplexity" in log
    md = (out / "quality.md").read_text()
    assert "| stock q8_0 | stock | 512 |" in md and "worth their memory at ctx 512" in md
    assert (out / "kld_vs_memory.png").stat().st_size > 1000
    index = json.loads((ws / "quality/index.json").read_text())
    assert "stock q8_0" in next(iter(index.values()))["configs"]
    # the fork's types are not stock's: a stock build asked for one is refused before anything runs
    r = invoke("quality", "--model", str(world.model), "--manifest", str(stock), "--types", "turbo4", "--ctx", "512",
               env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 2 and "turbo4: " in r.stderr
    assert "has no turbo4 cache type (a stock build: it has" in r.stderr
