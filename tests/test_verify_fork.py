"""invoke verify-fork on the sample fork: a correct quantizer, and each fault it must name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.check import lloyd_max, verify_fork
from ollama_turbo.check.quantizer_tables import Found, Table
from ollama_turbo.core import proc

from .conftest import bench, invoke

pytestmark = pytest.mark.sample
SCENARIOS = ("clean", "quant-suboptimal", "quant-backends-disagree", "quant-inverse-signs")


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sample.World]:
    root = tmp_path_factory.mktemp("vworlds")
    return {n: sample.generate(root / n, sample.scenario(n)) for n in SCENARIOS}


def run(world: sample.World, tmp_path: Path, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "verify.json"
    r = invoke("verify-fork", "--fork", str(world.fork), "--json", str(out), *extra,
               env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode in (0, 4, 8), r.stdout + r.stderr
    return r.returncode, json.loads(out.read_text()), r.stdout


def item(report: dict, name: str) -> dict:
    return next(i for i in report["items"] if i["item"].startswith(name))


def test_a_correct_quantizer_passes_every_check(forks: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, text = run(forks["clean"], tmp_path)
    assert code == 0 and rep["verdict"] == "PASS", text
    assert {i["verdict"] for i in rep["items"]} == {"PASS"}
    t4 = rep["tables"]["turbo4"]
    assert t4["file"] == "ggml/src/ggml-turbo-quant.c:19" and t4["mse_ratio"] < 1.0001
    # measured with the fork's own C code: the round trip matches what the table predicts
    for name in ("turbo2", "turbo3", "turbo4"):
        got = rep["tables"]["measured"][name]["relative_mse"]
        assert abs(got - rep["tables"][name]["predicted_relative_mse"]) / got < 0.2
    assert "| Item | Verdict | Evidence |" in text
    bench(f"verify-fork on the sample fork: static {rep['seconds']['static']:.2f} s, "
          f"dynamic {rep['seconds']['dynamic']:.2f} s")


def test_a_table_far_from_lloyd_max_fails_naming_file_and_line(forks: dict[str, sample.World],
                                                               tmp_path: Path) -> None:
    code, rep, text = run(forks["quant-suboptimal"], tmp_path)
    assert code == 8 and rep["verdict"] == "FAIL"
    bad = item(rep, "turbo4: Lloyd-Max codebook")
    assert bad["verdict"] == "FAIL" and "ggml/src/ggml-turbo-quant.c:19 CENTROIDS_4BIT: MSE" in bad["evidence"]
    assert item(rep, "turbo3: Lloyd-Max codebook")["verdict"] == "PASS"
    # the code does what its (bad) table says: the dynamic check agrees with the table's prediction
    assert item(rep, "turbo4: Dequantize matches quantize")["verdict"] == "PASS"
    assert rep["tables"]["measured"]["turbo4"]["relative_mse"] > 1.5 * rep["tables"]["turbo4"]["optimum_mse"] * 128


def test_backends_that_disagree_fail_naming_both_copies(forks: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(forks["quant-backends-disagree"], tmp_path)
    assert code == 8
    bad = item(rep, "turbo3: every backend stores the same table")
    assert bad["verdict"] == "FAIL"
    assert ("ggml/src/ggml-metal/ggml-metal.metal:20 turbo_centroids_3bit (Metal) differs from "
            "ggml/src/ggml-turbo-quant.c:15") in bad["evidence"]
    assert item(rep, "turbo2: every backend stores the same table")["verdict"] == "PASS"


def test_an_inverse_rotation_with_other_signs_fails(forks: dict[str, sample.World], tmp_path: Path) -> None:
    code, rep, _ = run(forks["quant-inverse-signs"], tmp_path)
    assert code == 8
    bad = item(rep, "Same rotation for quantize and dequantize")
    assert bad["verdict"] == "FAIL"
    assert "ggml/src/ggml-turbo-quant.c:" in bad["evidence"] and "turbo_cpu_fwht_inverse applies turbo_cpu_s1, " \
        "turbo_cpu_s2" in bad["evidence"]
    # and the round trip through the real code no longer returns the input
    assert item(rep, "turbo4: Dequantize matches quantize")["verdict"] == "FAIL"


def test_a_table_close_to_but_not_at_the_optimum_is_for_review() -> None:
    sigma = 1 / math.sqrt(128)
    best = lloyd_max.optimum(16, sigma)
    nudged = tuple(x * 1.06 for x in best)
    found = Found(centroids={b: [Table(f"CENTROIDS_{b}BIT", "q.c", b, "CPU",
                                       tuple(x * (1.06 if b == 4 else 1.0) for x in lloyd_max.optimum(2 ** b, sigma)))]
                             for b in (2, 3, 4)})
    report = verify_fork.Report({"url": "u", "ref": "r", "sha": "0" * 40})
    verify_fork.check_tables(found, 128, report)
    four = next(i for i in report.items if i.item.startswith("turbo4: Lloyd-Max"))
    assert 1.005 < lloyd_max.quality(nudged, sigma).ratio < 1.05
    assert four.verdict == "REVIEW" and report.exit_code() == 4


def test_bad_input(forks: dict[str, sample.World], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = forks["clean"]
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
    # a tree with no turbo types (upstream llama.cpp)
    r = invoke("verify-fork", "--fork", str(w.upstream), "--fork-ref", "b110", env=env)
    assert r.returncode == 1 and "no turbo cache types in common/arg.cpp" in r.stderr, r.stderr
    # a table that cannot be parsed names its file and line
    clone = tmp_path / "fork"
    proc.run(["git", "clone", "-q", "-b", "feature/turboquant-kv-cache", str(w.fork), str(clone)])
    src = clone / "ggml/src/ggml-turbo-quant.c"
    src.write_text(src.read_text().replace("-0.133503f", "-TURBO_EDGE_2BIT", 1))
    proc.run(["git", "-C", str(clone), "commit", "-qam", "table as an expression"])
    r = invoke("verify-fork", "--fork", str(clone), env=env)
    assert r.returncode == 1 and "ggml/src/ggml-turbo-quant.c:11 (CENTROIDS_2BIT): cannot read the table: " \
        "'-TURBO_EDGE_2BIT' is not a number" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # no C compiler: the static part still runs and says what was skipped
    from ollama_turbo.check import quantizer_run

    monkeypatch.setattr(quantizer_run, "compiler", lambda: None)
    from ollama_turbo.core import settings as config

    rep = verify_fork.verify_checkout(config.parse({"workspace": str(tmp_path / "ws2")}), str(w.fork))
    skipped = next(i for i in rep.items if i.item.startswith("Dequantize matches quantize"))
    assert skipped.verdict == "skip" and "no C compiler" in skipped.evidence and rep.exit_code() == 0
    assert any(i.item.startswith("turbo4: Lloyd-Max") and i.verdict == "PASS" for i in rep.items)


def test_build_ollama_refuses_a_failing_quantizer_unless_told(forks: dict[str, sample.World], tmp_path: Path) -> None:
    w = forks["quant-suboptimal"]
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")}
    args = ("build-ollama", "--ollama", str(w.ollama_c), "--fork", str(w.fork), "--backend", "cpu")
    r = invoke(*args, env=env)
    assert r.returncode == 1 and "verify-fork: the fork's quantizer fails 1 check(s): turbo4: Lloyd-Max" in r.stderr
    assert "--skip-verify" in r.stderr and not (tmp_path / "ws/dist").exists()
    r = invoke(*args, "--skip-verify", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(next((tmp_path / "ws/dist").glob("*/manifest.json")).read_text())
    assert m["verify_fork"]["verdict"] == "FAIL" and m["verify_fork"]["skipped"] is True
    assert m["verify_fork"]["failing"][0].startswith("turbo4: Lloyd-Max codebook")


# Max, "Quantizing for minimum distortion" (IRE Trans. Inform. Theory, 1960), Table I: the optimum levels
# for a unit Gaussian (the positive half) and their mean squared error.
MAX_1960 = {
    4: ([0.4528, 1.510], 0.1175),
    8: ([0.2451, 0.7560, 1.344, 2.152], 0.03454),
    16: ([0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733], 0.009497),
}


@pytest.mark.parametrize("levels", sorted(MAX_1960))
def test_the_lloyd_max_oracle_is_pinned_to_the_published_optimum(levels: int) -> None:
    import math

    half, error = MAX_1960[levels]
    got = lloyd_max.optimum(levels, 1.0)
    assert [round(-x, 4) for x in reversed(got[:levels // 2])] == pytest.approx(half, abs=6e-4)
    assert got[levels // 2:] == pytest.approx(half, abs=6e-4)
    assert lloyd_max.mse(got, 1.0) == pytest.approx(error, rel=1e-3)
    # the d = 128 tables TurboQuant uses are these levels over sqrt(128): ±0.0400 and ±0.1335 for 2 bits
    scaled = lloyd_max.optimum(levels, 1 / math.sqrt(128))
    assert scaled == pytest.approx([x / math.sqrt(128) for x in got], rel=1e-6)
    if levels == 4:
        assert [round(x, 4) for x in scaled[2:]] == [0.04, 0.1335]


def test_the_sample_forks_tables_are_its_own_constants_and_verify_fork_checks_them() -> None:
    import math

    from ollama_turbo.sample import turbo_quant

    for bits, half in turbo_quant.CENTROIDS.items():
        best = lloyd_max.optimum(2 ** bits, 1 / math.sqrt(128))[2 ** bits // 2:]
        assert half == pytest.approx(best, abs=2e-6)  # typed in, and still the optimum
    squeezed = turbo_quant.tables(turbo_quant.Faults(suboptimal_4bit=True))[4]
    assert lloyd_max.quality(squeezed, 1 / math.sqrt(128)).ratio > 1.2
