"""The ``ollama-turbo`` program itself: its own options only, and what an interrupted task leaves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_cli_fuzz import isolated, run

INVOKE_ONLY = ("--prompt-for-sudo-password", "--pty", "--write-pyc", "--echo", "--hide", "--warn-only",
               "--command-timeout", "--debug", "--list-depth", "--list-format", "--collection", "--search-root",
               "--no-dedupe")


def test_help_shows_only_this_tools_options(tmp_path: Path) -> None:
    with isolated(tmp_path):
        code, out, err = run(["--help"])
    assert code == 0, err
    assert out.startswith("Usage: ollama-turbo [--options] TASK [--task-options]\n")
    for flag in ("--list", "--help", "--version", "--config", "--complete", "--print-completion-script"):
        assert flag in out, flag
    for flag in INVOKE_ONLY:
        assert flag not in out, flag
    assert not re.search(r"--dry\b(?!-)", out)  # invoke's --dry; the tasks' --dry-run is theirs
    assert "deploy " in out and "plan " in out  # the tasks follow


@pytest.mark.parametrize("flag", ["--pty", "--echo", "--warn-only", "--dry", "--write-pyc",
                                  "--prompt-for-sudo-password"])
def test_invokes_own_flags_are_unknown_here(flag: str, tmp_path: Path) -> None:
    with isolated(tmp_path):
        code, _, err = run([flag, "settings-show"])
    assert code == 2 and f"error: unknown flag {flag}" in err and "next step:" in err


def test_version_list_and_completion_stay(tmp_path: Path) -> None:
    with isolated(tmp_path):
        assert run(["--version"])[:2] == (0, "ollama-turbo test\n")
        code, out, _ = run(["--list"])
        assert code == 0 and "settings-show" in out
        code, out, _ = run(["--complete", "--", "ollama-turbo", "pl"])
        assert code == 0 and "plan" in out.split()
        code, out, _ = run(["--help", "plan"])
        assert code == 0 and "--layers" in out
        code, _, err = run(["-f"])
        assert code == 2 and "error: --config needs a value" in err
