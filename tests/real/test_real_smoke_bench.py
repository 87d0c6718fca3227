"""smoke and bench against a real llama-server with the real SmolLM2 model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ollama_turbo.prove import smoke

from ..conftest import bench, invoke
from ..real_assets import RealServer

pytestmark = pytest.mark.real


@pytest.mark.parametrize("cache_type", ["f16", "q8_0", "q4_0"])
def test_smoke_detects_the_cache_type_and_reports_true_speed(
        real_servers: Callable[[str], RealServer], cache_type: str) -> None:
    server = real_servers(cache_type)
    t0 = time.perf_counter()
    r = smoke.smoke_llama_server(server.url, expect=smoke.Expect(type_k=cache_type, type_v=cache_type),
                                 log=server.log_text)
    wall = time.perf_counter() - t0
    bench(f"smoke against the real llama-server ({cache_type}): {wall:.2f} s (target under 10 s)")
    assert r.ok, r.render()
    cache = next(c for c in r.checks if c.name == "cache type")
    assert cache.ok and f"K ({cache_type}) V ({cache_type})" in cache.evidence
    ours, theirs = r.metrics["decode_tps"], r.metrics["server_decode_tps"]
    assert ours > 0 and abs(ours - theirs) / theirs < 0.05
    # measured independently on the client from the stream's arrival times: printed, never asserted
    # (a loaded machine slows the client and the server differently)
    assert r.metrics["client_decode_tps"] > 0
    bench(f"smoke decode rate ({cache_type}): client {r.metrics['client_decode_tps']:.1f} tok/s, server "
          f"{theirs:.1f} tok/s ({(r.metrics['client_decode_tps'] - theirs) / theirs:+.0%})")
    # the wrong expectation is caught
    wrong = smoke.smoke_llama_server(server.url, expect=smoke.Expect(type_k="turbo4", type_v="turbo4"),
                                     log=server.log_text)
    assert wrong.failed == ["cache type"]


def test_bench_on_the_real_server(real_llama_server: Path, real_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    t0 = time.perf_counter()
    r = invoke("bench", "--llama-server", str(real_llama_server), "--gguf", str(real_model),
               "--types", "f16,q8_0,q4_0", "--depths", "0,256", "--reps", "2", "--n-predict", "16",
               "--niah-lengths", "1024", "--niah-depths", "0.5", "--ab-predict", "16", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    report = json.loads((out / "bench.json").read_text())
    results = {x["label"]: x for x in report["results"]}
    assert list(results) == ["f16", "q8_0", "q4_0"]
    for label, x in results.items():
        kv = x["kv"]
        assert kv["logged_types"] == [label, label]
        assert abs(kv["delta"]) < 0.01, kv
        assert [p["depth"] for p in x["perf"]] == [0, 256]
        assert all(p["decode_tps"]["mean"] > 0 and p["prefill_tps"]["mean"] > 0 for p in x["perf"])
        # the real tokenizer counts the depth: SmolLM2's is not 4 characters per token
        assert abs(x["perf"][1]["actual_depth"] - 256) <= 4, x["perf"][1]
        assert abs(x["prefill"]["tokens"] - 512) <= 4 and x["prefill"]["prefill_tps"]["mean"] > 0
    depths = "; ".join(f"{label} asked 256 actual {x['perf'][1]['actual_depth']}, pp512 actual "
                       f"{x['prefill']['tokens']}" for label, x in results.items())
    bench(f"bench depth, real llama-server with SmolLM2: {depths}")
    for x in results.values():
        assert len(x["ab"]) == 10 and x["itl_ms"]["p50"] > 0
    assert results["f16"]["niah"][0]["found"], results["f16"]["niah"]
    assert (out / "report.md").read_text().startswith("# ollama-turbo bench")
    for png in ("tps_vs_depth.png", "niah.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "ab").glob("*/f16.txt"))) == 10
    overhead = [x["client_overhead"] for x in results.values()]
    bench(f"bench on the real server (3 types): {time.perf_counter() - t0:.1f} s; client-side decode rate "
          f"differs from the server's own timings by {', '.join(f'{o:+.1%}' for o in overhead)}")
