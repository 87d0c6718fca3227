"""Every Ollama release from v0.30.0 to main against the fork: carried and built (and, with
``TURBO_FIELD_BUILD_ALL=1``, deployed here and smoked with turbo4), or refused with a semantic reason.

Needs the variables of the product tier (``TURBO_FIELD_OLLAMA``, ``TURBO_FIELD_FORK``, ``TURBO_FIELD_UPSTREAM``).
A release whose pin the upstream source lacks is still carried, by context and rules, and says that no 3-way
base was there. Writes each release's row to the compatibility record with ``TURBO_FIELD_RECORD_WRITE=1``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import bench
from .test_field import FORK, OLLAMA, UPSTREAM
from .test_field_product import NEWER, REF, WS, builds, cli, deploy, host, record  # noqa: F401 - host, builds: fixtures

pytestmark = [pytest.mark.field,
              pytest.mark.skipif(not (OLLAMA and FORK and UPSTREAM),
                                 reason="set TURBO_FIELD_OLLAMA, TURBO_FIELD_FORK and TURBO_FIELD_UPSTREAM")]

BUILD_ALL = os.environ.get("TURBO_FIELD_BUILD_ALL") == "1"


def releases() -> list[str]:
    """v0.30.0 and every release after it, the newest release candidate, and main."""
    if not OLLAMA:
        return []
    tags = subprocess.run(["git", "-C", OLLAMA, "tag", "--sort=version:refname"], capture_output=True, text=True,
                          check=True).stdout.split()
    out = [t for t in tags if re.fullmatch(r"v0\.(3\d)\.\d+", t) and tuple(map(int, t[1:].split("."))) >= (0, 30, 0)]
    rcs = [t for t in tags if re.fullmatch(r"v0\.3\d\.\d+-rc\d+", t)]
    newest = rcs[-1] if rcs else None
    if newest and tuple(map(int, newest[1:].split("-")[0].split("."))) > tuple(map(int, out[-1][1:].split("."))):
        out.append(newest)
    return [*out, "main"]


def fork_short() -> str:
    return subprocess.run(["git", "-C", FORK, "rev-parse", "--short=9", "feature/turboquant-kv-cache"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("ref", releases())
def test_every_release_is_built_or_refused_with_its_reason(ref: str, request: pytest.FixtureRequest) -> None:
    plan = WS / f"plan-{ref}.json"
    code, out, err, secs = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", ref, "--fork", FORK,
                               "--backend", "cpu", "--skip-verify", "--leave-out", "laguna", "--dry-run",
                               "--json", str(plan))
    facts: dict[str, Any] = {"ollama": ref, "fork": fork_short(), "backend": "cpu"}
    if code != 0:  # refused: the reason, in words (a hunk and why nothing places it, a rule's moved anchor)
        why = err.split("error: ", 1)[-1].split("\n  next step:")[0].strip()
        print(f"\n[field] {ref}: refused after {secs:.1f} s: {why[:300]}")
        assert code == 1 and why and "Traceback" not in err
        record({**facts, "build": {"status": "refused before Go or CMake", "conflict": why[:400]}})
        return
    p = json.loads(plan.read_text())
    summary = "; ".join(f"{x['patch'].rsplit('/', 1)[-1]}: {x['status']}" for x in p["patches"])
    bench(f"field: carry Ollama {ref}'s compat patches onto the fork: {p['carry_seconds']:.2f} s ({summary})")
    if not BUILD_ALL:
        if ref not in (REF, *NEWER):  # those the product tier builds and serves: it records more than a plan
            record({**facts, "build": {"status": "carried in the plan (not built in this run)"},
                    "patches": p["patches"]})
        return
    code, out, err, secs = cli("build-ollama", "--ollama", OLLAMA, "--ollama-ref", ref, "--fork", FORK,
                               "--backend", "cpu", "--skip-verify", "--leave-out", "laguna",
                               "--json", str(WS / f"build-all-{ref}.json"))
    assert code == 0, out + err
    m = json.loads((WS / f"build-all-{ref}.json").read_text())
    here = request.getfixturevalue("host")  # this machine as a host (builds the product tier's builds first)
    code, out, err = deploy(here, Path(m["dist"]), "--accept-unmeasured",
                            env={"INVOKE_TURBO_KV_TYPE_K": "turbo4", "INVOKE_TURBO_WORKSPACE": str(WS / "ungated")})
    assert code == 0, out + err
    code, out, err, _ = cli("-f", str(here["fleet"]), "smoke", "--host", "here")
    assert code == 0, out + err
    record({**facts, "build": {"status": "built", "run_seconds": secs, "version": m["version"]},
            "patches": m["patches"], "smoke": {"turbo4": "PASS (smoke --host)"}})
