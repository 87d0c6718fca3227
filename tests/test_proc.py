from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ollama_turbo.core import proc
from ollama_turbo.core.errors import CommandError, ToolMissing


def test_run_captures_output() -> None:
    r = proc.run([sys.executable, "-c", "print('hi')"])
    assert r.ok and r.stdout == "hi\n"


def test_failure_carries_command_code_and_stderr_tail() -> None:
    code = "import sys\nfor i in range(40): print('line', i, file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(CommandError) as info:
        proc.run([sys.executable, "-c", code])
    err = info.value
    assert err.returncode == 3
    assert err.argv[0] == sys.executable
    assert "line 39" in err.stderr_tail and "line 10" not in err.stderr_tail
    assert "exit code 3" in str(err)


def test_no_shell_is_involved(tmp_path: Path) -> None:
    r = proc.run(["echo", "$HOME; rm -rf /"], cwd=tmp_path)
    assert r.stdout == "$HOME; rm -rf /\n"


def test_timeout() -> None:
    with pytest.raises(CommandError, match="timed out"):
        proc.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.3)


def test_missing_tool() -> None:
    with pytest.raises(ToolMissing, match="no-such-tool"):
        proc.run(["no-such-tool-xyz"])
    with pytest.raises(ToolMissing, match="brew"):
        proc.which("no-such-tool-xyz", hint="brew install it")


def test_log_file_receives_output_and_failure_shows_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    with pytest.raises(CommandError) as info:
        proc.run([sys.executable, "-c", "print('boom'); raise SystemExit(2)"], log=log)
    assert "boom" in log.read_text()
    assert "boom" in info.value.stderr_tail
    assert str(log) in str(info.value)


def test_verbose_echo(capfd: pytest.CaptureFixture[str]) -> None:
    proc.set_verbose(True)
    try:
        proc.run(["true"])
    finally:
        proc.set_verbose(False)
    assert "+ true" in capfd.readouterr().err
