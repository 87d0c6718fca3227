from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from ollama_turbo.core.errors import UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.sizes import parse_sizes
from ollama_turbo.fork import cache_types
from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.fork.cache_types import KVMemError
from ollama_turbo.kv import geometry, memory, plan
from ollama_turbo.kv.geometry import Geometry
from ollama_turbo.kv.memory import estimate

UNIFORM = ForkBehaviour(layer_adaptive=0)


@pytest.mark.parametrize(("cache", "mib"), [
    ("f16", 5120), ("q8_0", 2720), ("q4_0", 1440), ("turbo4", 1360), ("turbo3", 1000), ("turbo2", 680),
])
def test_published_figure(cache: str, mib: int) -> None:
    geo = Geometry.simple(40, 8, 128)
    assert estimate(geo, 32768, cache, fb=UNIFORM).mib == mib


def test_turbo4_saves_73_44_percent_over_f16() -> None:
    geo = Geometry.simple(40, 8, 128)
    f16, t4 = estimate(geo, 32768, "f16").total_bytes, estimate(geo, 32768, "turbo4").total_bytes
    assert round(1 - t4 / f16, 4) == 0.7344


def test_boundary_v_is_on_by_default_for_turbo2_v() -> None:
    geo = Geometry.simple(40, 8, 128)
    est = estimate(geo, 32768, "turbo2")
    # 36 layers turbo2 V (8.5 MiB) + 4 layers q8_0 V (34 MiB) + 40 layers turbo2 K (8.5 MiB)
    assert est.mib == 36 * 8.5 + 4 * 34 + 40 * 8.5 == 782
    assert [x.type_v for x in est.layers[:3]] == ["q8_0", "q8_0", "turbo2"]
    assert est.layers[-2].type_v == "q8_0"
    assert any("boundary V" in n for n in est.notes)
    # fewer than 8 layers: the fork leaves it off
    assert all(x.type_v == "turbo2" for x in estimate(Geometry.simple(6, 8, 128), 1024, "turbo2").layers)


@pytest.mark.parametrize(("mode", "k_q8", "v_types"), [
    (1, [0, 1, 2, 3, 12, 13, 14, 15], None),
    (2, list(range(8, 16)), None),
    (5, [], {0: "turbo4", 1: "turbo4", 2: "turbo2", 13: "turbo2", 14: "turbo4", 15: "turbo4"}),
    (6, [], {0: "turbo2", 7: "turbo2", 8: "turbo4", 15: "turbo4"}),
    (7, [], {0: "q8_0", 1: "q8_0", 2: "turbo2", 14: "q8_0"}),
])
def test_layer_adaptive_modes(mode: int, k_q8: list[int], v_types: dict[int, str] | None) -> None:
    geo = Geometry.simple(16, 8, 128)
    est = estimate(geo, 1024, "turbo3", fb=ForkBehaviour(layer_adaptive=mode))
    assert [x.layer for x in est.layers if x.type_k == "q8_0"] == k_q8
    for il, t in (v_types or {}).items():
        assert est.layers[il].type_v == t
    if mode in (1, 2):
        assert all(x.type_v == "q8_0" for x in est.layers if x.layer in k_q8)


def test_layer_adaptive_from_env_and_bad_values() -> None:
    assert ForkBehaviour.from_env({"TURBO_LAYER_ADAPTIVE": "7"}).layer_adaptive == 7
    assert ForkBehaviour.from_env({}).layer_adaptive is None
    assert ForkBehaviour.from_env({"TURBO_AUTO_ASYMMETRIC": "0"}).auto_asymmetric is False
    with pytest.raises(UsageError):
        ForkBehaviour.from_env({"TURBO_LAYER_ADAPTIVE": "x"})
    with pytest.raises(UsageError, match="not one of"):
        estimate(Geometry.simple(16, 8, 128), 1024, "turbo3", fb=ForkBehaviour(layer_adaptive=3))


