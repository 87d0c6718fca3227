"""An Ollama two tags ahead of the fork's base (sample world "ollama-ahead"): its compat patches carried onto
the fork by build-ollama and api-check, each hunk by the method that places it, and every refusal.

Upstream b120 moved on under Ollama's hooks patch the ways the real llama.cpp moved: an include beside the
hook include (only a placement rule places that hunk), a reworded log line (a 3-way merge with b120 places
it), an indented block (its context, indentation aside), two alike loops (ambiguous by context alone); a
patch fixes the ``nova`` architecture the fork lacks, one the web UI the build turns off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.core import manifest, proc
from ollama_turbo.sample.gitrepo import Repo

from .conftest import bench, invoke, serving
from .test_build_cuda import fake_nvcc

pytestmark = pytest.mark.sample

HOOKS = "llama/compat/0002-llama-cpp-hooks.patch"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> sample.World:
    return sample.generate(tmp_path_factory.mktemp("ahead") / "w", sample.scenario("ollama-ahead"))


def rules_file(world: sample.World, dest: Path, sha: str = "") -> Path:
    """The user's placement rule for the one hunk nothing else places: the include beside upstream's new one."""
    sha = sha or manifest.sha256(world.ollama_c / HOOKS)
    dest.write_text(f"""- patch: {HOOKS}
  sha256: {sha}
  hunk: 1
  file: src/llama-model-loader.c
  anchor: '^#include "llama\\.h"$'
  where: after
  why: b120 put llama-arch.h between, which the fork lacks
