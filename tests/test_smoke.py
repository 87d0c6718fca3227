"""invoke smoke against the sample world's era C build: a good build passes, each fault is named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import settings as config
from ollama_turbo.prove import smoke
from ollama_turbo.prove.ollama_api import Client

from .conftest import bench, free_port, invoke, serving

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sample.World]:
    root = tmp_path_factory.mktemp("smoke")
    world = sample.generate(root / "w")
    s = config.parse({"workspace": str(root / "ws"), "build": {"backend": "cpu"}})
    r = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    return r.dist, world


@pytest.fixture
def server(dist: tuple[Path, sample.World], tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[tuple[Client, Path]]:
    d, world = dist
    env = {"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_KV_CACHE_TYPE": getattr(request, "param", "turbo4"),
           "OLLAMA_FLASH_ATTENTION": "1"}
    log = tmp_path / "serve.log"
    with serving(d / "bin/ollama", log, env) as client:
        client.create("sample", gguf=world.model)
        yield client, log


def smoke_cli(client: Client, tmp: Path, *args: str) -> tuple[int, dict]:
    out = tmp / f"smoke-{len(list(tmp.glob('smoke-*')))}.json"
    r = invoke("smoke", "--url", client.base, "--json", str(out), *args)
    return r.returncode, json.loads(out.read_text())


def test_good_build_passes(server: tuple[Client, Path], dist: tuple[Path, sample.World], tmp_path: Path) -> None:
    client, log = server
    code, res = smoke_cli(client, tmp_path, "--manifest", str(dist[0]), "--log", str(log), "--model", "sample")
    assert code == 0 and res["ok"], res
    names = [c["name"] for c in res["checks"]]
    assert names == ["reachable", "version", "model present", "gguf", "generate", "generate stream", "ps",
                     "cache type", "attention on GPU"]
    assert all(c["ok"] for c in res["checks"][:-1])
    gpu = res["checks"][-1]
    assert gpu["ok"] is None and gpu["evidence"] == "no layer on a GPU (a CPU host, or the model did not offload)"
    cache = res["checks"][-2]["evidence"]
    assert "argv --cache-type-k turbo4 --cache-type-v turbo4" in cache and "K (turbo4) V (turbo4)" in cache
    m = res["metrics"]
    assert m["decode_tps"] > 0 and m["prefill_tps"] > 0 and m["ttft_ms"] > 0
    assert res["provenance"]["build"]["era"] == "C"


def test_wrong_version_missing_model_and_wrong_cache_type(
        server: tuple[Client, Path], dist: tuple[Path, sample.World], tmp_path: Path) -> None:
    client, log = server
    code, res = smoke_cli(client, tmp_path, "--expect-version", "9.9.9", "--log", str(log), "--cache-type", "q8_0")
    assert code == 1 and res["failed"] == ["version", "cache type"]
    assert "expected 9.9.9" in res["checks"][1]["evidence"]
    assert "expected K q8_0 V q8_0" in next(c for c in res["checks"] if c["name"] == "cache type")["evidence"]
    code, res = smoke_cli(client, tmp_path, "--model", "nope")
    assert code == 1 and res["failed"] == ["model present"]


@pytest.mark.parametrize("server", ["turbo4"], indirect=True)
def test_era_b_fallback_to_f16_is_caught(server: tuple[Client, Path]) -> None:
    client, _ = server
    log = "time=... level=WARN msg=\"unsupported OLLAMA_KV_CACHE_TYPE, falling back to f16\" type=turbo4\n" \
          "llama_kv_cache: size =    8.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    4.00 MiB, " \
          "V (f16):    4.00 MiB\n"
    ok, evidence = smoke.cache_type_from_log(log, "turbo4", "turbo4", "B")
    assert ok is False and "unsupported OLLAMA_KV_CACHE_TYPE" in evidence and "K (f16)" in evidence


def test_unreachable_endpoint() -> None:
    r = invoke("smoke", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "FAIL  reachable" in r.stdout and "smoke failed: reachable" in r.stderr


def test_slow_build_fails_the_baseline_gate(dist: tuple[Path, sample.World], tmp_path: Path) -> None:
    d, world = dist
    results = {}
    for name, token_us in (("fast", "2000"), ("slow", "6000")):
        env = {"OLLAMA_MODELS": str(tmp_path / name), "OLLAMA_KV_CACHE_TYPE": "turbo4",
               "OLLAMA_FLASH_ATTENTION": "1", "SAMPLE_LLAMA_TOKEN_US": token_us}
        with serving(d / "bin/ollama", tmp_path / f"{name}.log", env) as client:
            client.create("sample", gguf=world.model)
            results[name] = smoke.smoke_ollama(client.base, model="sample", expect=smoke.Expect(), log=None)
    smoke.apply_gates(results["slow"], results["fast"].to_json(), smoke.Thresholds())
    gate = next(c for c in results["slow"].checks if c.name == "decode vs baseline")
    # three times the per-token time: decode fails its gate (the time to first token is mostly the request's
    # own overhead on a loaded machine, so its gate is checked for being applied, not for its outcome)
    assert gate.ok is False and "gate >= 90%" in gate.evidence and "decode vs baseline" in results["slow"].failed
    ttft = next(c for c in results["slow"].checks if c.name == "ttft vs baseline")
    assert "gate <= 110%" in ttft.evidence


def test_bench_against_prestarted_ollama_servers(dist: tuple[Path, sample.World], tmp_path: Path) -> None:
    d, world = dist
    with serving(d / "bin/ollama", tmp_path / "t4.log", {"OLLAMA_MODELS": str(tmp_path / "a"),
                 "OLLAMA_KV_CACHE_TYPE": "turbo4", "OLLAMA_FLASH_ATTENTION": "1"}) as t4, \
            serving(d / "bin/ollama", tmp_path / "q8.log", {"OLLAMA_MODELS": str(tmp_path / "b"),
                    "OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1"}) as q8:
        for client in (t4, q8):
            client.create("sample", gguf=world.model)
        out = tmp_path / "bench"
        r = invoke("bench", "--url", f"turbo4={t4.base},q8_0={q8.base}", "--model", "sample",
                   "--log", f"turbo4={tmp_path / 't4.log'},q8_0={tmp_path / 'q8.log'}", "--gguf", str(world.model),
                   "--depths", "0,64", "--reps", "2", "--niah-lengths", "", "--ab-predict", "4",
                   "--manifest", str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [x["label"] for x in report["results"]] == ["turbo4", "q8_0"]
    assert report["provenance"]["build"]["era"] == "C"
    t4r = report["results"][0]
    assert t4r["kv"]["logged_types"] == ["turbo4", "turbo4"] and abs(t4r["kv"]["delta"]) < 0.01
    assert t4r["perf"][1]["prompt_tokens"] > t4r["perf"][0]["prompt_tokens"]
    # through the Ollama API the depth is calibrated from prompt_eval_count (no tokenize endpoint)
    assert abs(t4r["perf"][1]["actual_depth"] - 64) <= 2, t4r["perf"][1]
    bench("bench depth, sample Ollama API (calibrated from prompt_eval_count): " + "; ".join(
        f"{r['label']} asked 64 actual {r['perf'][1]['actual_depth']}" for r in report["results"]))
    assert [x["server"]["before"]["ok"] for x in report["results"]] == [True, True]
    assert "argv --cache-type-k turbo4 --cache-type-v turbo4" in t4r["server"]["after"]["evidence"]
    r = invoke("bench", "--url", "turbo4=http://x", "--types", "f16")
    assert r.returncode == 2 and "does not match" in r.stderr


def test_bench_refuses_numbers_from_a_server_that_is_not_the_labels(
        dist: tuple[Path, sample.World], tmp_path: Path) -> None:
    """Two labels, one turbo4 server: the q8_0 label's numbers would be turbo4's. The config fails, naming both."""
    d, world = dist
    with serving(d / "bin/ollama", tmp_path / "t4.log", {"OLLAMA_MODELS": str(tmp_path / "a"),
                 "OLLAMA_KV_CACHE_TYPE": "turbo4", "OLLAMA_FLASH_ATTENTION": "1"}) as t4:
        t4.create("sample", gguf=world.model)
        out = tmp_path / "bench"
        r = invoke("bench", "--url", f"turbo4={t4.base},q8_0={t4.base}", "--model", "sample",
                   "--log", f"turbo4={tmp_path / 't4.log'},q8_0={tmp_path / 't4.log'}", "--depths", "0", "--reps", "1",
                   "--niah-lengths", "", "--ab-predict", "0", "--manifest", str(d), "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads((out / "bench.json").read_text())
    t4r, q8r = report["results"]
    assert t4r["server"]["before"]["ok"] is True and "perf" in t4r and not t4r.get("mismatch")
    assert q8r["mismatch"] and "perf" not in q8r
    assert "the label says q8_0, the server's log shows argv --cache-type-k turbo4 --cache-type-v turbo4" \
        in q8r["error"] and "expected K q8_0 V q8_0" in q8r["error"]
    assert "error: bench: the server measured for q8_0 is not what the label says" in r.stderr
