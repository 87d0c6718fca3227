"""ggml's CPU variants: naming a SIGILL, leaving variants out of a build or of a host's release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.builder import cpu_exclude
from ollama_turbo.builder.options import Options
from ollama_turbo.builder.plan import build_identity, check_options
from ollama_turbo.core import cpu_variants as cv
from ollama_turbo.core import manifest
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, UsageError
from ollama_turbo.deploy import cpu_guard
from ollama_turbo.deploy.record import parse as parse_record
from ollama_turbo.prove.smoke import Check, SmokeResult, sigill

from .conftest import invoke

LIB = "lib/ollama"
ALL = ["x64", "sse42", "sandybridge", "haswell", "skylakex", "icelake", "alderlake", "sapphirerapids", "zen4"]
FILES = {f"{LIB}/libggml-cpu-{v}.so": "0" * 64 for v in ALL} | {f"{LIB}/llama-server": "1" * 64,
                                                               "bin/ollama": "2" * 64}
FIELD_LOG = """time=2026-12-01T10:00:00Z level=INFO msg="starting llama server" cmd="llama-server --model /m"
load_backend: loaded CPU backend from /home/u/.ollama-turbo/releases/v/lib/ollama/libggml-cpu-sapphirerapids.so
time=2026-12-01T10:00:02Z level=ERROR msg="llama-server process has terminated: signal: illegal instruction"
"""
AMX_HOST = ("flags\t\t: fpu vme pni ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq "
            "avx512bw avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\nflags\t\t: other core\n")


def test_the_loaded_variant_is_read_from_the_load_backend_line() -> None:
    assert cv.loaded_variant(FIELD_LOG) == (
        "sapphirerapids", "/home/u/.ollama-turbo/releases/v/lib/ollama/libggml-cpu-sapphirerapids.so")
    assert cv.loaded_variant("load_backend: using device CPU") is None
    assert cv.variant_of("lib/ollama/libggml-cpu-zen4.so") == "zen4"
    assert cv.variant_of("lib/ollama/libggml-base.so") is None


@pytest.mark.parametrize("text", ["signal: illegal instruction", "Illegal instruction (core dumped)",
                                  "exit status 132", "killed by SIGILL", "terminated: signal 4"])
def test_a_sigill_is_recognised_however_it_is_said(text: str) -> None:
    assert cv.is_sigill(text)


@pytest.mark.parametrize("text", ["signal: killed", "exit status 1", "signal 9", "status 1320"])
def test_other_deaths_are_not_a_sigill(text: str) -> None:
    assert not cv.is_sigill(text)


def test_a_sigill_is_named_with_the_variant_its_flags_and_the_way_out() -> None:
    line = cv.explain_sigill(FIELD_LOG, where="v's server on vm", host="vm")
    assert "\n" not in line
    assert "SIGILL, exit 132" in line and "CPU variant sapphirerapids" in line
    assert "amx_tile amx_int8 amx_bf16" in line
    assert "turbo.hosts.vm.cpu_exclude: [sapphirerapids]" in line and "--cpu-exclude sapphirerapids" in line
    unnamed = cv.explain_sigill("signal: illegal instruction", where="x")
    assert "names no CPU variant" in unnamed and "cpu_exclude" in unnamed


def test_the_expected_pick_on_an_amx_host_is_sapphirerapids_and_without_it_zen4() -> None:
    flags = cv.parse_cpu_flags(AMX_HOST)
    assert "amx_tile" in flags and "core" not in flags
    assert cv.expected_pick(ALL, flags) == "sapphirerapids"
    assert cv.expected_pick([v for v in ALL if v != "sapphirerapids"], flags) == "zen4"
    assert cv.missing("alderlake", flags) == ("avx_vnni",)
    assert cv.expected_pick(["haswell"], {"pni"}) is None


def test_macos_sysctl_flags_are_read_in_linux_names() -> None:
    text = ("machdep.cpu.features: FPU SSE3 SSSE3 SSE4.1 SSE4.2 AVX1.0 F16C\n"
            "machdep.cpu.leaf7_features: AVX2 BMI2 FMA\nmachdep.cpu.brand_string: Intel\n")
    flags = cv.parse_cpu_flags(text)
    assert {"pni", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"} <= flags
    assert cv.expected_pick(ALL, flags) == "haswell"


def test_excluding_names_the_files_and_what_remains() -> None:
    ex = cv.exclude(["sapphirerapids", "sapphirerapids"], FILES, key="k")
    assert ex.excluded == {"sapphirerapids": f"{LIB}/libggml-cpu-sapphirerapids.so"}
    assert "zen4" in ex.remaining and "sapphirerapids" not in ex.remaining
    assert cv.exclude(["zen4"], ["bin/ollama"], key="k").absent == ("zen4",)


def test_an_unknown_variant_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UsageError) as e:
        cv.exclude(["sapphire"], FILES, key="turbo.hosts.vm.cpu_exclude")
    assert "turbo.hosts.vm.cpu_exclude: 'sapphire' is not a CPU variant" in e.value.message
    assert "sapphirerapids" in e.value.message and e.value.exit_code == 2
    # a variant the build ships is known even where our table lacks it
    assert cv.exclude(["armv9"], [*FILES, f"{LIB}/libggml-cpu-armv9.so"], key="k").excluded


def test_excluding_every_variant_is_refused_naming_what_there_is() -> None:
    with pytest.raises(UsageError) as e:
        cv.exclude(["haswell", "x64"], [f"{LIB}/libggml-cpu-haswell.so", f"{LIB}/libggml-cpu-x64.so"], key="k")
    assert "leaves no CPU variant at all" in e.value.message and "haswell, x64" in e.value.message


def test_the_build_leaves_variants_out_of_its_stage_and_records_them(tmp_path: Path) -> None:
    lib = tmp_path / LIB
    lib.mkdir(parents=True)
    for v in ("x64", "zen4", "sapphirerapids"):
        (lib / f"libggml-cpu-{v}.so").write_text(v)
    rec = cpu_exclude.leave_out(tmp_path, ("sapphirerapids",))
    assert rec is not None and rec["excluded"] == ["sapphirerapids"] and rec["shipped"] == ["x64", "zen4"]
    assert "build-ollama --cpu-exclude" in rec["why"]
    assert not (lib / "libggml-cpu-sapphirerapids.so").exists() and (lib / "libggml-cpu-zen4.so").exists()
    assert cpu_exclude.leave_out(tmp_path, ()) == {"shipped": ["x64", "zen4"]}
    with pytest.raises(UsageError, match="leaves no CPU variant"):
        cpu_exclude.leave_out(tmp_path, ("x64", "zen4"))


def test_the_build_flag_is_checked_before_any_source_and_changes_the_identity() -> None:
    with pytest.raises(UsageError, match="--cpu-exclude: 'amx' is not a CPU variant"):
        check_options(Options(cpu_exclude=("amx",)), "cpu")
    check_options(Options(cpu_exclude=("sapphirerapids",)), "cpu")
    plain = build_identity("o", "f", "cpu", "cpu", [])
    assert plain == build_identity("o", "f", "cpu", "cpu", [], cpu_exclude=())
    assert plain != build_identity("o", "f", "cpu", "cpu", [], cpu_exclude=("sapphirerapids",))


def test_settings_take_cpu_exclude_per_host_and_per_build() -> None:
    s = config.parse({"build": {"cpu_exclude": ["sapphirerapids"]},
                      "hosts": {"vm": {"ssh": "vm", "os": "linux", "cpu_exclude": "sapphirerapids, zen4"}}})
    assert s.build.cpu_exclude == ("sapphirerapids",)
    assert s.hosts["vm"].cpu_exclude == ("sapphirerapids", "zen4")
    with pytest.raises(ConfigError, match=r"turbo.hosts.vm.cpu_exclude"):
        config.parse({"hosts": {"vm": {"ssh": "vm", "os": "linux", "cpu_exclude": [3]}}})


def _manifest(tmp_path: Path, files: dict[str, str]) -> manifest.Manifest:
    data = {"version": "0.30.0-turbo+abc.cpu.123456", "era": "C", "backend": "cpu", "files": files,
            "cpu_variants": {"shipped": sorted(cv.variants_in(files))}}
    return manifest.parse(json.dumps(data), tmp_path / "manifest.json")


def test_a_hosts_release_leaves_its_variants_out_and_its_record_says_so(tmp_path: Path) -> None:
    host = config.parse({"hosts": {"vm": {"ssh": "vm", "os": "linux", "cpu_exclude": ["sapphirerapids"]}}}).hosts["vm"]
    m = cpu_guard.for_host(_manifest(tmp_path, FILES), host)
    assert f"{LIB}/libggml-cpu-sapphirerapids.so" not in m.files and f"{LIB}/libggml-cpu-zen4.so" in m.files
    assert m.data["files"] == m.files and m.dist == tmp_path  # the build's files are still read from the dist
    said = cpu_guard.host_excluded(m)
    assert said["host_excluded"] == ["sapphirerapids"] and "cpu_exclude" in said["why"]
    assert "sapphirerapids" not in said["shipped"]
    other = config.parse({"hosts": {"mac": {"ssh": "mac"}}}).hosts["mac"]
    assert cpu_guard.for_host(_manifest(tmp_path, FILES), other).files == FILES
    rec = parse_record(json.dumps({"schema": 1, "version": "v", "server_kv": "f16/f16",
                                                 "cache_env": {}, "cpu_variants": said}), "deployed.json")
    assert rec.cpu_variants["host_excluded"] == ["sapphirerapids"] and rec.to_json()["cpu_variants"] == said
    every = config.parse({"hosts": {"vm": {"ssh": "vm", "os": "linux", "cpu_exclude": ALL}}}).hosts["vm"]
    with pytest.raises(UsageError, match="turbo.hosts.vm.cpu_exclude: leaving out .* leaves no CPU variant"):
        cpu_guard.for_host(_manifest(tmp_path, FILES), every)


def test_a_smoke_whose_runner_died_of_sigill_names_the_variant() -> None:
    r = SmokeResult(url="u", api="ollama", model="m",
                    checks=[Check("generate", False, 0.1, "ApiError: llama runner process has terminated: "
                                                           "signal: illegal instruction: ")])
    sigill(r, lambda: FIELD_LOG)
    assert r.checks[-1].name == "cpu variant" and "CPU variant sapphirerapids" in r.checks[-1].evidence
    fine = SmokeResult(url="u", api="ollama", model="m", checks=[Check("generate", False, 0.1, "timeout")])
    sigill(fine, lambda: FIELD_LOG)
    assert [c.name for c in fine.checks] == ["generate"]


@pytest.mark.sample
def test_build_ollama_leaves_a_variant_out_of_the_dist_and_records_it(world: sample.World, tmp_path: Path) -> None:
    """The cpu preset's variant libraries stand in the llama-server build's cache (the sample's llama.cpp builds
    none), as Ollama's CMake installs them beside llama-server; build-ollama copies them into the dist."""
    ws = tmp_path / "ws"
    s = config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})
    plain = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    assert "cpu_variants" not in plain.manifest
    (cached,) = (ws / "cache" / "llama-server").glob("*/lib/ollama")
    for v in ("x64", "haswell", "zen4", "sapphirerapids"):
        (cached / f"libggml-cpu-{v}.so").write_text(v)
    args = ("build-ollama", "--ollama", str(world.ollama_c), "--fork", str(world.fork), "--backend", "cpu")
    e = {"INVOKE_TURBO_WORKSPACE": str(ws)}
    r = invoke(*args, "--cpu-exclude", "sapphirerapids", "--json", str(tmp_path / "m.json"), env=e)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left out CPU variants sapphirerapids; shipped: haswell, x64, zen4" in r.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["version"] != plain.plan.version  # another build: another release on the hosts
    assert m["cpu_variants"]["excluded"] == ["sapphirerapids"] and "--cpu-exclude" in m["cpu_variants"]["why"]
    assert "lib/ollama/libggml-cpu-sapphirerapids.so" not in m["files"]
    assert "lib/ollama/libggml-cpu-zen4.so" in m["files"]
    assert not (Path(m["dist"]) / "lib/ollama/libggml-cpu-sapphirerapids.so").exists()
    r = invoke(*args, "--cpu-exclude", "x64,haswell,zen4,sapphirerapids", env=e)
    assert r.returncode == 2 and "leaves no CPU variant at all" in r.stderr and "Traceback" not in r.stderr
    r = invoke(*args, "--cpu-exclude", "amx", "--dry-run", env=e)
    assert r.returncode == 2 and "--cpu-exclude: 'amx' is not a CPU variant (known: x64" in r.stderr


def test_every_variant_a_real_cpu_preset_ships_is_known_with_its_flags() -> None:
    # the libggml-cpu-*.so files of a real cpu-preset dist (Ollama main + the fork, x86-64)
    shipped = ["alderlake", "cannonlake", "cascadelake", "cooperlake", "haswell", "icelake", "ivybridge",
               "piledriver", "sandybridge", "sapphirerapids", "skylakex", "sse42", "x64", "zen4"]
    assert set(shipped) <= set(cv.VARIANTS)
    # each needs at least what the weaker one beside it needs
    needs = cv.VARIANTS
    assert set(needs["sandybridge"]) < set(needs["ivybridge"]) < set(needs["piledriver"])
    assert set(needs["skylakex"]) < set(needs["cascadelake"]) < set(needs["cooperlake"])
    assert "avx2" not in needs["piledriver"] and "avx512ifma" in needs["cannonlake"]
