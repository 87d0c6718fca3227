"""The header model and diff on real llama.cpp headers (llama-cpp-python 0.3.16 -> 0.3.36)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ollama_turbo.check import apidiff
from ollama_turbo.core import capi, sources

from ..conftest import bench

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_diff(real_llama_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = sources.open_source("upstream", str(real_llama_repo), "v0.3.16", tmp_path_factory.mktemp("ws"))
    old_dir = repo.export(tmp_path_factory.mktemp("old"), ["include", "ggml/include"])
    t0 = time.perf_counter()
    old = capi.parse([old_dir / "include", old_dir / "ggml/include"])
    new = capi.parse([real_llama_repo / "include", real_llama_repo / "ggml/include"])
    changes = apidiff.diff(old, new)
    seconds = time.perf_counter() - t0
    bench(f"api-check C API parse + diff, real llama.cpp 0.3.16 -> 0.3.36: {seconds:.2f} s "
          f"({len(old.functions)} -> {len(new.functions)} functions, {len(changes)} changes; target < 1 s)")
    return {"old": old, "new": new, "changes": changes}


def find(changes: list[apidiff.Change], kind: str, symbol: str) -> apidiff.Change:
    hits = [c for c in changes if c.kind == kind and c.symbol == symbol]
    assert hits, f"{kind} {symbol} not reported"
    return hits[0]


def test_changes_verified_by_hand(real_diff: dict) -> None:
    ch = real_diff["changes"]
    # llama_get_kv_self (deprecated in 0.3.16) is gone in 0.3.36
    assert find(ch, "function_removed", "llama_get_kv_self").severity == "incompatible"
    assert find(ch, "function_added", "llama_n_ctx_seq").severity == "review"
    # three ggml types appended after MXFP4 = 39: NVFP4 = 40, Q1_0 = 41, Q2_0 = 42
    for name in ("GGML_TYPE_NVFP4", "GGML_TYPE_Q1_0", "GGML_TYPE_Q2_0"):
        c = find(ch, "enum_constant_added", name)
        assert c.severity == "review" and "appended at the end" in c.detail
    count = find(ch, "enum_count_changed", "GGML_TYPE_COUNT")
    assert count.severity == "review" and count.detail == "GGML_TYPE_COUNT 40 -> 43"
    # ops inserted mid-enum shift the ones after them
    cumsum = find(ch, "enum_insert", "GGML_OP_CUMSUM")
    assert cumsum.severity == "incompatible" and "GGML_OP_MEAN" in cumsum.related
    assert not [c for c in ch if c.kind == "enum_value_changed" and c.symbol == "GGML_OP_MEAN"]
    # llama_context_params was reshaped (flash_attn became flash_attn_type, ...)
    ctx = find(ch, "record_layout", "llama_context_params")
    assert ctx.severity == "incompatible" and "size 120 -> 160" in ctx.detail


def test_unchanged_structs_are_not_reported(real_diff: dict) -> None:
    old, new = real_diff["old"], real_diff["new"]
    reported = {c.symbol for c in real_diff["changes"] if c.kind == "record_layout"}
    for name in ("ggml_init_params", "llama_token_data", "llama_token_data_array"):
        assert old.records[name].size == new.records[name].size
        assert name not in reported


def test_layouts_differ_by_target(real_llama_repo: Path) -> None:
    dirs = [real_llama_repo / "include", real_llama_repo / "ggml/include"]
    mac = capi.parse(dirs, target="arm64-apple-macos")
    linux = capi.parse(dirs, target="x86_64-linux-gnu")
    assert mac.records["ggml_init_params"].size == linux.records["ggml_init_params"].size == 24
    assert set(mac.functions) == set(linux.functions)
    assert mac.to_json()["functions"]["llama_backend_init"]["result"] == "void"