def test_auto_asymmetric_promotes_k_for_large_gqa() -> None:
    big = Geometry.simple(8, 4, 128, heads=24)   # 6 query heads per KV head
    small = Geometry.simple(8, 4, 128, heads=16)  # 4
    est = estimate(big, 1024, "turbo4", fb=UNIFORM)
    assert {x.type_k for x in est.layers} == {"q8_0"} and {x.type_v for x in est.layers} == {"turbo4"}
    assert {x.type_k for x in estimate(small, 1024, "turbo4", fb=UNIFORM).layers} == {"turbo4"}
    off = ForkBehaviour(auto_asymmetric=False, layer_adaptive=0)
    assert {x.type_k for x in estimate(big, 1024, "turbo4", fb=off).layers} == {"turbo4"}
    # only when K and V are the same turbo type
    assert {x.type_k for x in estimate(big, 1024, "turbo4", "turbo3", fb=UNIFORM).layers} == {"turbo4"}


@pytest.mark.parametrize(("head_dim", "padded"), [(64, 128), (192, 256), (128, 128), (256, 256)])
def test_turbo_pads_heads_to_128(head_dim: int, padded: int) -> None:
    geo = Geometry.simple(2, 2, head_dim)
    est = estimate(geo, 1000, "turbo4", fb=UNIFORM)
    assert est.k_bytes == 2 * 1000 * (2 * padded // 128 * 68)
    if head_dim % 128:
        assert any("zero-padding" in n for n in est.notes)
        with pytest.raises(KVMemError, match="multiple of 128"):
            estimate(geo, 1000, "turbo4", fb=ForkBehaviour.none())
    else:
        assert estimate(geo, 1000, "turbo4", fb=ForkBehaviour.none()).total_bytes == est.total_bytes


def test_quantized_types_need_block_aligned_heads() -> None:
    with pytest.raises(KVMemError, match="multiple of 32"):
        estimate(Geometry.simple(2, 2, 80), 1024, "q8_0")
    assert estimate(Geometry.simple(2, 2, 80), 1024, "f16").total_bytes == 2 * 1024 * 2 * 80 * 2 * 2


def test_gqa_and_per_layer_kv_heads() -> None:
    geo = Geometry(n_layer=4, n_head_kv=(8, 2, 0, 4), n_head=(32,) * 4, head_dim_k=128, head_dim_v=128)
    est = estimate(geo, 1024, "f16")
    assert [x.layer for x in est.layers] == [0, 1, 3]  # a layer without KV heads has no cache
    assert est.total_bytes == (8 + 2 + 4) * 128 * 2 * 2 * 1024


def test_sliding_window_layers_are_capped() -> None:
    geo = Geometry(n_layer=6, n_head_kv=(4,) * 6, n_head=(8,) * 6, head_dim_k=128, head_dim_v=128,
                   swa_layers=(True, True, False, True, True, False), sliding_window=1024)
    est = estimate(geo, 32768, "f16")
    cells = [x.cells for x in est.layers]
    assert cells == [1536, 1536, 32768, 1536, 1536, 32768]  # window + one ubatch, padded to 256
    assert estimate(geo, 1024, "f16").layers[0].cells == 1024


def test_max_context_rounds_down_to_1024() -> None:
    geo = Geometry.simple(40, 8, 128)
    budget = 5120 * cache_types.MIB  # exactly f16 at 32768
    assert memory.max_context(geo, budget, "f16") == 32768
    assert memory.max_context(geo, budget - 1, "f16") == 31744
    assert memory.max_context(geo, budget, "turbo4") == 122880  # 5120 MiB / 42.5 KiB per token
    assert memory.max_context(geo, 10, "f16") == 0


def test_pairs_and_bad_names() -> None:
    assert tuple(cache_types.parse_pair("q8_0/turbo4")) == ("q8_0", "turbo4")
    assert cache_types.parse_pair("Turbo3").label == "turbo3"
    with pytest.raises(UsageError, match="unknown cache type 'turbo5'"):
        cache_types.parse_pair("turbo5")
    with pytest.raises(UsageError, match="is not a number"):
        parse_sizes("8k,lots", option="--ctx")
    assert parse_sizes("8k, 32768", option="--ctx") == [8192, 32768]


def write_gguf(path: Path, arch: str = "llama", **kv: object) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        full = f"{arch}.{key.replace('__', '.')}"
        if isinstance(value, list):
            w.add_array(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        else:
            w.add_uint32(full, int(value))  # type: ignore[call-overload]
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_geometry_from_a_gguf_with_per_layer_heads_and_swa(tmp_path: Path) -> None:
    p = write_gguf(tmp_path / "m.gguf", arch="gemma3", block_count=6, context_length=131072,
                   embedding_length=1152, attention__head_count=4,
                   attention__head_count_kv=[1, 1, 2, 1, 1, 2], attention__key_length=256,
                   attention__value_length=256, attention__sliding_window=512,
                   attention__sliding_window_pattern=3)
    geo = geometry.geometry_from_gguf(p)
    assert geo.n_layer == 6 and geo.n_head_kv == (1, 1, 2, 1, 1, 2)
    assert (geo.head_dim_k, geo.head_dim_v, geo.n_ctx_train) == (256, 256, 131072)
    assert geo.swa_layers == (True, True, False, True, True, False) and geo.sliding_window == 512
    assert geo.weights_bytes == p.stat().st_size


def test_head_size_from_embedding_length(tmp_path: Path) -> None:
    p = write_gguf(tmp_path / "m.gguf", block_count=4, embedding_length=512, attention__head_count=8,
                   attention__head_count_kv=2)
    geo = geometry.geometry_from_gguf(p)
    assert (geo.head_dim_k, geo.n_head_kv[0], geo.gqa_ratio) == (64, 2, 4)


def test_bad_gguf_files(tmp_path: Path) -> None:
    with pytest.raises(KVMemError, match="model file not found"):
        geometry.geometry_from_gguf(tmp_path / "missing.gguf")
    good = write_gguf(tmp_path / "ok.gguf", block_count=4, embedding_length=512, attention__head_count=8)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(KVMemError, match="not a readable GGUF file"):
        geometry.geometry_from_gguf(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(KVMemError, match="not a readable GGUF file"):
        geometry.geometry_from_gguf(junk)
    no_attn = write_gguf(tmp_path / "noattn.gguf", block_count=4, embedding_length=512)
    with pytest.raises(KVMemError, match="no attention metadata"):
        geometry.geometry_from_gguf(no_attn)


def test_plan_table_and_json() -> None:
    geo = Geometry.simple(40, 8, 128, weights_bytes=20 * cache_types.GIB, n_ctx_train=262144)
    budget = plan.Budget("macbook", 36, geo.weights_bytes, 4)
    p = plan.make_plan(geo, [32768], [KVPair("f16", "f16"), KVPair("turbo4", "turbo4")], budget=budget)
    text = p.render()
    assert "36 GiB - weights 20.00 GiB - reserve 4 GiB" in text and "= 12.00 GiB" in text
    js = p.to_json()
    rows = {r["type_k"]: r for r in js["rows"]}
    assert rows["f16"]["kv_mib"]["32768"] == 5120
    assert rows["f16"]["max_context"] == 12 * 1024 * 1024 // 160 // 1024 * 1024  # 160 KiB per token
    # turbo4 would fit 296,000 tokens, more than the model was trained for
    assert rows["turbo4"]["max_context"] == 262144 and rows["turbo4"]["capped_by_model"]
    assert not rows["f16"]["capped_by_model"]
    tiny = plan.Budget("pi", 4, geo.weights_bytes, 4)
    assert plan.make_plan(geo, [1024], [KVPair("f16", "f16")], budget=tiny).rows[0].max_context == 0
    assert "none fits" in plan.make_plan(geo, [1024], [KVPair("f16", "f16")], budget=tiny).render()


def test_effective_says_what_the_fork_changes_and_why() -> None:
    from ollama_turbo.fork.behaviour import ForkBehaviour, effective

    e = effective("turbo4", "turbo4", n_layer=28, gqa_ratio=7.0, fb=ForkBehaviour())
    assert (e.type_k, e.type_v) == ("q8_0", "turbo4") and e.changed
    assert e.explain().startswith("configured turbo4, the fork runs q8_0/turbo4: auto-asymmetric: 7 query heads")
    off = effective("turbo4", "turbo4", n_layer=28, gqa_ratio=7.0, fb=ForkBehaviour(auto_asymmetric=False))
    assert not off.changed and off.explain() == ""
    b = effective("turbo2", "turbo2", n_layer=30, gqa_ratio=3.0, fb=ForkBehaviour())
    assert b.label == "turbo2" and b.layers[0] == ("turbo2", "q8_0") and b.layers[10] == ("turbo2", "turbo2")
    assert b.explain().startswith("configured turbo2, the fork changes some layers: boundary V")
    assert not effective("q8_0", "turbo4", n_layer=28, gqa_ratio=7.0, fb=ForkBehaviour()).changed
