"""api-check on the sample world: every scenario, both eras, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.check import apicheck
from ollama_turbo.core import capi, sources
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, SourceError

from .conftest import invoke

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sample.World]:
    root = tmp_path_factory.mktemp("scenarios")
    return {name: sample.generate(root / name, sample.scenario(name)) for name in sample.SCENARIOS}


def run(world: sample.World, era: str, tmp_path: Path, *extra: str) -> tuple[int, dict, str]:
    tree = world.ollama_c if era == "C" else world.ollama_b
    out = tmp_path / "report.json"
    r = invoke("api-check", "--ollama", str(tree), "--fork", str(world.fork), "--upstream",
               str(world.upstream), "--json", str(out), *extra,
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode in (0, 4, 8, 12), r.stderr
    return r.returncode, json.loads(out.read_text()), r.stdout


def changes(report: dict, kind: str) -> list[dict]:
    return [c for c in report["changes"] if c["kind"] == kind]


@pytest.mark.parametrize("era", ["B", "C"])
def test_clean_fit_needs_only_review(worlds: dict[str, sample.World], era: str, tmp_path: Path) -> None:
    code, rep, text = run(worlds["clean"], era, tmp_path)
    assert code == 4 and rep["verdict"] == "review" and rep["era"] == era
    assert all(c["counts_as"] != "incompatible" for c in rep["changes"])
    added = {c["symbol"] for c in changes(rep, "enum_constant_added")}
    assert {"GGML_TYPE_TURBO2_0", "GGML_TYPE_TURBO3_0", "GGML_TYPE_TURBO4_0"} <= added
    assert {p["status"] for p in rep["patches"]} == {"applied"}
    insert = changes(rep, "enum_insert")[0]
    # the op insertion is incompatible in itself, and the report says why it does not count
    assert insert["symbol"] == "GGML_OP_TURBO_WHT" and insert["severity"] == "incompatible"
    assert insert["related"] == ["GGML_OP_UNARY", "GGML_OP_MAP_CUSTOM1", "GGML_OP_CUSTOM"]
    assert insert["counts_as"] == "review" and insert["used_by_ollama"] is False
    assert "RPC" in insert["detail"]
    if era == "C":
        assert rep["cache_types"]["ok"] and "turbo4" in rep["cache_types"]["fork"]
        assert {f["name"] for f in rep["flags"] if f["always"]} >= {"--model", "--kv-unified"}
        assert {f["name"] for f in rep["flags"] if not f["always"]} >= {"--cache-type-k", "--flash-attn"}
        assert all(f["in_fork"] for f in rep["flags"])
    else:
        lists = {(a["file"], a["function"]) for a in rep["kv_allowlists"]}
        assert ("llama/llama.go", "kvCacheTypeFromStr") in lists
        assert ("fs/ggml/ggml.go", "SupportsKVCacheType") in lists
        assert ("runner/ollamarunner/cache.go", "kvCacheTypeFromStr") in lists
        assert "Go KV-cache allowlists the build must extend" in text


def test_fork_behind_misses_a_flag_and_the_compat_patch_conflicts(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, text = run(worlds["fork-behind"], "C", tmp_path)
    assert code == 12 and rep["verdict"] == "incompatible"
    missing = changes(rep, "flag_missing")
    assert [(c["symbol"], c["counts_as"]) for c in missing] == [("--kv-unified", "review")]
    assert "the build drops it from the argv" in missing[0]["detail"]
    assert "always" in missing[0]["detail"]
    refused = changes(rep, "patch_refused")[0]
    assert refused["symbol"] == "0001-server-report-ollama-compat.patch" and refused["counts_as"] == "incompatible"
    # the hunk rewrites the /health line, which the fork (b100) has as it was before b110 reworded it
    assert "hunk 1 (tools/server/server.cpp" in refused["detail"]
    assert "beside the hunk the fork has 'return \"{\\\"status\\\":\\\"ok\\\"}\";'" in refused["detail"]
    assert "slots" in refused["detail"] and "it changes lines, so its context alone cannot place it" in \
        refused["detail"]
    layout = [c for c in changes(rep, "record_layout") if c["symbol"] == "llama_context_params"][0]
    assert "kv_unified removed" in layout["detail"]
    assert "--kv-unified       always       MISSING" in text


def test_collision_with_a_newer_upstream_type(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(worlds["collision"], "C", tmp_path)
    assert code & 8
    col = changes(rep, "enum_collision")
    assert len(col) == 1 and col[0]["symbol"] == "GGML_TYPE_TURBO2_0"
    assert col[0]["related"] == ["GGML_TYPE_Q2_0"] and col[0]["counts_as"] == "incompatible"
    assert "42 is GGML_TYPE_Q2_0" in col[0]["detail"]
    assert rep["pinned"]["tag"] == "b120"


def test_removed_function_used_by_cgo(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(worlds["removed-function"], "B", tmp_path)
    assert code & 8
    rm = changes(rep, "function_removed")
    assert [c["symbol"] for c in rm] == ["llama_n_ctx"]
    assert rm[0]["used_by_ollama"] and rm[0]["uses"][0].startswith("llama/llama.go:")


def test_era_b_patch_that_no_longer_applies(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(worlds["patch-conflict"], "B", tmp_path)
    assert code & 8
    assert [p["status"] for p in rep["patches"]] == ["applied", "applied", "conflict"]
    assert rep["patches"][2]["files"] == ["ggml/include/ggml.h"]


def test_apiignore_accepts_a_change_with_its_reason(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    ignore = tmp_path / "accepted.yaml"
    ignore.write_text("- symbol: GGML_TYPE_TURBO2_0\n  kind: enum_collision\n"
                      "  reason: we never load Q2_0 models\n")
    code, rep, text = run(worlds["collision"], "C", tmp_path, "--apiignore", str(ignore))
    assert code == 4 and rep["verdict"] == "review"
    assert changes(rep, "enum_collision")[0]["suppressed"] == "we never load Q2_0 models"
    assert "accepted in .apiignore" in text and "we never load Q2_0 models" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("- symbol: X\n")
    with pytest.raises(ConfigError, match="needs 'symbol' and a non-empty 'reason'"):
        apicheck.load_apiignore(bad)


def test_markdown_report_and_scan(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["clean"]
    md = tmp_path / "r.md"
    run(w, "C", tmp_path, "--markdown", str(md))
    assert md.read_text().startswith("# api-check:") and "| counts as | kind |" in md.read_text()
    r = invoke("api-check", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--upstream",
               str(w.upstream), "--scan-ollama", "v0.30.0..v0.31.0",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 4, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:5] == ["1", "v0.31.0", "C", "b110", "review"]
    assert lines[2].split()[:5] == ["2", "v0.30.0", "C", "b100", "incompatible"]
    assert "best fit: Ollama v0.31.0" in r.stdout


def test_linux_target_layouts(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(worlds["clean"], "C", tmp_path, "--target", "x86_64-linux-gnu")
    assert rep["target"] == "x86_64-linux-gnu" and code == 4


def test_bad_input(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["clean"]
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
    r = invoke("api-check", "--ollama", str(tmp_path), "--fork", str(w.fork), env=env)
    assert r.returncode == 2 and f"error: --ollama {tmp_path}: not a git checkout (no .git)" in r.stderr
    r = invoke("api-check", "--ollama", str(w.ollama_c), "--ollama-ref", "v9.9.9", "--fork", str(w.fork),
               env=env)
    assert r.returncode == 1 and "ref 'v9.9.9' not found" in r.stderr and "v0.31.0" in r.stderr
    # an Ollama tree of no known era, and one of era A
    cfg = config.parse({"workspace": str(tmp_path / "ws")})
    with pytest.raises(SourceError, match="not an Ollama tree of a known era"):
        sources.detect(sources.open_source("ollama", str(w.fork), "HEAD", cfg.workspace))
    era_a = tmp_path / "era-a"
    from ollama_turbo.sample.gitrepo import Repo

    repo = Repo.init(era_a)
    repo.write({"llm/llama.cpp/README.md": "submodule\n", "go.mod": "module x\n"})
    repo.commit("v0.3.14")
    with pytest.raises(SourceError, match="era A"):
        sources.detect(sources.open_source("ollama", str(era_a), "HEAD", cfg.workspace))
    # the pinned tag missing from the configured upstream
    r = invoke("api-check", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--upstream",
               str(w.ollama_b), env=env)
    assert r.returncode == 1 and "upstream: ref 'b110' not found" in r.stderr


def test_header_that_does_not_parse(tmp_path: Path) -> None:
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "llama.h").write_text("#pragma once\nstruct llama_x { int a; \n int broken(;\n")
    with pytest.raises(capi.HeaderParseError) as info:
        capi.parse([inc])
    assert f"{inc / 'llama.h'}:3" in str(info.value)


def _clone_at(src: Path, dest: Path, ref: str) -> Path:
    from ollama_turbo.core import proc

    proc.run(["git", "clone", "-q", str(src), str(dest)])
    proc.run(["git", "-C", str(dest), "checkout", "-q", ref])
    return dest


def test_a_local_checkout_is_read_at_what_is_checked_out(worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["clean"]
    clone = _clone_at(w.ollama_c, tmp_path / "ollama", "v0.30.0")
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
    out = tmp_path / "r.json"
    r = invoke("api-check", "--ollama", str(clone), "--fork", str(w.fork), "--upstream", str(w.upstream),
               "--json", str(out), env=env)
    assert r.returncode in (0, 4, 8, 12), r.stderr  # the fork is based on b110: v0.30.0's compat patch conflicts
    rep = json.loads(out.read_text())
    head = sources.proc.run(["git", "-C", str(clone), "rev-parse", "HEAD"]).stdout.strip()
    assert (rep["ollama"]["ref"], rep["ollama"]["sha"], rep["ollama"]["version"]) == ("v0.30.0", head, "0.30.0")
    assert rep["pinned"]["tag"] == "b100"
    assert f"(v0.30.0 @ {head[:9]}" in r.stdout
    # a ref the settings name (here through the environment) wins over HEAD
    r = invoke("api-check", "--ollama", str(clone), "--fork", str(w.fork), "--upstream", str(w.upstream),
               "--json", str(out), env={**env, "INVOKE_TURBO_SOURCES_OLLAMA_REF": "v0.31.0"})
    assert json.loads(out.read_text())["ollama"]["ref"] == "v0.31.0", r.stderr


def test_a_url_keeps_the_configured_ref_and_a_checkout_mid_rebase_is_refused(
        worlds: dict[str, sample.World], tmp_path: Path) -> None:
    w = worlds["clean"]
    cfg = config.parse({"workspace": str(tmp_path / "ws")})
    url = w.ollama_c.as_uri()
    co = sources.open_source("ollama", url, sources.ref_for(url, "", cfg.sources.ollama), cfg.workspace)
    assert co.ref == "main" and not co.local
    clone = _clone_at(w.ollama_c, tmp_path / "ollama", "main")
    assert sources.ref_for(str(clone), "", cfg.sources.ollama) == "HEAD"
    assert sources.ref_for(str(clone), "v0.30.0", cfg.sources.ollama) == "v0.30.0"
    git_dir = clone / ".git"
    (git_dir / "rebase-merge").mkdir()
    before = sources.proc.run(["git", "-C", str(clone), "status", "--porcelain"]).stdout
    r = invoke("api-check", "--ollama", str(clone), "--fork", str(w.fork),
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 1, r.stdout
    assert f"ollama: {clone} is in the middle of a rebase" in r.stderr and "--ollama-ref" in r.stderr
    assert "Traceback" not in r.stderr
    assert sources.proc.run(["git", "-C", str(clone), "status", "--porcelain"]).stdout == before
    # naming a ref reads that commit, rebase or not
    assert sources.open_source("ollama", str(clone), "v0.30.0", cfg.workspace).ref == "v0.30.0"
