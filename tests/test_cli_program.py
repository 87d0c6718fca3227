"""The ``ollama-turbo`` program itself: its own options only, and what an interrupted task leaves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import bench
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


def test_ctrl_c_ends_a_task_with_130_and_one_line(tmp_path: Path) -> None:
    """smoke against a server that accepts and never answers: SIGINT once the connection is made (the marker)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        env = {**os.environ, "PYTHONPATH": str(root), "INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
        # Ctrl-C as a terminal delivers it: a test run started in the background (nohup, &) has SIGINT ignored,
        # and an ignored signal stays ignored in every child, so the child gets the default back first
        p = subprocess.Popen([sys.executable, "-c", "from ollama_turbo.cli import main; main()", "smoke", "--url", url],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            conn, _ = server.accept()  # the task is waiting for an answer now
            with conn:
                p.send_signal(signal.SIGINT)
                out, err = p.communicate(timeout=60)
        finally:
            p.kill()
    assert p.returncode == 130, (out, err)
    assert err == "interrupted: smoke stopped; nothing after the last step printed was done\n", err


def _fleet(tmp_path: Path) -> Path:
    f = tmp_path / "fleet.yaml"
    f.write_text("turbo:\n  hosts:\n    a: {ssh: local, os: linux, service: none}\n"
                 "    b: {ssh: local, os: linux, service: none}\n    c: {ssh: local, os: linux, service: none}\n")
    return f


def test_an_interrupted_deploy_says_what_its_host_was_left_on(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.core.errors import Interrupted
    from ollama_turbo.deploy import releases

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted("a was put back on 0.30.0-turbo, which answers again (0.31.0-turbo was not verified)",
                          hosts=["a"])

    monkeypatch.setattr(releases, "deploy", stopped)
    fleet = _fleet(tmp_path)
    with isolated(tmp_path):
        code, _, err = run(["-f", str(fleet), "deploy", "--host", "a", "--dist", str(tmp_path)])
    assert code == 130
    assert err == ("interrupted: deploy stopped; a was put back on 0.30.0-turbo, which answers again (0.31.0-turbo "
                   "was not verified); next step: invoke status --host a\n")


def test_an_interrupted_rolling_deploy_names_the_host_it_stopped_at(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.deploy import releases, rolling

    def carry_out(intent: object, **kwargs: object) -> object:
        if intent == "b":
            raise KeyboardInterrupt
        return releases.DeployResult(host="a", version="2", status="deployed", previous="1")

    monkeypatch.setattr(rolling, "load_dist", lambda dist: None)
    monkeypatch.setattr(rolling, "decide", lambda settings, host, build, **kw: host.name)
    monkeypatch.setattr(releases, "carry_out", carry_out)
    fleet = _fleet(tmp_path)
    with isolated(tmp_path):
        code, out, err = run(["-f", str(fleet), "deploy", "--hosts", "a,b,c", "--batch", "1", "--dist", str(tmp_path)])
    assert code == 130, err
    assert err == ("interrupted: deploy stopped; rolling deploy stopped at b: nothing on b was changed; deployed and "
                   "verified before it: a; the hosts not reached keep their release; next step: invoke status "
                   "--host b\n")


def test_a_deploy_interrupted_before_any_host_changes_nothing(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.deploy import releases

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(releases, "deploy", stopped)
    with isolated(tmp_path):
        code, _, err = run(["-f", str(_fleet(tmp_path)), "deploy", "--host", "a", "--dist", str(tmp_path)])
    assert (code, err) == (130, "interrupted: deploy stopped; no host was changed; next step: invoke status --host a\n")


def test_what_an_interrupted_deploy_left_follows_its_steps() -> None:
    from ollama_turbo.core import settings as config
    from ollama_turbo.deploy.deploy_plan import STEPS
    from ollama_turbo.deploy.rollback import Attempt, left_after

    host = config.parse({"hosts": {"h": {"ssh": "local"}}}).host("h")
    assert left_after(host, "2", None) == "nothing on h was changed"
    assert left_after(host, "2", Attempt("me", step=STEPS["port"])) == \
        "nothing was switched: h keeps the release it served"
    assert left_after(host, "2", Attempt("me", switched=True, step=STEPS["restart"])) == \
        "h may serve 2, which is not verified: the switch back was interrupted"
    assert left_after(host, "2", Attempt("me", switched=True, step=STEPS["prune"])) == \
        "h serves 2, verified; only the pruning of old releases was cut short"
    assert left_after(host, "2", Attempt("me", switched=True, step=STEPS["smoke"], left="h was put back on 1")) == \
        "h was put back on 1"


def test_start_up_time_is_printed() -> None:
    # how long the program takes to answer before any task runs: importing the toolkit and reading the tasks
    import subprocess
    import sys
    import time

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", "from ollama_turbo.cli import main; main()", "--list"],
                           capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0 and "deploy" in r.stdout, r.stderr
    bench(f"CLI start-up: ollama-turbo --list in {min(times) * 1000:.0f} ms (best of 3; {max(times) * 1000:.0f} ms "
          "worst)")
