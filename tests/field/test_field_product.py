"""The field tier, the product: a custom Ollama built from Ollama's real sources with the real fork, deployed
to this machine, asked for tokens, proven, measured, upgraded and rolled back, all through the toolkit's tasks.

Needs ``TURBO_FIELD_OLLAMA`` (a clone with tag v0.30.0) and ``TURBO_FIELD_FORK`` (a clone of the fork with
branch feature/turboquant-kv-cache and its commit 60fc49547, the branch before its last merge), Go modules
through the user's GOPROXY, and about 15 minutes for the first llama-server build (ccache makes the second
fork commit's about a minute). Builds live in ``$TURBO_TEST_CACHE/field/product``; every fact asserted is also
written to the compatibility record (``$TURBO_FIELD_RECORD``, default docs/compatibility.json) when
``TURBO_FIELD_RECORD_WRITE=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ollama_turbo.core.ports import free_port
from ollama_turbo.kv.geometry import geometry_from_gguf
from ollama_turbo.kv.memory import estimate
from ollama_turbo.prove import compat, smoke
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.smoke import cache_type_from_log

from .. import real_assets
from ..conftest import bench, invoke
from .test_field import FORK, OLLAMA

pytestmark = [pytest.mark.field,
              pytest.mark.skipif(not (OLLAMA and FORK), reason="set TURBO_FIELD_OLLAMA and TURBO_FIELD_FORK")]

ROOT = Path(__file__).resolve().parents[2]
WS = real_assets.CACHE / "field" / "product"
REF = "v0.30.0"
OLD_FORK = "60fc49547"  # the fork's branch before its last merge: the release an upgrade starts from
RECORD = Path(os.environ.get("TURBO_FIELD_RECORD", ROOT / "docs" / "compatibility.json"))


def record(facts: dict[str, Any]) -> None:
    """Facts for the compatibility record (written only when asked: a test run must not edit the checkout)."""
    print(f"[field] record: {json.dumps(facts)[:600]}")
    if os.environ.get("TURBO_FIELD_RECORD_WRITE") == "1":
        compat.record(RECORD, facts)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    r = invoke(*args, env={"INVOKE_TURBO_WORKSPACE": str(WS), **(env or {})}, timeout=timeout)
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def build(fork_ref: str) -> tuple[Path, dict[str, Any], float]:
    code, out, err, secs = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", REF, "--fork", FORK,
                               "--fork-ref", fork_ref, "--backend", "cpu", "--skip-verify",
                               "--json", str(WS / f"build-{fork_ref}.json"))
    assert code == 0, out + err
    m = json.loads((WS / f"build-{fork_ref}.json").read_text())
    return Path(m["dist"]), m, secs


@pytest.fixture(scope="module")
def builds() -> dict[str, Any]:
    WS.mkdir(parents=True, exist_ok=True)
    new, m_new, s_new = build("feature/turboquant-kv-cache")
    _, _, _, noop = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", REF, "--fork", FORK, "--backend", "cpu",
                        "--skip-verify")
    old, m_old, s_old = build(OLD_FORK)
    bench(f"field: build-ollama real Ollama {REF} + fork {m_new['fork']['sha'][:9]}: {s_new:.0f} s "
          f"(cold when the llama-server cache was empty), no-op rebuild {noop:.1f} s; "
          f"fork {m_old['fork']['sha'][:9]}: {s_old:.0f} s")
    return {"new": new, "m_new": m_new, "old": old, "m_old": m_old, "seconds": s_new, "noop": noop}


@pytest.fixture(scope="module")
def host(builds: dict[str, Any], smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("field-host")
    port = free_port()
    fleet = root / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"turbo": {
        # the workspace and K/V pair are left to INVOKE_TURBO_*: a -f file outranks the environment
        "kv": {"env": {"OLLAMA_MAX_LOADED_MODELS": "2"}},
        "hosts": {"here": {"ssh": "local", "os": "linux", "service": "none", "listen": f"127.0.0.1:{port}",
                           "memory_gib": 8, "prefix": str(root / "host"), "models_dir": str(root / "models"),
                           "health_timeout": 180}}}}))
    specs = root / "specs"
    specs.mkdir()
    (specs / "smollm2.yaml").write_text(yaml.safe_dump({"from": str(smollm2), "num_ctx": "auto",
                                                        "parameters": {"temperature": 0}, "hosts": ["here"]}))
    h = {"fleet": fleet, "specs": specs, "url": f"http://127.0.0.1:{port}", "log": root / "host/logs/ollama.log",
         **builds}
    yield h
    pidfile = root / "host" / "run" / "ollama.pid"  # service: none keeps its pid there
    if pidfile.is_file():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def deploy(h: dict[str, Any], dist: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Deploy with the host default q8_0/turbo4 (the config that passes SmolLM2's quality gate) unless told."""
    env = {"INVOKE_TURBO_KV_TYPE_K": "q8_0", **(env or {})}
    code, out, err, _ = cli("-f", str(h["fleet"]), "deploy", "--host", "here", "--dist", str(dist), "--specs",
                            str(h["specs"]), *extra, env=env)
    return code, out, err


