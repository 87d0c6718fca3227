"""One typed build record: the builder fills it, the manifest writes it, every reader gets it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo.core import manifest
from ollama_turbo.core.build_record import (
    GPU,
    BuildRecord,
    CacheType,
    ManifestError,
    PerModelKV,
    PlannedKV,
    SourceRef,
)
from ollama_turbo.core.era import Era


def full_record() -> BuildRecord:
    return BuildRecord(
        version="0.30.0-turbo+abc.cuda.123456", era=Era.C, flavor="custom",
        ollama=SourceRef("https://example.invalid/ollama.git", "v0.30.0", "a" * 40, "0.30.0"),
        fork=SourceRef("/src/fork", "main", "b" * 40),
        pinned=Era.C.pin_record("b9452", "llama.cpp b9452"), backend="cuda", preset="llama_cuda_v13_linux",
        platform={"os": "linux", "arch": "x86_64"}, identity="c" * 64,
        planned_kv=PlannedKV("q8_0", "turbo4", True, {"TURBO_LAYER_ADAPTIVE": "1"}),
        cache_types={"turbo4": CacheType(128, 66, "GGML_TYPE_TURBO4_0"), "q8_0": CacheType(32, 34)},
        rules=[{"rule": "kv-bytes-turbo4", "file": "fs/ggml/ggml.go", "status": "applied", "line": 7, "why": "x"}],
        per_model_kv=PerModelKV(True, ("f16", "q8_0", "turbo4"), "", "kv_cache_type"),
        patches=[{"patch": "llama/compat/001-hooks.patch", "status": "applied"}], dropped_flags=["--foo"],
        adaptations=[{"define": "-DX=1", "why": "y"}], verify_fork={"verdict": "pass"},
        toolchain={"go": "/usr/bin/go"}, build_flags={"ldflags": "-s -w", "tool_paths": {"llama-bench": "t/b"}},
        inputs_key="d" * 64, ollama_turbo="0.9.0", built_at="2026-12-01T00:00:00+00:00", cuda_arch="90",
        parts={"base": {"built_on": "box"}},
        gpu=GPU("90", "lib/ollama/cuda_v13", "lib/ollama/cuda_v13/libggml-cuda.so", "llama_cuda_v13_linux", "12.8",
                "k"),
        files={"bin/ollama": "e" * 64})


def test_a_build_record_round_trips_through_json() -> None:
    record = full_record()
    text = json.dumps(record.to_json())
    again = BuildRecord.from_json(json.loads(text), "manifest.json")
    assert again == record
    assert json.loads(text)["planned_kv"]["type_k"] == "q8_0" and "kv" not in json.loads(text)


def test_the_manifest_writer_and_reader_share_the_record(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ollama").write_bytes(b"binary")
    manifest.write(tmp_path, full_record())
    m = manifest.load(tmp_path, whole=True)
    assert m.record.files == {"bin/ollama": manifest.sha256(tmp_path / "bin" / "ollama")}
    assert m.record == BuildRecord.from_json(json.loads((tmp_path / manifest.NAME).read_text()), "x")
    assert (m.era, m.cache_types["turbo4"], m.tool_paths) == (Era.C, (128, 66), {"llama-bench": "t/b"})


OLD = {  # a manifest of an earlier toolkit: "kv" for the planned K/V, cache types without ids, a key of its own
    "version": "0.24.0-turbo+abc.cpu.1a2b3c", "era": "B", "ollama": {"url": "u", "ref": "v0.24.0", "sha": "1"},
    "fork": {"url": "f", "ref": "main", "sha": "2"}, "pinned": {"fetch_head": "ec98e2002"}, "backend": "cpu",
    "preset": None, "kv": {"type_k": "turbo4", "type_v": "turbo4", "flash_attention": True, "env": {}},
    "cache_types": {"turbo4": {"block": 128, "bytes": 68}}, "per_model_kv": {"supported": False},
    "build_flags": {"cgo_cflags": "-O2"}, "legacy_note": "kept", "files": {"bin/ollama": "ab"}}


def test_an_older_manifest_loads_and_round_trips() -> None:
    record = BuildRecord.from_json(OLD, "old/manifest.json")
    assert record.era is Era.B and record.planned_kv == PlannedKV("turbo4", "turbo4", True, {})
    assert record.cache_types == {"turbo4": CacheType(128, 68)} and record.extra == {"legacy_note": "kept"}
    assert BuildRecord.from_json(json.loads(json.dumps(record.to_json())), "again") == record
    minimal = BuildRecord.from_json({"version": "v", "era": "C", "files": {}}, "min")
    assert minimal.planned_kv is None and minimal.flavor == "custom"
    assert BuildRecord.from_json(minimal.to_json(), "again") == minimal


def test_a_bad_planned_kv_names_its_key() -> None:
    with pytest.raises(ManifestError, match="m.json: kv is .*expected an object with type_k and type_v"):
        BuildRecord.from_json({"version": "v", "era": "C", "files": {}, "kv": {"type_k": 4}}, "m.json")
