"""build-ollama --backend cuda where no CUDA toolkit is (this machine, CI): the plan, the base part built
here for a GPU box, and every refusal before CMake. The GPU backend itself is built on the GPU box
(docs/compatibility.md records the H200 run)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ollama_turbo import sample
from ollama_turbo.core import gpu, manifest
from ollama_turbo.sample.gitrepo import Repo

from .conftest import invoke

pytestmark = pytest.mark.sample

no_nvcc = pytest.mark.skipif(shutil.which("nvcc") is not None, reason="this machine has a CUDA toolkit")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> sample.World:
    return sample.generate(tmp_path_factory.mktemp("cworld") / "clean", sample.scenario("clean"))


def build(world: sample.World, ws: Path, *args: str, path: str | None = None,
          ollama: Path | None = None) -> tuple[int, str, str]:
    env = {"INVOKE_TURBO_WORKSPACE": str(ws)}
    if path is not None:
        env["PATH"] = path
    r = invoke("build-ollama", "--ollama", str(ollama or world.ollama_c), "--fork", str(world.fork),
               "--backend", "cuda", *args, env=env)
    return r.returncode, r.stdout, r.stderr


def fake_nvcc(tmp_path: Path) -> str:
    """A PATH with an ``nvcc`` that answers --version and nothing else: the checks run before any CUDA work."""
    bin_dir = tmp_path / "fake-cuda"
    bin_dir.mkdir()
    (bin_dir / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n"
                                  "echo 'Build cuda_13.0.r13.0/compiler.0'\n")
    (bin_dir / "nvcc").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_nvidia_smi_answers_are_read_as_cmake_architectures() -> None:
    assert gpu.parse_query("NVIDIA H200, 9.0\nNVIDIA L4, 8.9\n") == [("NVIDIA H200", "90"), ("NVIDIA L4", "89")]
    assert gpu.parse_query("No devices were found\n") == []
    assert gpu.base_arch("90a") == "90"


@no_nvcc
def test_a_cuda_build_without_nvcc_stops_before_cmake_and_names_the_toolkit(world: sample.World,
                                                                           tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    code, out, err = build(world, ws, "--cuda-arch", "90")
    assert code == 1, err
    assert "--backend cuda needs nvcc (the CUDA toolkit) on PATH" in err
    assert "install the CUDA toolkit 12 or 13" in err
    assert not (ws / "dist").exists() and not (ws / "build").exists()


def test_the_cuda_plan_builds_the_cpu_base_and_one_gpu_architecture(world: sample.World, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    plans = {}
    for arch in ("90", "89"):
        code, out, err = build(world, ws, "--cuda-arch", arch, "--dry-run", "--json", str(tmp_path / f"{arch}.json"))
        assert code == 0, err
        assert f"for sm_{arch}" in out
        plans[arch] = json.loads((tmp_path / f"{arch}.json").read_text())
    commands = plans["90"]["commands"]
    assert any("--preset cpu" in c for c in commands)
    assert any("-DCMAKE_CUDA_ARCHITECTURES=90" in c and "--preset llama_cuda_v1" in c for c in commands)
    assert any(c.endswith("--target ggml-cuda") for c in commands)
    assert ".cuda." in plans["90"]["version"] and plans["90"]["version"] != plans["89"]["version"]
    assert not (ws / "dist").exists()


def test_a_cuda_arch_that_is_no_architecture_is_refused(world: sample.World, tmp_path: Path) -> None:
    code, _, err = build(world, tmp_path / "ws", "--cuda-arch", "9.0", "--dry-run")
    assert code == 2 and "--cuda-arch '9.0' is not a CUDA architecture" in err
    assert "90 (H100/H200)" in err


@pytest.mark.parametrize(("args", "words"), [
    (["--cuda-arch", "9.0"], "--cuda-arch '9.0' is not a CUDA architecture"),
    (["--part", "top"], "--part 'top': the only part built alone is 'base'"),
    (["--part", "base", "--base-from", "/x"], "the two halves of one build: give one of them"),
    (["--base-from", "/no/such/part"], "--base-from /no/such/part: no such base part"),
])
def test_bad_cuda_flags_are_refused_before_any_source_is_opened(world: sample.World, tmp_path: Path,
                                                                 args: list[str], words: str) -> None:
    # an empty repository as Ollama: opened, it would be no Ollama at all; a flag error comes first, nothing is made
    empty = tmp_path / "empty-ollama"
    Repo.init(empty).commit("nothing yet")
    code, _, err = build(world, tmp_path / "ws", *args, ollama=empty)
    assert code == 2 and words in err, err
    assert not (tmp_path / "ws").exists()


def test_cuda_for_an_era_b_ollama_is_refused_with_the_reason(world: sample.World, tmp_path: Path) -> None:
    code, _, err = build(world, tmp_path / "ws", "--cuda-arch", "90", "--dry-run", ollama=world.ollama_b)
    assert code == 2
    assert "this Ollama is era B" in err and "era C Ollama (v0.30.0 or later)" in err


def test_parts_belong_to_cuda_builds_only(world: sample.World, tmp_path: Path) -> None:
    empty = tmp_path / "empty-ollama"  # opened, it would be no Ollama: the flag is refused first
    Repo.init(empty).commit("nothing yet")
    r = invoke("build-ollama", "--ollama", str(empty), "--fork", str(world.fork), "--backend", "cpu",
               "--part", "base", env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 2 and "a cpu build is built in one piece" in r.stderr  # before the sources are opened


def test_a_base_part_is_built_without_cuda_and_checked_where_it_is_completed(world: sample.World,
                                                                            tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    code, out, err = build(world, ws, "--cuda-arch", "90", "--part", "base")
    assert code == 0, err
    assert "built the base part of" in out and "--base-from" in out
    parts = list((ws / "parts").iterdir())
    assert len(parts) == 1 and not (ws / "dist").exists()
    part = parts[0]
    record = json.loads((part / "part.json").read_text())
    assert record["part"] == "base" and record["cuda_arch"] == "90" and record["version"] == part.name
    # the machine it was built on, told apart from one that shares its hostname
    assert set(record["machine"]) >= {"hostname", "machine_id", "cpu", "cores", "gpus"}
    assert record["parts"]["base"]["ran"].startswith("the Go binary, llama-server") or "parts" not in record
    assert (part / "bin/ollama").is_file() and (part / "lib/ollama/llama-server").is_file()
    assert not list(part.glob("lib/ollama/cuda_v*"))
    assert record["files"]["bin/ollama"]
    path = fake_nvcc(tmp_path)
    # another architecture: another identity, refused naming both versions
    code, _, err = build(world, ws, "--cuda-arch", "89", "--base-from", str(part), path=path)
    assert code == 2 and f"the base part is {part.name}" in err and ".cuda." in err and "--cuda-arch" in err
    # a file changed on the way: refused, naming it
    copy = tmp_path / "copy" / part.name
    shutil.copytree(part, copy)
    (copy / "bin/ollama").write_bytes(b"not the binary")
    code, _, err = build(world, ws, "--cuda-arch", "90", "--base-from", str(copy), path=path)
    assert code == 2 and "files differ from its record: bin/ollama" in err
    # built for another machine
    shutil.rmtree(copy)
    shutil.copytree(part, copy)
    record["platform"] = {"os": "darwin", "arch": "arm64"}
    (copy / "part.json").write_text(json.dumps(record))
    code, _, err = build(world, ws, "--cuda-arch", "90", "--base-from", str(copy), path=path)
    assert code == 2 and "built for {'os': 'darwin', 'arch': 'arm64'}" in err
    # the matching part: the plan takes it (a dry run: the CUDA backend itself needs a GPU box)
    code, out, err = build(world, ws, "--cuda-arch", "90", "--base-from", str(part), "--dry-run", path=path)
    assert code == 0, err
    assert f"# base part from {part}" in out and "--target ggml-cuda" in out
    assert not (ws / "dist").exists()


class _Host:
    """A host's answer to nvidia-smi, for the deploy's GPU check."""

    name = "predator"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def sh(self, script: str, **_: object) -> object:
        from types import SimpleNamespace

        assert script.startswith("nvidia-smi --query-gpu=name,compute_cap")
        return SimpleNamespace(stdout=self.answer, ok=True)


@pytest.mark.parametrize(("answer", "words"), [
    ("NVIDIA L4, 8.9\n", "has NVIDIA L4 (sm_89)"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", "has no NVIDIA GPU"),
    ("sh: 1: nvidia-smi: not found\n", "nvidia-smi: not found"),
])
def test_a_cuda_dist_is_refused_on_a_host_without_its_gpu_architecture(answer: str, words: str) -> None:
    from ollama_turbo.deploy import dists

    m = _cuda_manifest("90", "dist/0.30.0-turbo+abc.cuda.123456")
    with pytest.raises(dists.DeployError) as info:
        dists.check_gpu(m, _Host(answer), _Host(answer))  # type: ignore[arg-type]
    assert "is a CUDA build for sm_90" in str(info.value) and words in str(info.value)


def test_a_cuda_dist_passes_on_its_own_gpu_and_cpu_dists_ask_nothing() -> None:
    from ollama_turbo.deploy import dists

    host = _Host("NVIDIA H200, 9.0\n")
    dists.check_gpu(_cuda_manifest("90", "d"), host, host)  # type: ignore[arg-type]
    dists.check_gpu(_cuda_manifest("", "d"), host, _Host("unused"))  # type: ignore[arg-type]


def _cuda_manifest(arch: str, dist: str) -> manifest.Manifest:
    """A CUDA build's manifest for ``arch`` (a cpu build's for "")."""
    gpu_entry = {"arch": arch, "runner_dir": "lib/ollama/cuda_v13", "module": "lib/ollama/cuda_v13/libggml-cuda.so"}
    data = {"version": "v", "era": "C", "files": {}, **({"backend": "cuda", "gpu": gpu_entry} if arch
                                                        else {"backend": "cpu"})}
    return manifest.parse(json.dumps(data), Path(dist) / "manifest.json")
