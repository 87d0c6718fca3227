"""invoke recommend: one rule over the labels its table prints (fits, stays on the GPU, passes the gates, decodes
fastest; unmeasured only when nothing is), every reason it prints with its numbers, and the H200 case where a
symmetric pair spelled twice left q8_0 unchoosable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ollama_turbo.core import settings as config
from ollama_turbo.core.kv_types import KVPair, label
from ollama_turbo.prove import offload, quality, recommend
from ollama_turbo.prove.choose import Option, Situation, decide
from ollama_turbo.sample.model import Geometry, write_model

from .conftest import invoke
from .test_offload import log

# SmolLM2-135M: 30 layers, 9 query heads sharing 3 KV heads of 64 values, 8,192 tokens of training context
SMOLLM2 = Geometry(n_layer=30, n_head=9, n_head_kv=3, n_embd=9 * 64, n_ctx_train=8192)
WEIGHTS = int(0.1 * 2**30)
H200_GIB = 141
# the f16 cache stays on the H200's GPU; q8_0-K with turbo4-V at head dim 64 has no CUDA kernel there
ON_GPU = log(31, 31, 2)
OFF_GPU = log(31, 31, 62)


def smollm2(tmp_path: Path) -> Path:
    """A model file of SmolLM2's geometry, 0.1 GiB like its weights (a sparse file)."""
    path = write_model(tmp_path / "models" / "smollm2.gguf", SMOLLM2)
    os.truncate(path, WEIGHTS)
    return path


def measure(ws: Path, model: Path, rows: list[tuple[str, str, str, float, float, str]], tmp: Path) -> None:
    """Record a quality run on a CUDA build the way ``invoke quality`` does: (K, V, verdict, KLD, ΔPPL, log)."""
    results = []
    for k, v, verdict, kld, dppl, text in rows:
        where = offload.placement(text)
        results.append({"label": label(k, v), "ctx": 4096, "kld": kld, "dppl": dppl, "verdict": verdict,
                        **where.to_json(), "cpu_fallback": offload.fallback(where)})
    report = {"model": {"name": model.name, "sha256": quality.model_sha256(ws, model)},
              "build": {"backend": "cuda"}, "results": results}
    path = tmp / "quality.json"
    path.write_text(json.dumps(report))
    quality.record(ws, report, path)


H200_ROWS = [("q8_0", "q8_0", "BORDERLINE", 0.02428, 0.0412, ON_GPU),
             ("q8_0", "turbo4", "BORDERLINE", 0.03403, 0.0598, OFF_GPU),
             ("turbo4", "turbo4", "FAIL", 0.13646, 0.7713, ON_GPU)]


def fleet(tmp_path: Path, ws: Path, memory: float = H200_GIB, os_name: str = "linux") -> Path:
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {
        "h200": {"ssh": "local", "os": os_name, "service": "none", "memory_gib": memory}}}}))
    return f


