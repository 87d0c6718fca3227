from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, TurboError
from ollama_turbo.kv import modelfiles as modelfile

from .conftest import invoke

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "modelfiles"


def fleet() -> config.Settings:
    raw = yaml.safe_load((ROOT / "examples/fleet.yaml").read_text())["turbo"]
    return config.parse(raw)


def spec(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(body)
    return p


def test_rendering_matches_the_golden_files(tmp_path: Path) -> None:
    r = invoke("-f", str(ROOT / "examples/fleet.yaml"), "modelfiles", "--examples", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    golden = sorted(p.relative_to(GOLDEN) for p in GOLDEN.rglob("*.Modelfile"))
    rendered = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.Modelfile"))
    assert golden == rendered and len(golden) == 4
    for rel in golden:
        assert filecmp.cmp(GOLDEN / rel, tmp_path / rel, shallow=False), rel
    assert "macbook      qwen3.5-27b              num_ctx 262,144" in r.stdout


def test_auto_context_uses_the_host_budget_and_kv_type(tmp_path: Path) -> None:
    specs = modelfile.load_specs(ROOT / "ollama_turbo/examples/modelfiles")
    out = modelfile.render_all(fleet(), specs, tmp_path, host="predator")
    qwen = next(r for r in out if r.spec.name == "qwen3.5-27b")
    # 24 GiB - 16.5 GiB weights - 4 GiB reserve = 3.5 GiB, less the recurrent state of the 48 gated delta
    # net layers: 4 B x ((4 - 1) x (6144 + 2 x 16 x 128) + 128 x 6144) each. Only the 16 attention layers
    # keep a KV cache: q8_0 K + turbo4 V = 16 x 4 heads x (256 x 34/32 + 256 x 68/128) B = 25.5 KiB per token.
    recurrent = 48 * 4 * (3 * (6144 + 2 * 16 * 128) + 128 * 6144)
    per_token = 16 * 4 * (256 * 34 // 32 + 256 * 68 // 128)
    assert qwen.num_ctx == (int(3.5 * 1024**3) - recurrent) // per_token // 1024 * 1024 == 137216
    assert "recurrent state (150 MiB)" in qwen.text
    assert (qwen.type_k, qwen.type_v) == ("q8_0", "turbo4")
    assert "PARAMETER kv_cache_type q8_0/turbo4\n" in qwen.text and qwen.per_model
    assert 'PARAMETER stop "<|im_end|>"' in qwen.text


def test_symmetric_kv_header_and_model_gguf(tmp_path: Path, world_model: Path) -> None:
    s = spec(tmp_path, "tiny", f"from: {world_model}\nnum_ctx: auto\nhosts: [macbook]\n")
    out = modelfile.render_all(fleet(), [modelfile.load_spec(s)], tmp_path / "out")
    assert out[0].num_ctx == 32768  # capped at the model's trained context
    assert "OLLAMA_KV_CACHE_TYPE=turbo4" in out[0].text and f"FROM {world_model}" in out[0].text


@pytest.fixture
def world_model(tmp_path: Path) -> Path:
    from ollama_turbo.sample.model import write_model

    return write_model(tmp_path / "m" / "sample.gguf")


@pytest.mark.parametrize(("body", "key", "words"), [
    ("from: x\nparameters: {temprature: 0.5}\n", "bad.parameters.temprature", "not an Ollama Modelfile"),
    ("from: x\nparameters: {top_k: high}\n", "bad.parameters.top_k", "expected int"),
    ("from: x\nnum_ctx: lots\n", "bad.num_ctx", "positive number or 'auto'"),
    ("from: x\nkv: turbo9\n", "bad.kv", "unknown cache type"),
    ("parameters: {}\n", "bad.from", "required"),
    ("from: x\ncolour: red\n", "bad.colour", "unknown key"),
    ("from: x\nparameters: {num_ctx: 4096}\n", "bad.parameters.num_ctx", "top level"),
    ("from: x\ngeometry: {layers: 99999999999999999999, kv_heads: 2, head_dim: 64}\n", "bad.geometry.layers",
     "expected a whole number from 1 to 4,096, got 99999999999999999999"),
    ("from: x\ngeometry: {layers: 4, kv_heads: 2, head_dim: 64, weights_gib: .nan}\n", "bad.geometry.weights_gib",
     "expected a number of GiB from 0 to 1,048,576, got nan"),
    ("from: x\ngeometry: {layers: 4, kv_heads: 0, head_dim: 64}\n", "bad.geometry.kv_heads", "from 1 to 8,192"),
])
def test_bad_specs_name_the_file_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    p = spec(tmp_path, "bad", body)
    with pytest.raises(ConfigError) as info:
        modelfile.load_spec(p)
    assert str(info.value).startswith(f"{key} (in {p})") and words in str(info.value)


def test_two_specs_needing_different_kv_types_on_one_host(tmp_path: Path) -> None:
    a = modelfile.load_spec(spec(tmp_path, "a", "from: a\nkv: q8_0\nhosts: [macbook]\n"))
    b = modelfile.load_spec(spec(tmp_path, "b", "from: b\nkv: turbo3\nhosts: [macbook]\n"))
    # a build without per-model cache types runs one type per host: the two cannot share one
    with pytest.raises(ConfigError, match="a.yaml needs q8_0/q8_0 and b.yaml needs turbo3/turbo3"):
        modelfile.render_all(fleet(), [a, b], tmp_path / "out", per_model=False)
    # a build with them gives each model its own
    both = modelfile.render_all(fleet(), [a, b], tmp_path / "out")
    assert [r.kv_param for r in both] == ["q8_0", "turbo3"]
    # on different hosts they are fine
    c = modelfile.load_spec(spec(tmp_path, "c", "from: b\nkv: turbo3\nhosts: [predator]\n"))
    assert len(modelfile.render_all(fleet(), [a, c], tmp_path / "out")) == 2


def test_context_that_fits_nowhere(tmp_path: Path) -> None:
    s = modelfile.load_spec(spec(tmp_path, "huge", "from: huge\nnum_ctx: auto\nhosts: [predator]\n"
                                 "geometry: {layers: 80, kv_heads: 8, head_dim: 128, weights_gib: 21}\n"))
    with pytest.raises(TurboError, match="no context of 1,024 tokens or more fits predator"):
        modelfile.render_all(fleet(), [s], tmp_path / "out")


def test_auto_needs_geometry_and_host_memory(tmp_path: Path) -> None:
    s = modelfile.load_spec(spec(tmp_path, "nogeo", "from: llama3\nnum_ctx: auto\nhosts: [macbook]\n"))
    with pytest.raises(ConfigError, match="'auto' needs the model's geometry"):
        modelfile.render_all(fleet(), [s], tmp_path / "out")
    nomem = config.parse({"hosts": {"mini": {}}})
    s2 = modelfile.load_spec(spec(tmp_path, "g", "from: x\nnum_ctx: auto\nhosts: [mini]\n"
                                  "geometry: {layers: 8, kv_heads: 2, head_dim: 64}\n"))
    with pytest.raises(ConfigError, match="turbo.hosts.mini.memory_gib"):
        modelfile.render_all(nomem, [s2], tmp_path / "out")


def test_spec_naming_an_unknown_host(tmp_path: Path) -> None:
    s = modelfile.load_spec(spec(tmp_path, "x", "from: x\nhosts: [laptop]\n"))
    with pytest.raises(ConfigError, match="unknown host 'laptop'"):
        modelfile.render_all(fleet(), [s], tmp_path / "out")


def test_a_spec_that_is_not_utf8_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "specs" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_bytes(b"from: x\n\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        modelfile.load_specs(bad.parent)
    assert str(info.value) == (f"{bad}: not UTF-8 text (byte 8: b'\\xff')\n  next step: save {bad} as UTF-8, or "
                               f"move it out of {bad.parent}")
    assert info.value.exit_code == 2
