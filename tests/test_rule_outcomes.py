"""Each Go rule reports what it did: applied at file:line, or not needed with the evidence why; the record of
field runs merges and renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo.builder import era_c, go_rules
from ollama_turbo.core import rules
from ollama_turbo.core.errors import UsageError
from ollama_turbo.fork.blocks import Block
from ollama_turbo.prove import compat

GO = """package llm

import "strings"

func NewLlamaServer(opts Options) {
\tkvct := strings.ToLower(envconfig.KvCacheType())
\treturn run(kvct)
}
"""


def test_anchor_line_and_insert_before() -> None:
    r = rules.Rule("load", "llm/server.go", r"^\s*kvct := strings\.ToLower\(envconfig\.KvCacheType\(\)\)\s*$",
                   "insert_after", "\t// after\n", function="NewLlamaServer")
    assert rules.anchor_line(GO, r) == 6  # the kvct line, not the blank-looking start of the match
    before = rules.Rule("doc", "llm/server.go", r"^func NewLlamaServer\(", "insert_before", "// doc\n")
    out = rules.apply_rule(GO, before)
    assert "// doc\nfunc NewLlamaServer(" in out


def test_the_per_model_rules_apply_to_their_anchors_and_compile_shape() -> None:
    text = GO + "\nfunc launch(launch cfg) {\n\tparams = append(params, \"--cache-type-k\", launch.kvCacheType, " \
                "\"--cache-type-v\", launch.kvCacheType)\n}\n"
    split = next(r for r in go_rules.per_model_rules(["f16", "turbo4"]) if r.name == "per-model-kv-split")
    out = rules.apply_rule(text, split)
    assert 'typeK, typeV, split := strings.Cut(launch.kvCacheType, "/")' in out
    assert '"--cache-type-k", typeK, "--cache-type-v", typeV' in out
    check = next(r for r in go_rules.per_model_rules(["f16", "turbo4"]) if r.name == "per-model-kv-check")
    assert 'allowed := []string{"f16", "turbo4"}' in check.text


def _grep(hits: dict[str, list[tuple[str, int, str]]]) -> go_rules.Grep:
    def grep(pattern: str) -> list[tuple[str, int, str]]:
        return [h for key, found in hits.items() if key in pattern for h in found]

    return grep


def test_kv_bytes_not_needed_when_its_only_user_is_never_called() -> None:
    hits = {"kvCacheBytesPerElement": [("fs/ggml/ggml.go", 664, "\tb := kvCacheBytesPerElement(t)"),
                                       ("fs/ggml/ggml.go", 959, "func kvCacheBytesPerElement(t string) float64 {")],
            "GraphSize": [("fs/ggml/ggml.go", 648, "func (f GGML) GraphSize(ctx uint64) {")]}
    needed, why = go_rules.kv_bytes_needed(_grep(hits), lambda f, n: "GraphSize")
    assert not needed and "used only by GraphSize, which nothing calls" in why
    hits["GraphSize"].append(("server/sched.go", 10, "\tkv, _, _ := f.GraphSize(1)"))
    assert go_rules.kv_bytes_needed(_grep(hits), lambda f, n: "GraphSize")[0]


def test_era_b_allowlists_are_not_needed_on_era_c_with_the_evidence() -> None:
    hits = {"envconfig": [("llm/server.go", 118, "\tkvct := strings.ToLower(envconfig.KvCacheType())")],
            "SupportsKVCacheType": [("fs/ggml/ggml.go", 860, "func (f GGML) SupportsKVCacheType(t string) bool {")]}
    out = go_rules.allowlists_not_needed(_grep(hits), [Block("turbo4", "GGML_TYPE_TURBO4_0", 128, 68)])
    assert {o.rule for o in out} == {"supports-kv-cache-type", "llama-kv-type-turbo4", "ml-dtypes",
                                     "engine-kv-type-turbo4"}
    assert all(o.status == "not needed" for o in out)
    assert "llm/server.go:118 passes OLLAMA_KV_CACHE_TYPE to llama-server unchecked" in out[0].why
    assert "SupportsKVCacheType has no caller" in out[0].why
    lines = go_rules.render_outcomes(out)
    assert len(lines) == 1 and lines[0].startswith("  not needed (4): supports-kv-cache-type")


def test_install_targets_and_the_web_ui_adaptation() -> None:
    assert era_c.install_targets("install(TARGETS llama-server llama-quantize\n  RUNTIME DESTINATION x COMPONENT "
                                 "llama-server OPTIONAL)") == ("llama-server", "llama-quantize")
    assert era_c.install_targets("install(TARGETS llama-server RUNTIME DESTINATION lib/ollama)") == ("llama-server",)
    assert era_c.fork_cmake_adaptations('option(LLAMA_BUILD_WEBUI "Build the embedded Web UI" ON)')[0]["define"] \
        == "-DLLAMA_BUILD_WEBUI=OFF"
    assert era_c.fork_cmake_adaptations("set(LLAMA_BUILD_UI OFF)") == []


def test_the_compatibility_record_merges_and_renders(tmp_path: Path) -> None:
    path = tmp_path / "compatibility.json"
    compat.record(path, {"ollama": "v0.30.0", "fork": "69d8e4be4", "backend": "cpu",
                         "build": {"status": "built", "seconds": 874.0, "rules": {"applied": 8, "not needed": 26}}})
    compat.record(path, {"ollama": "v0.30.0", "fork": "69d8e4be4", "backend": "cpu",
                         "smoke": {"turbo4": "PASS"}, "build": {"noop_seconds": 3.3},
                         "patches": [{"patch": "llama/compat/001-hooks.patch", "status": "carried",
                                      "hunks": [{"method": "3-way"}, {"method": "3-way"}, {"method": "rule"}]},
                                     {"patch": "llama/compat/models/003-laguna.patch", "status": "left-out",
                                      "feature": "model architecture laguna", "hunks": []}]})
    compat.record(path, {"ollama": "v0.31.0", "fork": "69d8e4be4", "backend": "cpu",
                         "build": {"status": "refused", "conflict": "001-llama-cpp-hooks.patch: tools/mtmd/clip.cpp"}})
    rows = json.loads(path.read_text())
    assert [r["ollama"] for r in rows] == ["v0.30.0", "v0.31.0"]
    assert rows[0]["build"] == {"status": "built", "seconds": 874.0, "rules": {"applied": 8, "not needed": 26},
                                "noop_seconds": 3.3}
    md = path.with_suffix(".md").read_text()
    assert ("| v0.30.0 | 69d8e4be4 | cpu | built (874 s cold, no-op 3.3 s) | 001-hooks.patch: carried (2 3-way, "
            "1 rule); 003-laguna.patch: left out: models of architecture laguna are not supported by this "
            "build | 8 applied, 26 not needed | turbo4: PASS |") in md
    assert "refused: 001-llama-cpp-hooks.patch: tools/mtmd/clip.cpp" in md
    # refused before, built now: the row keeps nothing of the refusal
    compat.record(path, {"ollama": "v0.31.0", "fork": "69d8e4be4", "backend": "cpu",
                         "build": {"status": "built", "run_seconds": 30.0}})
    assert json.loads(path.read_text())[1]["build"] == {"status": "built", "run_seconds": 30.0}
    assert "clip.cpp" not in path.with_suffix(".md").read_text()
    with pytest.raises(UsageError, match="missing: backend"):
        compat.merge([], {"ollama": "x", "fork": "y"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a compatibility record"):
        compat.load(tmp_path / "bad.json")