H200_OUT = """\
recommend: smollm2.gguf on h200 at 8,192 tokens

K/V               KV MiB  fits quality       mean KLD      ΔPPL  decode tok/s  note
q8_0                95.6  yes  BORDERLINE     0.02428   +0.0412             -
q8_0/turbo4         95.6  yes  BORDERLINE     0.03403   +0.0598             -
q8_0/turbo3         83.0  yes  unmeasured           -         -             -
turbo4              95.6  yes  FAIL           0.13646   +0.7713             -
turbo3              70.3  yes  unmeasured           -         -             -
q4_0                50.6  yes  unmeasured           -         -             -
q8_0/turbo2         74.9  yes  unmeasured           -         -             -  configured q8_0/turbo2, the fork \
changes some layers: boundary V: with turbo2 V the fork keeps V of the first 2 and last 2 layers at q8_0 \
(TURBO_LAYER_ADAPTIVE=0 disables)
turbo2              51.0  yes  unmeasured           -         -             -  configured turbo2, the fork changes \
some layers: boundary V: with turbo2 V the fork keeps V of the first 2 and last 2 layers at q8_0 \
(TURBO_LAYER_ADAPTIVE=0 disables)
(stock Ollama's q8_0 and q4_0 are not measured for this model: invoke quality --stock STOCK_DIST tells whether \
it needs a custom build at all)

choice: q8_0 — BORDERLINE: no measured config that fits without a CPU fallback passes the quality gates; q8_0 fits \
(95.6 MiB of the 140,185.6 MiB h200 has for the cache at 8,192 tokens), stays on the GPU (2 graph splits in the \
quality run on the CUDA build) and is within twice the quality gates (mean KLD 0.02428, ΔPPL +0.0412 at ctx 4096); \
not measured yet: q8_0/turbo3, turbo3, q4_0, q8_0/turbo2, turbo2

not chosen:
  q8_0/turbo4: falls back to the CPU on h200 (quality run on the CUDA build): 62 graph splits (31 layers on the \
GPU; a graph that stays there splits a few times at most): the GPU backend has no kernel for some op of this K/V \
config, which runs on the CPU in every layer
  q8_0/turbo3: unmeasured (invoke quality has no verdict of this model with it): not chosen while a config that \
fits without a CPU fallback is measured
  turbo4: fails the quality gate: mean KLD 0.13646, ΔPPL +0.7713 at ctx 4096
  turbo3: unmeasured (invoke quality has no verdict of this model with it): not chosen while a config that \
fits without a CPU fallback is measured
  q4_0: unmeasured (invoke quality has no verdict of this model with it): not chosen while a config that \
fits without a CPU fallback is measured
  q8_0/turbo2: unmeasured (invoke quality has no verdict of this model with it): not chosen while a config that \
fits without a CPU fallback is measured
  turbo2: unmeasured (invoke quality has no verdict of this model with it): not chosen while a config that \
fits without a CPU fallback is measured

# this model's own cache, in its Modelfile (a build with per-model cache types):
PARAMETER kv_cache_type q8_0

# or in the model's spec (modelfiles/<name>.yaml), which renders that line:
kv: q8_0

# or for every model on the host without its own (invoke.yaml):
turbo:
  kv:
    type_k: q8_0
    type_v: q8_0
"""


