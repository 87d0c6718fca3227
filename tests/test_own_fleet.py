"""examples/own-fleet.sh, the "your own fleet" walkthrough, run as a user runs it: on the sample world, with a
Mac-like host (emulated launchd, a stock Ollama already serving) and a Linux-like host over a real sshd.

Each run has its own folder (tmp_path), its own accounts (named after the pid of the script's host process) and
free ports, so two runs on one machine never meet."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from . import ssh_host
from .conftest import ROOT, bench

pytestmark = [pytest.mark.sample, pytest.mark.skipif(ssh_host.unavailable() is not None,
                                                     reason=ssh_host.unavailable() or "")]

STEPS = ["spec-init", "plan", "build-ollama", "quality", "recommend",
         "label the build as a Mac build (sample world only)", "deploy mac (adopts the stock Ollama)", "deploy box",
         "smoke mac", "smoke box", "bench box", "status mac", "status box",
         "the fork gains a commit (sample world only)", "build-ollama (second)", "deploy box (second)",
         "rollback box", "smoke box (after rollback)", "uninstall mac", "uninstall box",
         "the stock Ollama answers again on the Mac", "with its models, and the one deployed beside them"]


def after(out: str, command: str) -> str:
    """The output of the printed command that starts with ``command`` (up to its wall-time line)."""
    m = re.search(r"^\$ " + re.escape(command) + r".*\n((?:.*\n)*?)-- ", out, re.M)
    assert m, f"no '$ {command}' in the output"
    return m.group(1)


def test_own_fleet_walkthrough(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    r = subprocess.run(["bash", str(ROOT / "examples/own-fleet.sh"), str(d)], cwd=ROOT, text=True,
                       capture_output=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    out = r.stdout
    for step in STEPS:  # every step ran, in order, and exited 0
        assert f"\n-- {step}: exit 0, " in out, step
    assert [s for s in re.findall(r"^-- (.*): exit 0, ", out, re.M)] == STEPS
    # every command is printed before it runs
    assert "$ invoke -f $DIR/invoke.yaml deploy --host mac --dist $DIR/mac-dist/" in out
    fleet = {k: shlex.split(v)[0] for k, v in (line.split("=", 1) for line in
                                                (d / "fleet.env").read_text().splitlines())}
    res = {p.stem: json.loads(p.read_text()) for p in (d / "out").glob("*.json")}
    v1, v2 = res["build-1"]["version"], res["build-2"]["version"]
    assert v1 != v2 and v1.startswith("0.31.0-turbo+")

    # deploy took over the stock Ollama on the Mac, on its port; the box got a fresh install
    assert res["deploy-mac"]["status"] == "deployed" and res["deploy-mac"]["version"] == v1
    assert "take over the stock Ollama" in after(out, "invoke -f $DIR/invoke.yaml deploy --host mac")
    assert res["status-mac"]["adopted"] and res["status-mac"]["serving"] == v1
    assert res["deploy-box"]["status"] == "deployed" and res["status-box"]["adopted"] is None
    # the smokes passed: the intended build, with the turbo4 cache in effect
    for name in ("smoke-mac", "smoke-box"):
        assert res[name]["ok"] and res[name]["provenance"]["build"]["version"] == v1, name
        cache = next(c for c in res[name]["checks"] if c["name"] == "cache type")
        assert cache["ok"] and "K (turbo4) V (turbo4)" in cache["evidence"]
    bench_report = json.loads((d / "out/bench-box/bench.json").read_text())
    assert [x["label"] for x in bench_report["results"]] == ["turbo4"]
    # the second build went out, and the rollback served the previous one again
    assert res["deploy-box-2"]["status"] == "deployed" and res["deploy-box-2"]["version"] == v2
    assert (res["rollback-box"]["from"], res["rollback-box"]["to"]) == (v2, v1)
    assert res["smoke-box-rollback"]["ok"] and res["smoke-box-rollback"]["provenance"]["build"]["version"] == v1
    # uninstall gave the Mac its stock Ollama back, serving its own model again; the box has none left
    assert res["uninstall-mac"]["status"] == "uninstalled"
    assert res["uninstall-mac"]["stock"]["name"] == "homebrew.mxcl.ollama"
    assert res["uninstall-box"]["status"] == "uninstalled" and not res["uninstall-box"].get("stock")
    version = json.loads(after(out, "curl -sS http://127.0.0.1:" + fleet["MAC_PORT"] + "/api/version"))
    assert version["version"] == fleet["STOCK_VERSION"] and "-stock+" in version["version"]
    tags = json.loads(after(out, "curl -sS http://127.0.0.1:" + fleet["MAC_PORT"] + "/api/tags"))
    assert "stockmodel:latest" in [m["name"] for m in tags["models"]]
    # the hosts are gone when the script ends: their accounts too
    for user in (fleet["MAC_USER"], fleet["BOX_USER"]):
        with pytest.raises(KeyError):
            pwd.getpwnam(user)

    total = re.search(r"^clone to deployed and smoked: ([\d.]+) s$", out, re.M)
    whole = re.search(r"^the whole walkthrough .*: ([\d.]+) s$", out, re.M)
    setup = re.search(r"^ +([\d.]+) s  0\. sample world and hosts", out, re.M)
    assert total and whole and setup
    bench(f"own fleet walkthrough (examples/own-fleet.sh): clone to deployed and smoked {total.group(1)} s; "
          f"whole walkthrough {whole.group(1)} s; sample hosts set-up {setup.group(1)} s")
