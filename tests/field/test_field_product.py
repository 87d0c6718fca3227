"""The field tier, the product: custom Ollama built from Ollama's real sources with the real fork, deployed to this
machine, asked for tokens, proven, measured, upgraded and rolled back, all through the toolkit's tasks; for
v0.30.0 (whose compat patch applies as it is) and for the newer releases whose patches are carried onto the fork.

Needs ``TURBO_FIELD_OLLAMA`` (a clone with the release tags and main), ``TURBO_FIELD_FORK`` (a clone of the fork
with branch feature/turboquant-kv-cache and its commit 60fc49547, the branch before its last merge),
``TURBO_FIELD_UPSTREAM`` (llama.cpp with the tags Ollama pins: a clone, or ``invoke upstream-tree``'s repository)
for the 3-way merges, Go modules through the user's GOPROXY, and about 15 minutes for the first llama-server
build (ccache makes every later one a few minutes). Builds live in ``$TURBO_TEST_CACHE/field/product``; every
fact asserted is also written to the compatibility record (``$TURBO_FIELD_RECORD``, default
docs/compatibility.json) when ``TURBO_FIELD_RECORD_WRITE=1``.
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
from .test_field import FORK, OLLAMA, UPSTREAM

pytestmark = [pytest.mark.field,
              pytest.mark.skipif(not (OLLAMA and FORK and UPSTREAM),
                                 reason="set TURBO_FIELD_OLLAMA, TURBO_FIELD_FORK and TURBO_FIELD_UPSTREAM")]

ROOT = Path(__file__).resolve().parents[2]
WS = real_assets.CACHE / "field" / "product"
REF = "v0.30.0"
NEWER = ("v0.31.0", "v0.32.15", "main")  # main is v0.33.0-rc2's commit in the clone the record was made from
OLD_FORK = "60fc49547"  # the fork's branch before its last merge: the release an upgrade starts from
RECORD = Path(os.environ.get("TURBO_FIELD_RECORD", ROOT / "docs" / "compatibility.json"))


def record(facts: dict[str, Any]) -> None:
    """Facts for the compatibility record (written only when asked: a test run must not edit the checkout)."""
    print(f"[field] record: {json.dumps(facts)[:600]}")
    if os.environ.get("TURBO_FIELD_RECORD_WRITE") == "1":
        compat.record(RECORD, facts)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    r = invoke(*args, env={"INVOKE_TURBO_WORKSPACE": str(WS), "INVOKE_TURBO_SOURCES_UPSTREAM_URL": UPSTREAM,
                           **(env or {})}, timeout=timeout)
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def build(ref: str, fork_ref: str = "feature/turboquant-kv-cache", *extra: str) -> tuple[Path, dict[str, Any], float]:
    name = f"{ref}-{fork_ref.replace('/', '-')}"
    code, out, err, secs = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", ref, "--fork", FORK,
                               "--fork-ref", fork_ref, "--backend", "cpu", "--skip-verify", *extra,
                               "--json", str(WS / f"build-{name}.json"))
    assert code == 0, out + err
    m = json.loads((WS / f"build-{name}.json").read_text())
    return Path(m["dist"]), m, secs


@pytest.fixture(scope="module")
def builds() -> dict[str, Any]:
    WS.mkdir(parents=True, exist_ok=True)
    new, m_new, s_new = build(REF)
    _, _, _, noop = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", REF, "--fork", FORK, "--backend", "cpu",
                        "--skip-verify")
    old, m_old, s_old = build(REF, OLD_FORK)
    bench(f"field: build-ollama real Ollama {REF} + fork {m_new['fork']['sha'][:9]}: {s_new:.0f} s "
          f"(cold when the llama-server cache was empty), no-op rebuild {noop:.1f} s; "
          f"fork {m_old['fork']['sha'][:9]}: {s_old:.0f} s")
    out = {"new": new, "m_new": m_new, "old": old, "m_old": m_old, "seconds": s_new, "noop": noop}
    for ref in NEWER:  # their laguna patch fixes an architecture the fork lacks: left out, said so
        dist, m, secs = build(ref, "feature/turboquant-kv-cache", "--leave-out", "laguna")
        out[ref] = {"dist": dist, "m": m, "seconds": secs}
        bench(f"field: build-ollama real Ollama {ref} + fork {m['fork']['sha'][:9]} (patches carried): {secs:.0f} s")
    return out


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
    # lines as the file is patched: a rule applied above another shifts it
    assert (rules["per-model-kv-split"]["file"], rules["per-model-kv-split"]["line"]) == ("llm/llama_server.go", 362)
    # the fork has --no-webui (a negated name of --webui): only what it lacks is dropped
    assert "drop-flag--no-webui" not in rules and rules["drop-flag--no-log-prefix"]["status"] == "applied"
    assert (rules["context-shift-quantized-k"]["file"], rules["context-shift-quantized-k"]["line"]) == \
        ("llm/llama_server.go", 387)
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


# how each hunk of the hooks patch lands on the fork's May snapshot (69d8e4be4), with the pinned llama.cpp
# (the upstream's tag) as the base of the 3-way merges: (hunk, method, file:line)
HOOKS_MAIN = [(1, "rule", "src/llama-model-loader.cpp:7"), (2, "3-way", "src/llama-model-loader.cpp:555"),
              (3, "3-way", "src/llama-model-loader.cpp:582"), (4, "3-way", "src/llama-model-loader.cpp:695"),
              (5, "3-way", "src/llama-model-loader.cpp:1392"), (6, "3-way", "src/llama-model-loader.cpp:1543"),
              (7, "3-way", "tools/mtmd/clip.cpp:13"), (8, "3-way", "tools/mtmd/clip.cpp:990"),
              (9, "context", "tools/mtmd/clip.cpp:2368"), (10, "3-way", "tools/mtmd/clip.cpp:3646")]
HOOKS = {"main": HOOKS_MAIN, "v0.32.15": HOOKS_MAIN,
         "v0.31.0": [(h, "3-way" if m == "rule" else m, w.replace(":582", ":580").replace(":695", ":693")
                      .replace(":1392", ":1390").replace(":1543", ":1541")) for h, m, w in HOOKS_MAIN]}


@pytest.mark.parametrize("ref", NEWER)
def test_newer_releases_carry_their_compat_patches_onto_the_fork(builds: dict[str, Any], ref: str) -> None:
    m = builds[ref]["m"]
    patches = {p["patch"].rsplit("/", 1)[-1]: p for p in m["patches"]}
    hooks = patches["001-llama-cpp-hooks.patch"]
    got = [(h["hunk"], h["method"], f"{h['file']}:{h['line']}") for h in hooks["hunks"]]
    print(f"\n[field] {ref}: " + "; ".join(f"hunk {h} {meth} at {w}" for h, meth, w in got))
    assert hooks["status"] == "carried" and got == HOOKS[ref]
    laguna = next(p for name, p in patches.items() if "laguna" in name)
    assert laguna["status"] == "left-out" and laguna["feature"] == "model architecture laguna"
    assert m["pinned"]["merge_base"].startswith(f"llama.cpp {m['pinned']['tag']} ({UPSTREAM})")
    rules = {r["rule"]: r for r in m["rules"]}
    assert rules["context-shift-quantized-k"]["status"] == "applied"
    if ref != "v0.31.0":  # Ollama from v0.32.6 passes --load-mode, which the fork knows as --no-mmap/--direct-io
        assert rules["rename-flag--load-mode-none"]["status"] == "applied"
    record({"ollama": ref, "fork": m["fork"]["sha"][:9], "backend": "cpu",
            "build": {"status": "built", "run_seconds": builds[ref]["seconds"], "version": m["version"],
                      "rules": {"applied": sum(r["status"] == "applied" for r in m["rules"]),
                                "not needed": sum(r["status"] == "not needed" for r in m["rules"])}},
            "patches": m["patches"]})


@pytest.mark.parametrize("ref", NEWER)
def test_each_newer_release_serves_smollm2_with_turbo4_and_q8_0_turbo4(builds: dict[str, Any], host: dict[str, Any],
                                                                      smollm2: Path, ref: str) -> None:
    dist = builds[ref]["dist"]
    smoked = {}
    for k in ("turbo4", "q8_0"):  # turbo4, then q8_0/turbo4 (V is turbo4 either way)
        code, out, err = deploy(host, dist, "--accept-unmeasured", "--json", str(WS / f"deploy-{ref}-{k}.json"),
                                env={"INVOKE_TURBO_KV_TYPE_K": k, "INVOKE_TURBO_WORKSPACE": str(WS / "ungated")})
        assert code == 0, out + err
        code, out, err, _ = cli("-f", str(host["fleet"]), "smoke", "--host", "here", "--json",
                                str(WS / f"smoke-{ref}-{k}.json"))
        assert code == 0, out + err
        cache = next(c for c in json.loads((WS / f"smoke-{ref}-{k}.json").read_text())["checks"]
                     if c["name"] == "cache type")
        want = "K (turbo4) V (turbo4)" if k == "turbo4" else "K (q8_0) V (turbo4)"
        assert cache["ok"] and f"llama_kv_cache {want}" in cache["evidence"], cache
        smoked["turbo4" if k == "turbo4" else "q8_0/turbo4"] = "PASS"
    # the per-model cache type: a model of its own K/V while the host default is q8_0/turbo4
    c = Client(host["url"], timeout=300)
    c.create("smol-t4", gguf=smollm2, parameters={"kv_cache_type": "turbo4", "num_ctx": 4096})
    assert c.generate("smol-t4", "Hello", num_predict=4)["done"]
    ok, evidence = cache_type_from_log(host["log"].read_text(errors="replace"), "turbo4", "turbo4", "C",
                                       model_path=model_file(c, "smol-t4"))
    assert ok, evidence
    # the KV memory the server logged is the planner's, for the model's own context
    geo = geometry_from_gguf(smollm2)
    logged = [line for line in host["log"].read_text(errors="replace").splitlines() if "llama_kv_cache: size" in line]
    planned = estimate(geo, 4096, "turbo4", "turbo4").mib
    assert f"{planned:7.2f} MiB" in logged[-1], (logged[-1], planned)
    record({"ollama": ref, "fork": builds[ref]["m"]["fork"]["sha"][:9], "backend": "cpu",
            "smoke": {**{k: f"{v} (smoke --host: argv and llama_kv_cache line)" for k, v in smoked.items()},
                      "per-model": "smol-t4 turbo4 beside the host's q8_0/turbo4"},
            "kv_mib": {"turbo4 @4096": f"{planned:.2f} / {planned:.2f}"}})


def test_upgrade_from_v0_30_0_to_main_and_back(builds: dict[str, Any], host: dict[str, Any]) -> None:
    code, out, err = deploy(host, builds["new"], "--accept-unmeasured")
    assert code == 0, out + err
    code, out, err = deploy(host, builds["main"]["dist"], "--accept-unmeasured")
    assert code == 0, out + err
    up = float(out.split("downtime ")[1].split(" s")[0])
    code, out, err, _ = cli("-f", str(host["fleet"]), "rollback", "--host", "here")
    assert code == 0, err
    down = float(out.split("downtime ")[1].split(" s")[0])
    code, out, err, _ = cli("-f", str(host["fleet"]), "status", "--host", "here")
    assert f"current    {builds['m_new']['version']}" in out and f"serving    {builds['m_new']['version']}" in out
    bench(f"field: upgrade {builds['m_new']['version']} -> {builds['main']['m']['version']}: downtime {up:.2f} s; "
          f"rollback {down:.2f} s")
    record({"ollama": "main", "fork": builds["main"]["m"]["fork"]["sha"][:9], "backend": "cpu",
            "notes": [f"upgrade from v0.30.0 ({builds['m_new']['version']}) to main: downtime {up:.2f} s; "
                      f"rollback to v0.30.0: {down:.2f} s"]})


def test_a_generation_past_the_context_no_longer_kills_the_runner(builds: dict[str, Any], host: dict[str, Any],
                                                                  smollm2: Path) -> None:
    """The fork's llama-server crashes shifting a quantized K cache; the build runs such a cache without
    --context-shift, so a generation that reaches num_ctx ends there instead of in HTTP 500."""
    code, out, err = deploy(host, builds["main"]["dist"], "--accept-unmeasured",
                            env={"INVOKE_TURBO_KV_TYPE_K": "turbo4"})
    assert code == 0, out + err
    c = Client(host["url"], timeout=600)
    c.create("smol-short", gguf=smollm2, parameters={"num_ctx": 256})
    words = "one two three four five six seven eight nine ten " * 20
    r = c.generate("smol-short", words, num_predict=128, temperature=0)
    section = smoke.model_section(host["log"].read_text(errors="replace"), model_file(c, "smol-short")) or ""
    assert r["done"] and "--cache-type-k turbo4" in section and "--context-shift" not in section, r
    print(f"[field] past the context with turbo4: done_reason {r.get('done_reason')}, {r.get('eval_count')} tokens")
    record({"ollama": "main", "fork": builds["main"]["m"]["fork"]["sha"][:9], "backend": "cpu",
            "notes": ["context shift: the fork's llama-server (69d8e4be4, CPU) dies with SIGSEGV shifting a q8_0 or "
                      "turbo4 K cache (f16 K shifts fine; stock llama.cpp b10488 shifts q8_0 and q4_0 K fine): the "
                      "build runs a quantized-K runner without --context-shift; a generation reaching num_ctx "
                      f"ends there ({r.get('done_reason')}, {r.get('eval_count')} tokens) instead of HTTP 500"]})


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