""")
    return dest


def run(world: sample.World, tmp: Path, *args: str, task: str = "build-ollama") -> tuple[int, str, str]:
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp / "ws"), "INVOKE_TURBO_SOURCES_UPSTREAM_URL": str(world.upstream)}
    r = invoke(task, "--ollama", str(world.ollama_c), "--fork", str(world.fork), *args,
               *(("--backend", "cpu") if task == "build-ollama" else ()), env=env)
    return r.returncode, r.stdout, r.stderr


def test_a_hunk_nothing_places_stops_the_plan_naming_it(world: sample.World, tmp_path: Path) -> None:
    code, out, err = run(world, tmp_path, "--dry-run")
    assert code == 1, out
    assert (f"{HOOKS}: hunk 1 (src/llama-model-loader.c @@ -4,6 +4,7 @@, adding '#include "
            "\"llama-ollama-compat.h\"') cannot be placed in the fork") in err
    assert "beside the hunk the fork has 'nothing' where llama.cpp b120" in err and "llama-arch.h" in err
    assert "rule: no placement rule names it" in err and "next step: add a placement rule" in err
    assert not (tmp_path / "ws").exists()


def test_a_feature_the_fork_lacks_is_refused_until_left_out(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, _, err = run(world, tmp_path, "--dry-run", "--placements", str(rules))
    assert code == 1
    assert ("llama/compat/models/0004-llama-cpp-nova-tokens.patch concerns model architecture nova, which the "
            "fork's llama.cpp lacks (no LLM_ARCH_NOVA in src/llama-arch.h)") in err
    assert "the fork has no src/models/nova.cpp" in err and "--leave-out nova" in err


def test_the_plan_says_how_each_hunk_was_placed(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, out, err = run(world, tmp_path, "--dry-run", "--placements", str(rules), "--leave-out", "nova",
                         "--json", str(tmp_path / "plan.json"))
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    bench(f"carry the sample Ollama v0.32.0's 4 compat patches onto the fork: {plan['carry_seconds']:.2f} s "
          "(target: under 5 s)")
    hunks = {p["patch"]: p for p in plan["patches"]}
    got = [(h["hunk"], h["method"], h["line"]) for h in hunks[HOOKS]["hunks"]]
    assert got == [(1, "rule", 6), (2, "3-way", 20), (3, "3-way", 31), (4, "3-way", 43), (5, "context", 51)]
    assert hunks[HOOKS]["status"] == "carried" and "indentation aside" in hunks[HOOKS]["hunks"][4]["detail"]
    assert hunks["llama/compat/0001-server-report-ollama-compat.patch"]["status"] == "applied"
    assert hunks["llama/compat/0003-llama-cpp-ui-empty-assets.patch"]["status"] == "not-needed"
    assert hunks["llama/compat/models/0004-llama-cpp-nova-tokens.patch"]["status"] == "left-out"
    assert "hunk 5   context  src/llama-model-loader.c:51" in out and "dry run: nothing was built" in out


def test_without_a_pinned_upstream_the_alike_loops_are_ambiguous(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, _, err = run(world, tmp_path, "--dry-run", "--placements", str(rules), "--leave-out", "nova",
                       "--upstream", str(world.ollama_c))  # a repository without the tag b120
    assert code == 1
    assert "hunk 2 (src/llama-model-loader.c @@ -17,6 +18,9 @@" in err and "is ambiguous in the fork" in err
    assert "3-way merge: no pinned upstream (upstream: ref 'b120' not found" in err
    assert "occur 2 times in the fork's file (line 20, line 28)" in err


def test_a_rule_for_another_version_of_the_patch_is_not_used(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml", sha="ab" * 32)
    code, _, err = run(world, tmp_path, "--dry-run", "--placements", str(rules), "--leave-out", "nova")
    assert code == 1
    assert "the placement rule for hunk 1" in err and "checked against other versions of that patch" in err
    assert "(sha256 abababababab); this one is" in err


def test_an_upstream_whose_tag_is_not_the_pin_is_refused(world: sample.World, tmp_path: Path) -> None:
    fake = Repo.init(tmp_path / "fake-upstream", branch="master")  # b110's files under the tag b120
    proc.run(["git", "-C", str(world.upstream), "archive", "-o", str(tmp_path / "b110.tar"), "b110"])
    proc.run(["tar", "-xf", str(tmp_path / "b110.tar"), "-C", str(fake.path)])
    fake.commit("llama : b110 under another name", tag="b120")
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, _, err = run(world, tmp_path, "--dry-run", "--placements", str(rules), "--leave-out", "nova",
                       "--upstream", str(fake.path))
    assert code == 1
    assert f"llama.cpp b120 ({fake.path}) is not the llama.cpp this Ollama pins: hunk" in err
    assert "next step: point turbo.sources.upstream" in err


def test_api_check_reports_the_carry_and_what_was_left_out(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, out, err = run(world, tmp_path, "--placements", str(rules), "--leave-out", "nova",
                         "--upstream", str(world.upstream), "--json", str(tmp_path / "r.json"), task="api-check")
    rep = json.loads((tmp_path / "r.json").read_text())
    kinds = {c["kind"]: c for c in rep["changes"] if c["kind"] in ("patch_carried", "feature_left_out")}
    assert kinds["patch_carried"]["counts_as"] == "review" and "1 rule, 3 3-way, 1 context" in \
        kinds["patch_carried"]["detail"]
    assert kinds["feature_left_out"]["symbol"] == "model architecture nova"
    assert "hunk 4   3-way    src/llama-model-loader.c:43" in out and rep["merge_base"].startswith("llama.cpp b120")
    code, _, _ = run(world, tmp_path, "--placements", str(rules), "--upstream", str(world.upstream),
                     "--json", str(tmp_path / "r2.json"), task="api-check")
    rep = json.loads((tmp_path / "r2.json").read_text())
    refused = [c for c in rep["changes"] if c["kind"] == "patch_refused"]
    assert code & 8 and refused[0]["symbol"] == "0004-llama-cpp-nova-tokens.patch"


def test_the_carried_build_runs_ollamas_hooks_in_the_fork(world: sample.World, tmp_path: Path) -> None:
    rules = rules_file(world, tmp_path / "placements.yaml")
    code, out, err = run(world, tmp_path, "--placements", str(rules), "--leave-out", "nova")
    assert code == 0, err
    assert "give Ollama's CMake the 4 compat patches as carried onto the fork" in out
    dist = Path(out.strip().splitlines()[-1])
    m = manifest.load(dist)
    assert m.left_out == ["model architecture nova"]
    hooks = next(p for p in m.data["patches"] if p["patch"] == HOOKS)
    assert [h["method"] for h in hooks["hunks"]] == ["rule", "3-way", "3-way", "3-way", "context"]
    assert m.data["pinned"]["merge_base"].startswith("llama.cpp b120")
    log = tmp_path / "serve.log"
    with serving(dist / "bin/ollama", log, {"OLLAMA_MODELS": str(tmp_path / "m")}) as client:
        client.create("s", gguf=world.model)
        assert client.generate("s", "hi", num_predict=1)["eval_count"] == 1
    text = log.read_text(errors="replace")
    # Ollama's compat sources are linked into the fork's llama library, and its call sites run there
    assert "ollama compat: translated the metadata of sha256-" in text  # the model's blob
    assert "ollama compat: loader hooks ran: 2 tensors kept, 0 hidden" in text


def test_with_no_ref_the_newest_release_the_fork_takes_is_built(world: sample.World, tmp_path: Path) -> None:
    url = f"file://{world.ollama_c}"
    shutil.rmtree(tmp_path / "ws", ignore_errors=True)
    r = invoke("build-ollama", "--ollama", url, "--fork", str(world.fork), "--backend", "cpu", "--dry-run",
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws"),
                    "INVOKE_TURBO_SOURCES_UPSTREAM_URL": str(world.upstream)})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[:2]
    assert first[0] == ("Ollama v0.31.0: the newest release whose compat patches the fork can take (no "
                        "--ollama-ref or turbo.sources.ollama.ref named)")
    assert first[1].startswith("  passed over v0.32.0: llama/compat/0002-llama-cpp-hooks.patch: hunk 1")
    assert "0.31.0-turbo+" in r.stdout


def test_the_gpu_half_of_a_two_part_build_configures_with_the_carried_patches(world: sample.World,
                                                                              tmp_path: Path) -> None:
    # both halves run Ollama's CMake, which applies the compat patches: the second half must hand it the carried
    # ones too, or its configure stops at Ollama's own patch (which does not apply to the fork)
    rules = rules_file(world, tmp_path / "rules.yaml")
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws"), "INVOKE_TURBO_SOURCES_UPSTREAM_URL": str(world.upstream),
           "PATH": fake_nvcc(tmp_path)}
    common = ("build-ollama", "--ollama", str(world.ollama_c), "--fork", str(world.fork), "--backend", "cuda",
              "--cuda-arch", "90", "--placements", str(rules), "--leave-out", "nova")
    r = invoke(*common, "--part", "base", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    part = next((tmp_path / "ws" / "parts").iterdir())
    r = invoke(*common, "--base-from", str(part), env=env)
    assert "give Ollama's CMake the" in r.stdout and "compat patches as carried onto the fork" in r.stdout
    assert "does not apply" not in r.stdout + r.stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "ws" / "logs").glob("*.log"))
    assert "patch does not apply" not in logs