def test_the_h200_case_picks_q8_0_and_says_why_not_each_other_config(tmp_path: Path) -> None:
    """On the H200, SmolLM2 at 8,192 tokens: every config fits; q8_0 is BORDERLINE and on the GPU, q8_0/turbo4
    BORDERLINE but falling back to the CPU, turbo4 fails. The choice is q8_0, said loudly, and not a memory error."""
    ws, model = tmp_path / "ws", smollm2(tmp_path)
    measure(ws, model, H200_ROWS, tmp_path)
    out = tmp_path / "rec.json"
    r = invoke("-f", str(fleet(tmp_path, ws)), "recommend", "--model", str(model), "--host", "h200", "--ctx", "8192",
               "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == H200_OUT
    rec = json.loads(out.read_text())
    assert (rec["choice"], rec["measured"], rec["next_step"]) == ("q8_0", True, "")
    by = {o["config"]: o for o in rec["options"]}
    assert all(o["fits"] for o in rec["options"]) and by["q8_0/turbo4"]["fallback_source"] == \
        "quality run on the CUDA build"


def test_every_label_the_rule_can_name_is_one_the_table_prints() -> None:
    table = {label(*p) for p in recommend.CANDIDATES}
    for order in (recommend.GUIDANCE, recommend.GUIDANCE_PROTECT_K):
        assert {label(*p) for p in order} <= table
    assert "q8_0" in table and "q8_0/q8_0" not in table


BUDGET = 140_185.6
H200 = Situation("smollm2.gguf", "h200", 8192, BUDGET, ("q8_0/turbo4", "q8_0/turbo3", "q8_0"),
                 "low-bit weights")


def opt(config: str, quality: str = "PASS", kld: float | None = 0.00130, dppl: float | None = 0.0084,
        **kw: Any) -> Option:
    return Option(config, kw.pop("kv_mib", 95.6), kw.pop("fits", True), quality, kld, dppl,
                  None if quality == "unmeasured" else 4096, **kw)


def test_the_fastest_of_those_that_pass_is_chosen_with_its_numbers() -> None:
    opts = [opt("q8_0", decode_tps=310.4, decode_depth=8192, on_gpu="2 graph splits in the bench"),
            opt("turbo4", kld=0.00716, dppl=0.2581, decode_tps=288.0, decode_depth=8192),
            opt("q8_0/turbo4", kld=0.00402, dppl=0.0390),
            opt("turbo3", "BORDERLINE", 0.03120, 0.6120, decode_tps=350.0, decode_depth=8192)]
    d = decide(opts, H200)
    assert d.choice is opts[0] and d.measured and d.why == (
        "fits (95.6 MiB of the 140,185.6 MiB h200 has for the cache at 8,192 tokens), stays on the GPU (2 graph "
        "splits in the bench), passes the quality gates (mean KLD 0.00130, ΔPPL +0.0084 at ctx 4096) and decodes "
        "fastest: 310.4 tok/s at depth 8,192")
    assert [o.reason for o in opts[1:]] == [
        "slower: 288.0 tok/s at depth 8,192, against q8_0's 310.4 tok/s at depth 8,192",
        "not in the bench: its decode speed is unknown (q8_0: 310.4 tok/s at depth 8,192)",
        "BORDERLINE (mean KLD 0.03120, ΔPPL +0.6120 at ctx 4096) while q8_0 passes"]


def test_without_a_bench_the_lowest_kld_of_those_that_pass_is_chosen() -> None:
    opts = [opt("turbo4", kld=0.00716, dppl=0.2581), opt("q8_0")]
    d = decide(opts, H200)
    assert d.choice is opts[1] and d.why.endswith(
        "passes the quality gates (mean KLD 0.00130, ΔPPL +0.0084 at ctx 4096) and has the lowest mean KLD "
        "(no bench given)")
    assert opts[0].reason == ("higher mean KLD than q8_0 (0.00716 against 0.00130); no bench to compare decode "
                              "speed")


def test_stock_ollama_that_passes_needs_no_custom_build_and_turbo_says_what_it_would_buy() -> None:
    opts = [opt("stock q8_0", kld=0.00120, dppl=0.0070, max_ctx=1_712_128),
            opt("stock q4_0", "FAIL", 0.04810, 0.9120, max_ctx=3_226_624),
            opt("turbo4", kld=0.00716, dppl=0.2581, max_ctx=3_425_280),
            opt("q8_0/turbo4", kld=0.00402, dppl=0.0390, max_ctx=2_244_608)]
    d = decide(opts, H200)
    assert d.choice is opts[0] and d.why == (
        "stock q8_0 fits (95.6 MiB of the 140,185.6 MiB h200 has for the cache at 8,192 tokens) and passes the "
        "quality gates (mean KLD 0.00120, ΔPPL +0.0070 at ctx 4096): no custom build needed for this model on h200 "
        "at 8,192 tokens; turbo4 gives 2.0x the context of stock q8_0 on this "
        "host (3,425,280 tokens against 1,712,128) at mean KLD 0.00716, ΔPPL +0.2581 at ctx 4096")
    assert opts[1].reason == "fails the quality gate: mean KLD 0.04810, ΔPPL +0.9120 at ctx 4096"
    assert opts[3].reason.startswith("passes too, but needs the custom build, and stock q8_0 needs none; q8_0/turbo4 "
                                     "gives 1.3x the context of stock q8_0")


def test_a_custom_config_chosen_over_stock_says_it_needs_the_custom_build() -> None:
    opts = [opt("stock q8_0", "BORDERLINE", 0.02428, 0.0412), opt("turbo4", kld=0.00716, dppl=0.2581)]
    d = decide(opts, H200)
    assert d.choice is opts[1] and d.why.endswith(
        "; it needs the custom build (stock Ollama's: stock q8_0 BORDERLINE (mean KLD 0.02428, ΔPPL +0.0412 at ctx "
        "4096) while turbo4 passes)")


def test_a_config_that_does_not_fit_says_what_it_needs_and_the_budget() -> None:
    small = Situation("m.gguf", "mac", 131072, 1_536.0, H200.guidance)
    opts = [opt("q8_0", kv_mib=2_040.0, fits=False), opt("turbo4", kv_mib=1_088.0, kld=0.00716, dppl=0.2581)]
    d = decide(opts, small)
    assert d.choice is opts[1]
    assert opts[0].reason == "does not fit: needs 2,040.0 MiB at 131,072 tokens; mac has 1,536.0 MiB for the cache"


def test_nothing_fits_names_the_smallest_and_each_config() -> None:
    small = Situation("m.gguf", "mac", 131072, 512.0, H200.guidance)
    d = decide([opt("q8_0", kv_mib=2_040.0, fits=False), opt("turbo2", kv_mib=1_020.0, fits=False)], small)
    assert d.choice is None and d.why == (
        "no config fits mac at 131,072 tokens: the smallest, turbo2, needs 1,020.0 MiB and mac has 512.0 MiB for "
        "the cache:\n"
        "    q8_0: does not fit: needs 2,040.0 MiB at 131,072 tokens; mac has 512.0 MiB for the cache\n"
        "    turbo2: does not fit: needs 1,020.0 MiB at 131,072 tokens; mac has 512.0 MiB for the cache")
    assert d.next_step == "choose a shorter --ctx, a smaller model or a host with more memory"


def test_when_memory_is_fine_the_refusal_names_the_gate_and_the_fallback_not_memory() -> None:
    opts = [opt("q8_0", "FAIL", 0.04812, 1.2040),
            opt("q8_0/turbo4", "PASS", 0.00402, 0.0390, cpu_fallback="CPU fallback: 62 graph splits (the f16 "
                "cache: 2): the GPU backend has no kernel for some op of this K/V config, which runs on the CPU in "
                "every layer", fallback_source="bench"),
            opt("turbo4", "FAIL", 0.13646, 0.7713)]
    d = decide(opts, H200)
    assert d.choice is None and d.why == (
        "no K/V config may be chosen for smollm2.gguf on h200 at 8,192 tokens:\n"
        "    q8_0: fails the quality gate: mean KLD 0.04812, ΔPPL +1.2040 at ctx 4096\n"
        "    q8_0/turbo4: falls back to the CPU on h200 (bench): 62 graph splits (the f16 cache: 2): the GPU backend "
        "has no kernel for some op of this K/V config, which runs on the CPU in every layer\n"
        "    turbo4: fails the quality gate: mean KLD 0.13646, ΔPPL +0.7713 at ctx 4096")
    assert "fit" not in d.next_step and d.next_step == (
        "keep this model on the f16 cache (leave kv: out of its spec), or, if the gates are stricter than your own "
        "criterion, measure again with --max-kld and --max-dppl")


def test_unmeasured_configs_wait_while_a_measured_one_could_run_and_are_named_when_none_may() -> None:
    opts = [opt("turbo4", "FAIL", 0.13646, 0.7713), opt("q8_0/turbo4", "unmeasured", None, None)]
    d = decide(opts, H200)
    assert d.choice is None
    assert opts[1].reason == ("unmeasured (invoke quality has no verdict of this model with it): not chosen "
                              "while a config that fits without a CPU fallback is measured")
    assert d.next_step == (
        "measure the configs that fit without a CPU fallback: invoke quality --model smollm2.gguf --types q8_0/turbo4 "
        "--manifest <dist>; or keep this model on the f16 cache (leave kv: out of its spec), or, if the gates are "
        "stricter than your own criterion, measure again with --max-kld and --max-dppl")


def test_with_nothing_measured_the_field_guidance_picks_among_those_that_fit_on_the_gpu() -> None:
    fell = "CPU fallback: 62 graph splits (the f16 cache: 2): the GPU backend has no kernel for some op"
    opts = [opt("q8_0", "unmeasured", None, None),
            opt("q8_0/turbo4", "unmeasured", None, None, cpu_fallback=fell, fallback_source="bench"),
            opt("q8_0/turbo3", "unmeasured", None, None, kv_mib=87.2), opt("turbo2", "unmeasured", None, None)]
    d = decide(opts, H200)
    assert d.choice is opts[2] and not d.measured and d.why == (
        "UNMEASURED: no config of this model that fits without a CPU fallback has been measured by invoke quality "
        "yet; the field's guidance (low-bit weights) protects K with q8_0: q8_0/turbo4, q8_0/turbo3, q8_0; "
        "q8_0/turbo3 is the first of those that fits without one (87.2 MiB at 8,192 tokens). Measure it: invoke "
        "quality --model smollm2.gguf")
    assert [o.reason for o in opts] == [
        "unmeasured; the field's guidance for this model puts q8_0/turbo3 before it",
        "falls back to the CPU on h200 (bench): 62 graph splits (the f16 cache: 2): the GPU backend has no kernel "
        "for some op",
        "UNMEASURED: fits (87.2 MiB of the 140,185.6 MiB h200 has for the cache at 8,192 tokens); the field's "
        "guidance (low-bit weights) protects K with q8_0: q8_0/turbo4, q8_0/turbo3, q8_0; the first of those that "
        "fits without a CPU fallback",
        "unmeasured, and not in the field's guidance for this model (q8_0/turbo4, q8_0/turbo3, q8_0)"]


def test_when_everything_that_fits_falls_back_the_next_step_says_so() -> None:
    fell = "CPU fallback: 62 graph splits (the f16 cache: 2)"
    opts = [opt(c, "unmeasured", None, None, cpu_fallback=fell, fallback_source="bench") for c in ("q8_0", "turbo4")]
    d = decide(opts, H200)
    assert d.choice is None and d.next_step == (
        "keep this model on the f16 cache on h200 (leave kv: out of its spec): every config that fits falls back "
        "to the CPU there")
    assert d.why.endswith("\n    turbo4: falls back to the CPU on h200 (bench): 62 graph splits (the f16 cache: 2)")


def test_a_bench_from_the_host_decides_speed_and_fallback_by_the_one_label(tmp_path: Path) -> None:
    ws, model = tmp_path / "ws", smollm2(tmp_path)
    measure(ws, model, [("q8_0", "q8_0", "PASS", 0.00130, 0.0084, ON_GPU),
                        ("turbo4", "turbo4", "PASS", 0.00716, 0.2581, ON_GPU),
                        ("q8_0", "turbo4", "PASS", 0.00402, 0.0390, ON_GPU)], tmp_path)
    s = config.parse({"workspace": str(ws), "hosts": {"h200": {"os": "linux", "memory_gib": H200_GIB}}})

    def result(k: str, v: str, tps: float, **extra: Any) -> dict[str, Any]:
        return {"label": f"{k}/{v}", "type_k": k, "type_v": v,
                "perf": [{"depth": 0, "decode_tps": {"mean": tps + 40}}, {"depth": 8192, "decode_tps": {"mean": tps}}],
                **extra}

    bench = {"results": [result("q8_0", "q8_0", 301.2, placement={"graph_splits": 2, "gpu_layers": [31, 31]}),
                         result("turbo4", "turbo4", 288.9),
                         result("q8_0", "turbo4", 41.7, cpu_fallback="CPU fallback: 62 graph splits (the f16 cache: "
                                "2): the GPU backend has no kernel for some op of this K/V config, which runs on the "
                                "CPU in every layer")]}
    r = recommend.recommend(s, model, "h200", 8192, bench=bench)
    by = {o.config: o for o in r.options}
    assert r.choice == "q8_0" and r.why.endswith(
        "stays on the GPU (2 graph splits in the bench), passes the quality gates (mean KLD 0.00130, ΔPPL +0.0084 "
        "at ctx 4096) and decodes fastest: 301.2 tok/s at depth 8,192")
    assert by["turbo4"].reason == "slower: 288.9 tok/s at depth 8,192, against q8_0's 301.2 tok/s at depth 8,192"
    assert by["q8_0/turbo4"].reason.startswith("falls back to the CPU on h200 (bench): 62 graph splits (the f16 "
                                               "cache: 2)")


def test_a_quality_run_on_a_cuda_build_speaks_for_a_linux_host_only(tmp_path: Path) -> None:
    ws, model = tmp_path / "ws", smollm2(tmp_path)
    measure(ws, model, H200_ROWS, tmp_path)
    s = config.parse({"workspace": str(ws), "hosts": {"mac": {"os": "darwin", "memory_gib": 64}}})
    r = recommend.recommend(s, model, "mac", 8192)
    by = {o.config: o for o in r.options}
    assert by["q8_0/turbo4"].cpu_fallback is None and by["q8_0"].on_gpu is None
    # both BORDERLINE, no bench: the lower mean KLD
    assert r.choice == "q8_0" and by["q8_0/turbo4"].reason == ("higher mean KLD than q8_0 (0.03403 against 0.02428); "
                                                               "no bench to compare decode speed")


def test_refused_recommend_exits_1_naming_each_reason_and_a_next_step(tmp_path: Path) -> None:
    ws, model = tmp_path / "ws", smollm2(tmp_path)
    measure(ws, model, [(k, v, "FAIL", 0.13646, 0.7713, ON_GPU) for k, v in recommend.CANDIDATES], tmp_path)
    r = invoke("-f", str(fleet(tmp_path, ws)), "recommend", "--model", str(model), "--host", "h200", "--ctx", "8192")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: no K/V config may be chosen for {model} on h200 at 8,192 tokens:\n"
                               "    q8_0: fails the quality gate: mean KLD 0.13646, ΔPPL +0.7713 at ctx 4096\n")
    assert r.stderr.endswith("  next step: keep this model on the f16 cache (leave kv: out of its spec), or, if the "
                             "gates are stricter than your own criterion, measure again with --max-kld and "
                             "--max-dppl\n")
    assert "no config fits" not in r.stderr and "choice" not in r.stdout
    r = invoke("-f", str(fleet(tmp_path, ws, memory=4.14)), "recommend", "--model", str(model), "--host", "h200",
               "--ctx", "8192")
    assert r.returncode == 1 and r.stderr.startswith(
        "error: no config fits h200 at 8,192 tokens: the smallest, q4_0, needs 50.6 MiB and h200 has 41.0 MiB for the "
        "cache:\n")


@pytest.mark.parametrize("rows", [
    [("BORDERLINE", 0.03120, 0.6120, 512), ("PASS", 0.00716, 0.2581, 4096)],
    [("PASS", 0.00716, 0.2581, 512), ("BORDERLINE", 0.03120, 0.6120, 4096)],
])
def test_the_index_keeps_the_numbers_of_the_context_that_decided_the_verdict(tmp_path: Path,
                                                                             rows: list[tuple]) -> None:
    report = {"model": {"name": "m", "sha256": "ab"}, "build": {"backend": "cuda"},
              "results": [{"label": "turbo4", "verdict": v, "kld": kld, "dppl": dppl, "ctx": ctx}
                          for v, kld, dppl, ctx in rows]}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(report))
    quality.record(tmp_path / "ws", report, path)
    found = quality.verdict_for(tmp_path / "ws", "ab", KVPair("turbo4", "turbo4"))
    assert found is not None
    assert (found["verdict"], found["kld"], found["dppl"], found["ctx"]) == ("BORDERLINE", 0.03120, 0.6120, rows[[
        r[0] for r in rows].index("BORDERLINE")][3])