def test_the_build_records_every_go_rule_on_real_ollama(builds: dict[str, Any]) -> None:
    m = builds["m_new"]
    rules = {r["rule"]: r for r in m["rules"]}
    print("\n[field] Go rules on real Ollama v0.30.0:\n" + "\n".join(
        f"  {r['rule']:<28} {r['status']:<10} {r['file']}:{r['line']}" for r in m["rules"]))
    assert (rules["per-model-kv-option"]["status"], rules["per-model-kv-option"]["file"],
            rules["per-model-kv-option"]["line"]) == ("applied", "api/types.go", 602)
    assert (rules["per-model-kv-load"]["file"], rules["per-model-kv-load"]["line"]) == ("llm/server.go", 118)
    assert (rules["per-model-kv-split"]["file"], rules["per-model-kv-split"]["line"]) == ("llm/llama_server.go", 361)
    assert rules["drop-flag--no-webui"]["status"] == "applied"
    assert rules["supports-kv-cache-type"]["status"] == "not needed"
    assert "llm/server.go:118 passes OLLAMA_KV_CACHE_TYPE to llama-server unchecked" in \
        rules["supports-kv-cache-type"]["why"]
    assert rules["kv-bytes-turbo4"]["status"] == "not needed" and "GraphSize" in rules["kv-bytes-turbo4"]["why"]
    assert m["per_model_kv"]["supported"] and "turbo4" in m["per_model_kv"]["allowed"]
    assert [a["define"] for a in m["adaptations"]] == ["-DLLAMA_BUILD_WEBUI=OFF"]
    assert {"bin/ollama", "lib/ollama/llama-server", "lib/ollama/llama-quantize",
            "lib/ollama/llama-perplexity"} <= set(m["files"])
    counts = {"applied": sum(r["status"] == "applied" for r in m["rules"]),
              "not needed": sum(r["status"] == "not needed" for r in m["rules"])}
    record({"ollama": REF, "fork": m["fork"]["sha"][:9], "backend": "cpu",
            "build": {"status": "built", "run_seconds": builds["seconds"], "noop_seconds": builds["noop"],
                      "version": m["version"], "rules": counts}})


@pytest.mark.parametrize("ref", ["v0.31.0", "v0.32.15", "main"])
def test_newer_releases_stop_before_go_or_cmake_naming_the_conflict(ref: str) -> None:
    code, out, err, secs = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", ref, "--fork", FORK, "--backend",
                               "cpu", "--skip-verify")
    print(f"\n[field] build-ollama {ref}: exit {code} after {secs:.1f} s: {err.strip()[:400]}")
    assert code == 1 and "compat patch llama/compat/001-llama-cpp-hooks.patch does not apply" in err
    assert "tools/mtmd/clip.cpp" in err and "download the" not in out and "build llama-server" not in out
    record({"ollama": ref, "fork": "69d8e4be4", "backend": "cpu",
            "build": {"status": "refused before Go or CMake", "conflict": err.split("error: ", 1)[-1].split(
                " (error:")[0].split("\n")[0][:200]}})


