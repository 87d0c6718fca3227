"""invoke quality with llama.cpp's own llama-perplexity, built from the same sources as the real
llama-server, on SmolLM2; and recommend on what it measured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from ..conftest import bench, invoke

pytestmark = pytest.mark.real


def test_real_quality_q8_0_beats_q4_0_and_recommend_uses_it(real_llama_server: Path, real_model: Path,
                                                            tmp_path: Path) -> None:
    perplexity = real_llama_server.parent / "llama-perplexity"
    assert perplexity.is_file(), "the real build makes llama-perplexity beside llama-server"
    ws, out = tmp_path / "ws", tmp_path / "q"
    t0 = time.perf_counter()
    r = invoke("quality", "--model", str(real_model), "--llama-perplexity", str(perplexity), "--types", "q8_0,q4_0",
               "--ctx", "512", "--chunks", "6", "--out", str(out), env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "quality.json").read_text())
    by = {x["label"]: x for x in report["results"]}
    assert by["q8_0"]["kld"] > 0 and by["q4_0"]["kld"] > 0
    assert by["q8_0"]["kld"] < by["q4_0"]["kld"]
    assert 0 < by["q8_0"]["top1"] <= 1 and 0 < by["q4_0"]["top1"] <= 1
    assert report["corpus"]["evaluated_tokens"]["512"] == 6 * 512
    for name in ("quality.json", "quality.md", "kld_vs_memory.png", "llama-perplexity.log"):
        assert (out / name).is_file()
    bench(f"quality, real llama-perplexity, SmolLM2 (f16 + q8_0 + q4_0, -c 512, 6 chunks): {seconds:.1f} s; "
          + "; ".join(f"{k}: mean KLD {x['kld']:.5f}, 99% {x['kld_p99']:.4f}, top-1 {100 * x['top1']:.1f} %, "
                      f"ΔPPL {x['dppl']:+.3f}" for k, x in by.items()))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {
        "box": {"ssh": "local", "os": "linux", "service": "none", "memory_gib": 2}}}}))
    rec_out = tmp_path / "rec.json"
    r = invoke("-f", str(fleet), "recommend", "--model", str(real_model), "--host", "box", "--ctx", "8k",
               "--reserve-gib", "1", "--json", str(rec_out))
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads(rec_out.read_text())
    opts = {o["config"]: o for o in rec["options"]}
    assert rec["choice"] in [k for k, x in by.items() if x["verdict"] == "PASS"]
    assert opts[rec["choice"]]["quality"] == "PASS"
    assert all(o["reason"] for o in rec["options"]), rec  # the choice says why, every other config why not
