"""A host whose CPU reports a variant's flags but cannot run it (the sample CPU traps on AMX): the deploy's
pre-switch probe stops on the SIGILL, naming the variant, with the host on its old release; with the variant in
the host's cpu_exclude the deploy passes, and the release, its manifest and its deploy record say what was left
out. Over a real sshd with the launchctl emulator, as tests/test_deploy.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest
from ollama_turbo.core import settings as config
from ollama_turbo.sample import cpu_host
from ollama_turbo.sample.gitrepo import Repo

from . import ssh_host
from .conftest import free_port, invoke
from .test_deploy import reset, version

pytestmark = [pytest.mark.sample, pytest.mark.skipif(ssh_host.unavailable() is not None,
                                                     reason=ssh_host.unavailable() or "")]
HERE = Path(__file__).parent
VARIANTS = ["x64", "haswell", "zen4", "sapphirerapids"]
AMX_VM = "sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    sshd = ssh_host.start(HERE / "launchctl_emulator.py")
    root = tmp_path_factory.mktemp("deploy-cpu")
    world = sample.generate(root / "world")
    ws = root / "ws"
    s = config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})
    dists = []
    for i in range(2):  # two releases: the fork gains a commit
        if i:
            Repo(world.fork).write({"README.md": "# fork, revision 1\n"})
            Repo(world.fork).commit("revision 1")
        r = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
        m = manifest.load(r.dist).data
        manifest.write(r.dist, dict(m, platform={"os": "darwin", "arch": m["platform"]["arch"]}))  # the emulated Mac
        dists.append(r.dist)
    cpu = dists[1]
    cpu_host.add_variants(cpu, VARIANTS)  # Ollama's cpu preset: a CPU backend per microarchitecture
    manifest.write(cpu, manifest.load(cpu).data)
    specs = root / "specs"
    specs.mkdir()
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: 4096\nhosts: [mac]\n")
    port = free_port()
    fleets = {}
    for name, exclude in (("plain", None), ("excluded", ["sapphirerapids"]), ("unknown", ["sapphire"]),
                          ("every", VARIANTS)):
        host = {"ssh": sshd.alias, "os": "darwin", "service": "launchd", "listen": f"127.0.0.1:{port}",
                "health_timeout": 15}
        if exclude:
            host["cpu_exclude"] = exclude
        fleets[name] = root / f"{name}.yaml"
        fleets[name].write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {"mac": host}}}))
    yield {"sshd": sshd, "old": dists[0], "cpu": cpu, "specs": specs, "port": port, "fleets": fleets}
    ssh_host.stop(sshd)


def run(env: dict, fleet: str, *args: str) -> tuple[int, str, str]:
    r = invoke("-f", str(env["fleets"][fleet]), *args, "--specs", str(env["specs"]), "--accept-unmeasured",
               env=env["sshd"].env())
    return r.returncode, r.stdout, r.stderr


def on_host(env: dict, script: str) -> None:
    h = env["sshd"]
    r = subprocess.run(["ssh", "-F", str(h.ssh_config), "-o", f"UserKnownHostsFile={h.known_hosts}", h.alias,
                       script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_cpu_that_traps_on_a_variant_is_caught_before_the_switch_and_cpu_exclude_gets_past_it(env: dict) -> None:
    reset(env)
    on_host(env, f"cat > ~/{cpu_host.CPU_FILE} <<'EOF'\n{cpu_host.cpu_text(AMX_VM, 'amx_tile')}EOF\n")
    old, new = manifest.load(env["old"]).version, manifest.load(env["cpu"]).version
    code, out, err = run(env, "plain", "deploy", "--host", "mac", "--dist", str(env["old"]))
    assert code == 0 and "3/8 probe: no CPU variant libraries in this build" in out, out + err
    assert version(env) == old

    code, out, err = run(env, "plain", "deploy", "--host", "mac", "--dist", str(env["cpu"]))
    assert code == 1, out + err
    assert "3/8 probe the new release before the switch" in out and "4/8 switch" not in out, out
    assert "died of an illegal instruction (SIGILL, exit 132) in CPU variant sapphirerapids" in err, err
    assert "amx_tile" in err and "turbo.hosts.mac.cpu_exclude: [sapphirerapids]" in err
    assert "nothing was switched: mac keeps the release it served" in err and "Traceback" not in err
    assert version(env) == old
    home = env["sshd"].home / ".ollama-turbo"
    assert (home / "current").resolve().name == old

    code, out, err = run(env, "excluded", "deploy", "--host", "mac", "--dist", str(env["cpu"]))
    assert code == 0, out + err
    assert "probe: sample warmed up on the staged port" in out, out
    assert version(env) == new
    release = home / "releases" / new
    assert not (release / "lib/ollama/libggml-cpu-sapphirerapids.so").exists()
    assert (release / "lib/ollama/libggml-cpu-zen4.so").exists()
    shipped = json.loads((release / "manifest.json").read_text())
    assert "lib/ollama/libggml-cpu-sapphirerapids.so" not in shipped["files"]
    assert shipped["cpu_variants"]["host"]["excluded"] == ["sapphirerapids"]
    record = json.loads((release / "deployed.json").read_text())["cpu_variants"]
    assert record["host_excluded"] == ["sapphirerapids"] and "zen4" in record["shipped"]
    assert "libggml-cpu-zen4.so" in (home / f"logs/probe-{new}.log").read_text(errors="replace")


@pytest.mark.parametrize(("fleet", "said"), [
    ("unknown", "turbo.hosts.mac.cpu_exclude: 'sapphire' is not a CPU variant (known: x64, sse42"),
    ("every", "turbo.hosts.mac.cpu_exclude: leaving out x64, haswell, zen4, sapphirerapids leaves no CPU variant"),
])
def test_a_bad_cpu_exclude_is_refused_before_the_host_is_touched(env: dict, fleet: str, said: str) -> None:
    code, out, err = run(env, fleet, "deploy", "--host", "mac", "--dist", str(env["cpu"]))
    assert code == 2 and said in err and "Traceback" not in err, out + err


def test_a_first_install_meets_the_sigill_in_its_smoke_and_names_it_too(env: dict) -> None:
    """No model on the host yet: the probe cannot warm up, the smoke after the switch does, and the failure names
    the variant as the probe would."""
    reset(env)
    on_host(env, f"cat > ~/{cpu_host.CPU_FILE} <<'EOF'\n{cpu_host.cpu_text(AMX_VM, 'amx_tile')}EOF\n")
    code, out, err = run(env, "plain", "deploy", "--host", "mac", "--dist", str(env["cpu"]))
    assert code == 1, out + err
    assert "none of this deploy's models is on the host yet" in out, out
    assert "failed and was rolled back (no previous release: service stopped)" in err, err
    assert "in CPU variant sapphirerapids" in err and "turbo.hosts.mac.cpu_exclude: [sapphirerapids]" in err, err
    assert version(env) is None