def test_an_ollama_ref_without_a_rules_anchor_is_refused_before_anything_is_built() -> None:
    code, out, err, _ = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", "v0.30.0-rc2", "--fork", FORK,
                            "--backend", "cpu", "--skip-verify")
    assert code == 1 and "llm/llama_server.go: rule per-model-kv-split: anchor" in err and "not found" in err
    assert "next step:" in err and "export Ollama sources" not in out


def test_deploy_generate_chat_and_smoke_turbo4_from_the_real_log(host: dict[str, Any], smollm2: Path) -> None:
    # turbo4 fails SmolLM2's quality gate once measured: this deploy reads a quality index of its own, where it is
    # unmeasured, so the cache itself can be proven
    code, out, err = deploy(host, host["new"], "--accept-unmeasured", "--json", str(WS / "deploy-t4.json"),
                            env={"INVOKE_TURBO_KV_TYPE_K": "turbo4", "INVOKE_TURBO_WORKSPACE": str(WS / "ungated")})
    assert code == 0, out + err
    print(f"\n[field] {out.strip().splitlines()[-1]}")
    d = json.loads((WS / "deploy-t4.json").read_text())
    cache = next(c for c in d["smoke"]["checks"] if c["name"] == "cache type")
    assert cache["ok"] and "argv --cache-type-k turbo4 --cache-type-v turbo4" in cache["evidence"]
    assert "llama_kv_cache K (turbo4) V (turbo4), 8192 cells" in cache["evidence"]
    c = Client(host["url"], timeout=120)
    gen = c.generate("smollm2", "Name a colour.", num_predict=8)
    chat = c.post("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}],
                                "stream": False, "options": {"num_predict": 8}})
    assert gen["done"] and gen["response"].strip() and chat["message"]["content"].strip()
    ps = c.get("/api/ps")["models"]
    assert ps[0]["context_length"] == 8192  # num_ctx auto: the model's trained context fits 8 GiB
    print(f"[field] generate: {gen['response']!r}; chat: {chat['message']['content']!r}; ps context "
          f"{ps[0]['context_length']}")
    record({"ollama": REF, "fork": d["version"].split("+")[1].split(".")[0], "backend": "cpu",
            "smoke": {"turbo4": "PASS (argv and llama_kv_cache line)"}})


def test_quality_gate_then_split_kv_through_the_environment(host: dict[str, Any], smollm2: Path) -> None:
    code, out, err, secs = cli("quality", "--model", str(smollm2), "--manifest", str(host["new"]), "--types",
                               "turbo4,q8_0/turbo4", "--ctx", "512", "--chunks", "8",
                               "--json", str(WS / "quality.json"))
    print(f"\n[field] quality ({secs:.0f} s):\n{out[-2500:]}")
    q = json.loads((WS / "quality.json").read_text())
    verdicts = {r["label"]: r for r in q["results"]}
    assert code in (0, 1)
    assert verdicts["turbo4"]["verdict"] == "FAIL" and verdicts["q8_0/turbo4"]["verdict"] != "FAIL"
    code, out, err = deploy(host, host["new"], env={"INVOKE_TURBO_KV_TYPE_K": "turbo4"})
    assert code == 1 and "smollm2 with turbo4 failed the quality gate: mean KLD" in err, err
    code, out, err = deploy(host, host["new"], "--json", str(WS / "deploy-q8t4.json"),
                            env={"INVOKE_TURBO_KV_TYPE_K": "q8_0"})
    assert code == 0, out + err
    d = json.loads((WS / "deploy-q8t4.json").read_text())
    cache = next(c for c in d["smoke"]["checks"] if c["name"] == "cache type")
    assert cache["ok"] and "llama_kv_cache K (q8_0) V (turbo4)" in cache["evidence"], cache
    assert "set through LLAMA_ARG_CACHE_TYPE_K/V" in cache["evidence"]
    record({"ollama": REF, "fork": "69d8e4be4", "backend": "cpu",
            "smoke": {"q8_0/turbo4": "PASS (LLAMA_ARG_CACHE_TYPE_K/V)"},
            "quality": {k: f"{v['verdict']} (mean KLD {v['kld']:.4f}, ΔPPL {v['dppl']:+.2f}, ctx 512, 8 chunks)"
                        for k, v in verdicts.items()}})


