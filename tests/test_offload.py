"""CPU fallback as a finding: graph splits read from a server's log, flagged against the f16 cache, and kept
out of a recommendation; the pieces of the GPU run that are pure logic (parallel sequences, llama-bench's
records, per-sequence KV lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo.core import settings as config
from ollama_turbo.prove import bench, bench_report, llama_bench, offload, recommend
from ollama_turbo.prove.server_log import kv_lines
from ollama_turbo.sample.model import write_model


def log(layers: int, offloaded: int, splits: int) -> str:
    """A server log's lines about one model load, in llama.cpp's words."""
    return (f"load_tensors: offloaded {offloaded}/{layers} layers to GPU\n"
            f"llama_context: n_seq_max = 4\nsched_reserve: graph splits = {splits}\n")


def test_placement_reads_the_last_model_load() -> None:
    p = offload.placement(log(17, 17, 2) + log(31, 31, 62))
    assert p.splits == 62 and p.layers == (31, 31) and p.on_gpu
    assert offload.placement("llama_context: graph splits = 512 (with bs=512), 3 (with bs=1)\n").splits == 512
    assert offload.placement("no such lines\n") == offload.Placement(None, None)


@pytest.mark.parametrize(("text", "reference", "flagged"), [
    (log(31, 31, 62), None, True),     # a split per layer: an op of every layer left the GPU
    (log(31, 31, 2), None, False),
    (log(17, 17, 10), 2, True),        # above the f16 cache's 2 on the same server
    (log(17, 17, 2), 2, False),
    (log(17, 17, 16), None, False),    # fewer splits than layers, nothing to compare with: not claimed
    (log(31, 0, 62), None, False),     # nothing on a GPU: nothing to fall back from
    ("sched_reserve: graph splits = 1\n", None, False),  # a CPU host
])
def test_fallback_is_flagged_only_with_evidence(text: str, reference: int | None, flagged: bool) -> None:
    why = offload.fallback(offload.placement(text), reference)
    assert (why is not None) == flagged
    if why:
        assert why.startswith("CPU fallback: ") and "graph splits" in why


def test_a_bench_report_flags_the_configs_above_the_f16_cache() -> None:
    report = {"results": [
        {"label": "f16", "placement": {"graph_splits": 2, "gpu_layers": [17, 17]}},
        {"label": "turbo2", "placement": {"graph_splits": 10, "gpu_layers": [17, 17]}},
        {"label": "turbo4", "placement": {"graph_splits": 2, "gpu_layers": [17, 17]}},
        {"label": "q8_0", "error": "did not start"},
    ]}
    bench.flag_fallbacks(report)
    flags = {r["label"]: r.get("cpu_fallback") for r in report["results"]}
    assert flags["f16"] is None and flags["turbo4"] is None and "q8_0" not in [k for k, v in flags.items() if v]
    assert flags["turbo2"] == ("CPU fallback: 10 graph splits (the f16 cache: 2): the GPU backend has no kernel "
                               "for some op of this K/V config, which runs on the CPU in every layer")
    assert "## CPU fallback" in bench_report.markdown({**report, "provenance": {}, "options": {"prefill_tokens": 512}})


def test_recommend_never_picks_a_config_that_falls_back_on_the_host(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf")
    s = config.parse({"workspace": str(tmp_path / "ws"), "hosts": {"box": {"os": "linux", "memory_gib": 64}}})
    fast = {"label": "q8_0/turbo4", "perf": [{"depth": 4096, "decode_tps": {"mean": 900.0}}],
            "cpu_fallback": "CPU fallback: 62 graph splits (the f16 cache: 2)"}
    slow = {"label": "q8_0", "perf": [{"depth": 4096, "decode_tps": {"mean": 300.0}}]}
    from ollama_turbo.prove import quality

    sha = quality.model_sha256(s.workspace, model)
    index = {sha: {"name": "m", "configs": {c: {"verdict": "PASS", "kld": 0.01, "dppl": 0.1, "ctx": 512}
                                            for c in ("q8_0/turbo4", "q8_0")}}}
    (s.workspace / "quality").mkdir(parents=True, exist_ok=True)
    (s.workspace / "quality" / "index.json").write_text(json.dumps(index))
    r = recommend.recommend(s, model, "box", 4096, bench={"results": [fast, slow]})
    assert r.choice == "q8_0"
    fell = next(o for o in r.options if o.config == "q8_0/turbo4")
    assert fell.cpu_fallback and fell.reason.startswith("falls back to the CPU on box (bench): 62 graph splits")


def test_the_hosts_parallel_sequences_are_read_once_with_the_settings() -> None:
    from ollama_turbo.core import settings as config
    from ollama_turbo.core.errors import ConfigError

    assert config.parse({}).kv.parallel == 1
    assert config.parse({"kv": {"env": {"OLLAMA_NUM_PARALLEL": 4}}}).kv.parallel == 4
    with pytest.raises(ConfigError, match="OLLAMA_NUM_PARALLEL \\(in settings\\): 'four' is not a number of sequences"):
        config.parse({"kv": {"env": {"OLLAMA_NUM_PARALLEL": "four"}}})


def test_llama_bench_records_become_prefill_and_decode_per_depth() -> None:
    records = [
        {"n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": 1000.0, "stddev_ts": 10.0},
        {"n_prompt": 0, "n_gen": 32, "n_depth": 0, "avg_ts": 90.0, "stddev_ts": 1.0},
        {"n_prompt": 512, "n_gen": 0, "n_depth": 8192, "avg_ts": 700.0, "stddev_ts": 5.0},
        {"n_prompt": 0, "n_gen": 32, "n_depth": 8192, "avg_ts": 60.0, "stddev_ts": 2.0},
    ]
    out = llama_bench.parse("main: some log line\n" + json.dumps(records))
    assert out == {"prefill_tps": {"mean": 1000.0, "sd": 10.0},
                   "decode_tps": {"0": {"mean": 90.0, "sd": 1.0}, "8192": {"mean": 60.0, "sd": 2.0}}}
    report = {"options": {"prefill_tokens": 512, "n_predict": 32}, "llama_bench": {"f16": out},
              "results": [{"label": "f16", "prefill": {"prefill_tps": {"mean": 1100.0}},
                           "perf": [{"depth": 8192, "decode_tps": {"mean": 54.0}}]}]}
    table = "\n".join(llama_bench.markdown(report))
    assert "| f16 | pp512 | 1,100.0 | 1,000.0 | +10.0% |" in table
    assert "| f16 | tg32 @ 8192 | 54.0 | 60.0 | -10.0% |" in table


def test_a_kv_line_of_a_cache_per_sequence_counts_its_sequences() -> None:
    lines = kv_lines("llama_kv_cache: size = 1360.00 MiB ( 40960 cells,  16 layers,  4/4 seqs), "
                     "K (turbo4):  680.00 MiB, V (turbo4):  680.00 MiB\n"
                     "llama_kv_cache: size =   12.00 MiB (  2048 cells,   4 layers), K (f16):   6.00 MiB, "
                     "V (f16):   6.00 MiB\n"
                     "llama_kv_cache: size =  340.00 MiB ( 40960 cells,  16 layers,  4/1 seqs), "
                     "K (turbo4):  170.00 MiB, V (turbo4):  170.00 MiB\n")
    # n_seq_max/n_stream: four sequences in one unified cache is one cache
    assert [(x.cells, x.seqs, x.mib) for x in lines] == [(40960, 4, 1360.0), (2048, 1, 12.0), (40960, 1, 340.0)]
