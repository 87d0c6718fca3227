"""The era is a type: what differs between Ollama's integration eras is read from its rules, not its name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ollama_turbo.core import era as eras
from ollama_turbo.core import server_kv
from ollama_turbo.core.era import Era, UnknownEra
from ollama_turbo.core.kv_types import KVPair

PACKAGE = Path(__file__).resolve().parents[1] / "ollama_turbo"


def test_an_era_is_named_and_written_by_its_letter() -> None:
    assert Era.named("C") is Era.C and Era.C == "C" and f"{Era.B}" == "B"
    with pytest.raises(UnknownEra, match="'D' is not an era"):
        Era.named("D")


def test_the_rules_say_how_each_era_takes_the_fork() -> None:
    b, c = Era.B.rules, Era.C.rules
    assert (b.patch_dir, c.patch_dir) == ("llama/patches", "llama/compat")
    assert b.links_c_api and not b.server_argv and b.pinned_includes
    assert c.server_argv and c.carries_patches and not c.links_c_api and not c.pinned_includes
    assert eras.ALLOWLISTS in b.go_rules and eras.ALLOWLISTS not in c.go_rules
    assert {eras.DROP_FLAGS, eras.PER_MODEL, eras.CONTEXT_SHIFT} <= set(c.go_rules)
    assert (b.cuda, c.cuda, b.stock, c.stock) == (False, True, False, True)
    assert Era.B.pin_text("ec98e2002abcdef0123") == "FETCH_HEAD ec98e2002abc" and Era.C.pin_text("b9452") == "b9452"
    assert Era.B.pin_record("abc") == {"fetch_head": "abc"}
    assert Era.C.pin_record("b9452", "llama.cpp b9452") == {"tag": "b9452", "merge_base": "llama.cpp b9452"}


def test_build_steps_come_from_the_era() -> None:
    steps = Era.B.build_steps(fork_git="/f.git", fork_sha="abc", ldflags="-s", preset="", defines="", targets="")
    assert any("make -f Makefile.sync UPSTREAM=/f.git FETCH_HEAD=abc" in s for s in steps)
    steps = Era.C.build_steps(fork_git="", fork_sha="", ldflags="-s", preset="cpu", defines=" -DX=1",
                              targets="llama-server")
    assert any("--preset cpu -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<fork copy> -DX=1" in s for s in steps)
    assert "cmake --build <build> --target llama-server" in steps


def test_the_servers_kv_split_follows_the_eras_rule() -> None:
    pair = KVPair("q8_0", "turbo4")
    assert server_kv.to_env(Era.C, pair) == [(server_kv.K, "q8_0"), (server_kv.V, "turbo4")]
    with pytest.raises(server_kv.PairNotPossible):
        server_kv.to_env("B", pair)
    assert server_kv.to_env(Era.B, KVPair("turbo4", "turbo4")) == [(server_kv.ONE, "turbo4")]


def test_no_stage_compares_an_era_by_its_letter() -> None:
    """The era's letter is for people and files; behaviour reads its rules (the sample world builds trees of
    both eras by name, and is left out)."""
    out = subprocess.run(["grep", "-rnE", r"era (==|!=) *(sources\.)?(\"|'|ERA_)", "--include=*.py", str(PACKAGE)],
                         capture_output=True, text=True).stdout
    hits = [ln for ln in out.splitlines() if "/sample/" not in ln]
    assert hits == []