def test_bench_through_ollama_at_exact_depths_kv_equals_the_planner(host: dict[str, Any], smollm2: Path) -> None:
    code, out, err = deploy(host, host["new"], "--accept-unmeasured")
    assert code == 0, out + err
    out_dir = WS / "bench-host"
    # 8k deep is out of reach on CPU: the fork's CPU turbo path prefills SmolLM2 at ~24 tok/s at 2k (measured), so
    # an 8k request outlasts the client's timeout; the GPU box measures depth
    code, out, err, secs = cli("-f", str(host["fleet"]), "bench", "--host", "here", "--model", "smollm2", "--types",
                               "q8_0/turbo4", "--depths", "0,2048", "--reps", "1", "--n-predict", "16",
                               "--niah-lengths", "", "--ab-predict", "0", "--gguf", str(smollm2), "--out",
                               str(out_dir))
    print(f"\n[field] bench --host ({secs:.0f} s):\n{out}")
    assert code == 0, out + err
    report = json.loads((out_dir / "bench.json").read_text())
    r = report["results"][0]
    depths = {x["depth"]: x.get("actual_depth") for x in r["perf"]}
    assert depths[2048] == 2048, depths  # depth 0 is the chat template's own tokens
    geo = geometry_from_gguf(smollm2)
    planned = estimate(geo, 8192, "q8_0", "turbo4").mib
    assert r["kv"]["logged_mib"] == pytest.approx(planned, abs=0.01), (r["kv"], planned)
    record({"ollama": REF, "fork": "69d8e4be4", "backend": "cpu",
            "kv_mib": {"q8_0/turbo4 @8192": f"{planned:.2f} / {r['kv']['logged_mib']:.2f}"}})


def test_upgrade_and_rollback_between_two_real_builds(host: dict[str, Any]) -> None:
    code, out, err = deploy(host, host["old"], "--accept-unmeasured")
    assert code == 0, out + err
    code, out, err = deploy(host, host["new"], "--accept-unmeasured")
    assert code == 0, out + err
    up = float(out.split("downtime ")[1].split(" s")[0])
    code, out, err, _ = cli("-f", str(host["fleet"]), "rollback", "--host", "here")
    assert code == 0, err
    down = float(out.split("downtime ")[1].split(" s")[0])
    code, out, err, _ = cli("-f", str(host["fleet"]), "status", "--host", "here")
    assert f"current    {host['m_old']['version']}" in out and f"serving    {host['m_old']['version']}" in out
    assert f"previous   {host['m_new']['version']}" in out
    bench(f"field: upgrade {host['m_old']['version']} -> {host['m_new']['version']}: downtime {up:.2f} s; "
          f"rollback {down:.2f} s")


def twin(gguf: Path, dest: Path) -> Path:
    """The same model as another file: one byte of ``general.name`` changed (same length, so still valid GGUF).
    Ollama keeps one runner per model file, so two models loaded at once need two files."""
    data = bytearray(gguf.read_bytes())
    at = data.find(b"general.name")
    assert at > 0 and struct.unpack_from("<I", data, at + 12)[0] == 8  # a string value follows the key
    length = struct.unpack_from("<Q", data, at + 16)[0]
    end = at + 24 + length - 1
    data[end] = ord("2") if data[end] != ord("2") else ord("3")
    dest.write_bytes(bytes(data))
    return dest


def model_file(c: Client, name: str) -> str:
    path = smoke.model_file(c.post("/api/show", {"model": name}))
    assert path, name
    return path


def test_two_models_with_their_own_cache_types_on_one_real_ollama(host: dict[str, Any], smollm2: Path,
                                                                  tmp_path: Path) -> None:
    code, out, err = deploy(host, host["new"], "--accept-unmeasured")
    assert code == 0, out + err
    c = Client(host["url"], timeout=300)
    c.create("smol-q8t4", gguf=smollm2, parameters={"kv_cache_type": "q8_0/turbo4", "num_ctx": 4096})
    c.create("smol-t4", gguf=twin(smollm2, tmp_path / "SmolLM2-twin.gguf"),
             parameters={"kv_cache_type": "turbo4", "num_ctx": 4096})
    for name in ("smol-q8t4", "smol-t4"):
        assert c.generate(name, "Hello", num_predict=4)["done"]
    loaded = {m["name"] for m in c.get("/api/ps")["models"]}
    assert {"smol-q8t4:latest", "smol-t4:latest"} <= loaded, loaded
    log = host["log"].read_text(errors="replace")
    for name, k, v in (("smol-q8t4", "q8_0", "turbo4"), ("smol-t4", "turbo4", "turbo4")):
        ok, evidence = cache_type_from_log(log, k, v, "C", model_path=model_file(c, name))
        print(f"[field] {k}/{v}: {evidence}")
        assert ok, evidence
    with pytest.raises(ApiError, match='"turbo9" is not a cache type this build'):
        c.create("bad", gguf=smollm2, parameters={"kv_cache_type": "turbo9"})
    code, out, err, _ = cli("-f", str(host["fleet"]), "status", "--host", "here")
    assert "smol-q8t4:latest: ctx 4,096, K/V q8_0/turbo4 (its own kv_cache_type); running K q8_0 V turbo4" in out
    assert "smol-t4:latest: ctx 4,096, K/V turbo4 (its own kv_cache_type); running K turbo4 V turbo4" in out
    record({"ollama": REF, "fork": "69d8e4be4", "backend": "cpu",
            "smoke": {"per-model": "smol-q8t4 q8_0/turbo4 + smol-t4 turbo4 loaded at once"}})


def test_the_ollama_layer_costs_little(host: dict[str, Any], smollm2: Path) -> None:
    """Decode through Ollama's API against the same build's llama-server directly, same model and depths."""
    code, out, err = deploy(host, host["new"], "--accept-unmeasured")
    assert code == 0, out + err
    server = host["new"] / "lib/ollama/llama-server"
    direct = WS / "bench-direct"
    code, out, err, _ = cli("bench", "--llama-server", str(server), "--gguf", str(smollm2), "--types", "q8_0/turbo4",
                            "--depths", "0,512", "--reps", "2", "--n-predict", "32", "--niah-lengths", "",
                            "--ab-predict", "0", "--ctx", "8192", "--out", str(direct))
    assert code == 0, out + err
    via = WS / "bench-ollama"
    code, out2, err, _ = cli("-f", str(host["fleet"]), "bench", "--host", "here", "--model", "smollm2", "--types",
                             "q8_0/turbo4", "--depths", "0,512", "--reps", "2", "--n-predict", "32",
                             "--niah-lengths", "", "--ab-predict", "0", "--out", str(via))
    assert code == 0, out2 + err
    a = json.loads((direct / "bench.json").read_text())["results"][0]["perf"]
    b = json.loads((via / "bench.json").read_text())["results"][0]["perf"]
    for x, y in zip(a, b, strict=True):
        ratio = y["decode_tps"]["mean"] / x["decode_tps"]["mean"]
        bench(f"field: decode q8_0/turbo4 at depth {x['depth']}: llama-server {x['decode_tps']['mean']:.1f} tok/s, "
              f"through Ollama {y['decode_tps']['mean']:.1f} tok/s ({ratio:.0%}; the Ollama layer costs "
              f"{1 - ratio:+.0%})")
