"""invoke deploy / rollback / status over a real sshd, with the strict launchctl emulator.

Each test starts from a host it sets up itself (:func:`fresh`, then the releases it needs), so
they pass in any order: fresh install, upgrade (downtime measured), resumed upload, failed
health check with automatic rollback, rollback command, lock, port taken, status.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest, poll, server_kv
from ollama_turbo.core import settings as config
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.deploy import services
from ollama_turbo.sample.gitrepo import Repo

from . import ssh_host
from .conftest import bench, free_port, invoke
from .tcp_proxy import Proxy

pytestmark = [pytest.mark.sample, pytest.mark.skipif(ssh_host.unavailable() is not None,
                                                     reason=ssh_host.unavailable() or "")]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def sshd() -> Iterator[ssh_host.SSHHost]:
    h = ssh_host.start(HERE / "launchctl_emulator.py")
    yield h
    ssh_host.stop(h)


@pytest.fixture(scope="module")
def env(sshd: ssh_host.SSHHost, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("deploy")
    world = sample.generate(root / "world")
    ws = root / "ws"
    s = config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})
    fork = Repo(world.fork)
    dists = []
    for i in range(3):  # three releases: the fork gains a commit each time
        if i:
            fork.write({"README.md": f"# fork, revision {i}\n"})
            fork.commit(f"revision {i}")
        r = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
        # launchd runs only on macOS: these Linux builds stand in for Mac builds on the emulated Mac host
        m = manifest.load(r.dist).data
        manifest.write(r.dist, dict(m, platform={"os": "darwin", "arch": m["platform"]["arch"]}))
        dists.append(r.dist)
    # the quality gate: the sample model with turbo4, measured once with the build's llama-perplexity
    r = invoke("quality", "--model", str(world.model), "--manifest", str(dists[0]), "--types", "turbo4", "--ctx", "512",
               env={"INVOKE_TURBO_WORKSPACE": str(ws)})
    assert r.returncode == 0, r.stdout + r.stderr
    broken = root / "broken" / (dists[-1].name + "-broken")
    shutil.copytree(dists[-1], broken)
    # it runs for two seconds, answers nothing and exits: launchd sees it running after kickstart every time,
    # so what stops the deploy is the health check (a server that exits at once races launchd's state)
    (broken / "bin/ollama").write_text("#!/bin/sh\necho 'ollama: cannot start (broken on purpose)' >&2\n"
                                       "sleep 2\nexit 1\n")
    m = manifest.load(broken).data
    manifest.write(broken, dict(m, version=m["version"] + ".broken"))
    specs = root / "specs"
    specs.mkdir()
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: 4096\nhosts: [mac, lan]\n")
    port = free_port()
    fleet = root / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {
        "mac": {"ssh": sshd.alias, "os": "darwin", "service": "launchd", "listen": f"127.0.0.1:{port}",
                "health_timeout": 15, "keep": 2},
        "mac2": {"ssh": sshd.alias, "os": "darwin", "service": "launchd", "listen": f"127.0.0.1:{free_port()}",
                 "prefix": "~/other", "health_timeout": 15},
        # 127.0.0.2 stands in for a LAN address
        "lan": {"ssh": sshd.alias, "os": "darwin", "service": "launchd", "listen": f"127.0.0.2:{free_port()}",
                "prefix": "~/other", "health_timeout": 15},
    }}}))
    return {"root": root, "dists": dists, "broken": broken, "specs": specs, "port": port, "fleet": fleet,
            "world": world, "sshd": sshd}


def reset(env: dict) -> None:
    """The host as it was before any deploy: service gone, no releases, no models, no plist."""
    h = env["sshd"]
    script = (f"launchctl bootout gui/$(id -u)/{services.LABEL} >/dev/null 2>&1; "
              "pkill -TERM -u $(id -u) -f '[b]in/ollama serve'; "
              "for i in $(seq 100); do pgrep -u $(id -u) -f '[b]in/ollama serve' >/dev/null || break; sleep 0.1; done; "
              "pkill -KILL -u $(id -u) -f '[b]in/ollama serve'; "
              "rm -rf ~/.ollama-turbo ~/other ~/.ollama ~/Library ~/.launchctl-emulator")
    r = subprocess.run(["ssh", "-F", str(h.ssh_config), "-o", f"UserKnownHostsFile={h.known_hosts}", h.alias,
                        script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (h.home / ".ollama-turbo").exists()
    for _ in range(100):  # the port is free once the old server has gone
        if version(env) is None:
            break
        time.sleep(0.1)
    assert version(env) is None


@pytest.fixture
def fresh(env: dict) -> dict:
    reset(env)
    return env


def deployed(env: dict, *indices: int) -> None:
    """Deploy these releases in order (the host then serves the last one)."""
    for i in indices:
        code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][i]),
                             "--specs", str(env["specs"]))
        assert code == 0, out + err


def run(env: dict, *args: str, known_hosts: str | None = None) -> tuple[int, str, str]:
    e = env["sshd"].env()
    if known_hosts is not None:
        e["TURBO_KNOWN_HOSTS"] = known_hosts
    r = invoke("-f", str(env["fleet"]), *args, env=e)
    return r.returncode, r.stdout, r.stderr


def version(env: dict) -> str | None:
    try:
        return str(requests.get(f"http://127.0.0.1:{env['port']}/api/version", timeout=1).json()["version"])
    except requests.RequestException:
        return None


def version_of(dist: Path) -> str:
    return manifest.load(dist).version


def test_unknown_host_key_is_refused(env: dict, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][0]), known_hosts=str(empty))
    assert code == 1 and "is not known (ssh-ed25519 SHA256:" in err and "ssh-keyscan -p" in err


def test_a_dry_run_changes_nothing_then_a_fresh_install_applies_its_plan(fresh: dict) -> None:
    env = fresh
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][0]), "--dry-run",
                         "--specs", str(env["specs"]))
    assert code == 0, err
    assert "files to send (3): bin/ollama, lib/ollama/llama-perplexity, lib/ollama/llama-server" in out
    assert "<key>OLLAMA_KV_CACHE_TYPE</key>" in out and "dry run: nothing was changed" in out
    assert not (env["sshd"].home / ".ollama-turbo").exists()
    assert not (env["sshd"].home / "Library").exists()
    steps = re.findall(r"^  (\d+)\. (.+)$", out, re.M)
    assert [k for k, _ in steps] == [str(i) for i in range(1, 9)] and "upload 3 files (0 already there)" in out
    v1 = version_of(env["dists"][0])
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][0]), "--specs", str(env["specs"]))
    assert code == 0, out + err
    # the plan printed is the plan applied: the same steps, in the same order, with the same words
    assert re.findall(r"^\[mac\] (\d+)/8 (.+)$", out, re.M) == steps
    assert f"deployed {v1} to mac" in out and "models: sample" in out
    assert "[1/3] bin/ollama:" in out and "MB sent in" in out
    assert version(env) == v1
    home = env["sshd"].home
    plist = home / "Library/LaunchAgents" / f"{services.LABEL}.plist"
    import plistlib

    data = plistlib.loads(plist.read_bytes())
    assert data["ProgramArguments"] == [f"{home}/.ollama-turbo/current/bin/ollama", "serve"]
    assert data["EnvironmentVariables"]["OLLAMA_KV_CACHE_TYPE"] == "turbo4"
    assert data["EnvironmentVariables"]["OLLAMA_FLASH_ATTENTION"] == "1"
    assert data["WorkingDirectory"] == f"{home}/.ollama-turbo" and data["KeepAlive"] is True
    assert (home / ".ollama-turbo/current").resolve().name == v1
    models = requests.get(f"http://127.0.0.1:{env['port']}/api/tags", timeout=5).json()["models"]
    assert [m["name"] for m in models] == ["sample:latest"]
    assert "K (turbo4)" in (home / ".ollama-turbo/logs/ollama.log").read_text(errors="replace")


def test_upgrade_switches_with_little_downtime(fresh: dict) -> None:
    env = fresh
    deployed(env, 0)
    v1, v2 = version_of(env["dists"][0]), version_of(env["dists"][1])
    failures: list[float] = []
    answers: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            v = version(env)
            if v is None:
                failures.append(time.monotonic())
            else:
                answers.append(v)
            time.sleep(0.05)

    th = threading.Thread(target=poll)
    th.start()
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]), "--specs", str(env["specs"]))
    stop.set()
    th.join()
    assert code == 0, out + err
    assert version(env) == v2
    # v1 answered until the switch and v2 after it, never v1 again, and nothing else in between
    assert answers and answers[0] == v1 and answers[-1] == v2, answers
    switched = answers.index(v2)
    assert set(answers[:switched]) == {v1} and set(answers[switched:]) == {v2}, answers
    gap = (max(failures) - min(failures) + 0.05) if failures else 0.0
    bench(f"deploy upgrade over SSH (launchd emulator): downtime {gap:.2f} s measured by polling /api/version "
          "every 50 ms (target 0.5 s)")
    assert (env["sshd"].home / ".ollama-turbo/previous").read_text().strip() == v1
    # a redeploy of the current release: its previous stays v1, in the plan and in what is applied
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]), "--dry-run")
    assert code == 0 and f"switch current -> releases/{v2} (one rename; previous: {v1})" in out, out + err
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]))  # no models: quick
    assert code == 0 and f"4/8 switch current -> releases/{v2} (one rename; previous: {v1})" in out, out + err
    assert f"(previous: {v1})" in out.splitlines()[-1]
    assert (env["sshd"].home / ".ollama-turbo/previous").read_text().strip() == v1


def test_interrupted_upload_is_resumed(fresh: dict) -> None:
    env = fresh
    deployed(env, 0, 1)
    v3_dist = env["dists"][2]
    v3 = version_of(v3_dist)
    partial = env["sshd"].home / f".ollama-turbo/releases/{v3}.partial"
    (partial / "bin").mkdir(parents=True)
    shutil.copy2(v3_dist / "bin/ollama", partial / "bin/ollama")  # arrived whole before the interruption
    (partial / "lib/ollama").mkdir(parents=True)
    (partial / "lib/ollama/llama-server").write_bytes(b"half a file")
    shutil.chown(env["sshd"].home / ".ollama-turbo/releases", env["sshd"].user, env["sshd"].user)
    for p in [partial, *partial.rglob("*")]:
        shutil.chown(p, env["sshd"].user, env["sshd"].user)
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(v3_dist), "--dry-run")
    assert "files to send (2): lib/ollama/llama-perplexity, lib/ollama/llama-server" in out
    assert "already on the host: bin/ollama" in out
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(v3_dist), "--specs", str(env["specs"]))
    assert code == 0, out + err
    assert version(env) == v3 and not partial.exists()
    # keep: 2 releases; the oldest (v1) is pruned
    names = sorted(p.name for p in (env["sshd"].home / ".ollama-turbo/releases").iterdir())
    assert names == sorted([version_of(env["dists"][1]), v3])


def test_failed_health_rolls_back_automatically(fresh: dict) -> None:
    env = fresh
    deployed(env, 2)
    v3 = version_of(env["dists"][2])
    t0 = time.perf_counter()
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["broken"]), "--specs", str(env["specs"]))
    seconds = time.perf_counter() - t0
    assert code == 1
    assert f"failed and was rolled back to {v3}" in err
    assert f"{version_of(env['broken'])} did not come up" in err
    assert "service log (last lines)" in err and "broken on purpose" in err
    assert version(env) == v3
    bench(f"deploy of a broken build with automatic rollback: {seconds:.1f} s (health timeout 15 s)")


def test_rollback_command(fresh: dict) -> None:
    env = fresh
    deployed(env, 1, 2)
    v2, v3 = version_of(env["dists"][1]), version_of(env["dists"][2])
    code, out, err = run(env, "rollback", "--host", "mac", "--dry-run")
    assert code == 0 and f"would switch mac from {v3} to {v2}" in out and version(env) == v3
    t0 = time.perf_counter()
    code, out, err = run(env, "rollback", "--host", "mac")
    bench(f"invoke rollback over SSH: {time.perf_counter() - t0:.2f} s")
    assert code == 0, err
    assert f"mac now serves {v2}" in out
    assert version(env) == v2
    code, out, err = run(env, "rollback", "--host", "mac", "--to", v3)
    assert code == 0 and version(env) == v3
    code, out, err = run(env, "rollback", "--host", "mac", "--to", "0.0.1")
    assert code == 1 and "release 0.0.1 is not installed" in err and v2 in err


def test_lock_held_and_stale_lock(fresh: dict) -> None:
    env = fresh
    deployed(env, 1)
    lock = env["sshd"].home / ".ollama-turbo/.deploy-lock"
    lock.mkdir()
    (lock / "owner").write_text("laptop pid 4242 at 2026-11-26T09:00:00")
    shutil.chown(lock, env["sshd"].user, env["sshd"].user)
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][2]))
    assert code == 1 and "another deploy holds the lock on this host: laptop pid 4242" in err
    old = time.time() - 3600
    import os

    os.utime(lock, (old, old))
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][2]), "--specs", str(env["specs"]))
    assert code == 0, err
    assert "breaking a stale deploy lock" in out + err and not lock.exists()


def test_port_taken_by_another_server(env: dict) -> None:
    fleet = yaml.safe_load(env["fleet"].read_text())
    port = int(fleet["turbo"]["hosts"]["mac2"]["listen"].rsplit(":", 1)[1])
    httpd = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    try:
        code, out, err = run(env, "deploy", "--host", "mac2", "--dist", str(env["dists"][0]))
    finally:
        httpd.shutdown()
    assert code == 1 and f"port {port} on mac2 is already in use" in err and "Ollama.app" in err
    assert not (env["sshd"].home / "other/current").exists()


def test_status(fresh: dict) -> None:
    env = fresh
    deployed(env, 2)
    code, out, err = run(env, "status", "--host", "mac", "--json", str(env["root"] / "status.json"))
    assert code == 0, err
    st = json.loads((env["root"] / "status.json").read_text())
    v3 = version_of(env["dists"][2])
    assert st["current"] == v3 and st["serving"] == v3 and "running" in st["state"]
    assert st["kv_cache"] == {"OLLAMA_KV_CACHE_TYPE": "turbo4"} and v3 in st["releases"]
    assert st["deployed"]["record"]["server_kv"] == "turbo4" and st["deployed"]["differs"] == []
    assert st["kv_running"].startswith("K turbo4 V turbo4, 4096 cells (service log)"), st["kv_running"]
    assert "kv_running K turbo4 V turbo4" in out
    code, out, err = run(env, "status", "--host", "nowhere")
    assert code == 2 and "unknown host 'nowhere'" in err


def test_the_host_is_checked_against_its_deploy_record_not_todays_settings(fresh: dict) -> None:
    """A deploy records what the host runs; smoke --host and status read it, and say where the settings differ."""
    env = fresh
    deployed(env, 2)
    home = env["sshd"].home
    rec = json.loads((home / ".ollama-turbo/current/deployed.json").read_text())
    assert rec["server_kv"] == "turbo4" and rec["models"] == {"sample": {"kv": "turbo4", "own": False}}
    assert rec["version"] == version_of(env["dists"][2]) and rec["flash_attention"] is True
    e = {**env["sshd"].env(), "INVOKE_TURBO_KV_TYPE_K": "q8_0"}  # today's settings moved on after the deploy
    r = invoke("-f", str(env["fleet"]), "smoke", "--host", "mac", env=e)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NOTE: turbo.kv is q8_0/turbo4, the host was deployed with turbo4" in r.stdout
    r = invoke("-f", str(env["fleet"]), "status", "--host", "mac", env=e)
    assert "deployed   server K/V turbo4 (deploy record" in r.stdout
    assert "NOTE       turbo.kv is q8_0/turbo4, the host was deployed with turbo4" in r.stdout
    # a record that disagrees with the running server: the smoke fails, naming both
    (home / ".ollama-turbo/current/deployed.json").write_text(json.dumps({**rec, "server_kv": "q8_0",
                                                                          "models": {}}))
    code, out, err = run(env, "smoke", "--host", "mac", "--model", "sample")
    assert code == 1 and "FAIL  cache type" in out
    assert "llama_kv_cache K (turbo4) V (turbo4)" in out and "expected K q8_0 V q8_0 (expected from mac's deploy " \
        "record (the host's default))" in out
    # no record (an older toolkit deployed it): today's settings, said so
    (home / ".ollama-turbo/current/deployed.json").unlink()
    code, out, err = run(env, "smoke", "--host", "mac")
    assert code == 0 and "NOTE: mac has no deploy record (deployed by an older ollama-turbo)" in out, out + err
    (home / ".ollama-turbo/current/deployed.json").write_text('{"schema": 9, "server_kv": "turbo9", "toolkit": "9.0"}')
    code, out, err = run(env, "status", "--host", "mac")
    assert code == 0 and "written by ollama-turbo 9.0 (record schema 9" in out
    assert "server_kv 'turbo9' is not a K/V pair this toolkit knows" in out


def test_smoke_and_bench_through_the_host(fresh: dict) -> None:
    env = fresh
    deployed(env, 2)
    out_json = env["root"] / "smoke-host.json"
    code, out, err = run(env, "smoke", "--host", "mac", "--json", str(out_json))
    assert code == 0, out + err
    res = json.loads(out_json.read_text())
    v3 = version_of(env["dists"][2])
    assert res["provenance"]["host"] == "mac" and res["provenance"]["build"]["version"] == v3
    cache = next(c for c in res["checks"] if c["name"] == "cache type")
    assert cache["ok"] and "K (turbo4) V (turbo4)" in cache["evidence"]  # the log, read over SSH
    bench_out = env["root"] / "bench-host"
    code, out, err = run(env, "bench", "--host", "mac", "--model", "sample", "--types", "q8_0,turbo4",
                         "--depths", "0", "--reps", "1", "--niah-lengths", "", "--ab-predict", "2",
                         "--out", str(bench_out))
    assert code == 0, out + err
    report = json.loads((bench_out / "bench.json").read_text())
    assert [(r["label"], r["kv"]["logged_types"]) for r in report["results"]] == [
        ("q8_0", ["q8_0", "q8_0"]), ("turbo4", ["turbo4", "turbo4"])]
    # bench put the host's own setting back
    assert "<string>turbo4</string>" in (env["sshd"].home / "Library/LaunchAgents" /
                                         f"{services.LABEL}.plist").read_text()
    assert version(env) == v3


def test_a_plist_with_markup_and_spaces_round_trips_through_plistlib_and_the_emulator(tmp_path: Path) -> None:
    import importlib.util
    import plistlib

    s = config.parse({"hosts": {"mac": {"os": "darwin"}},
                      "kv": {"env": {"TURBO_NOTE": "a & b < c > d \"quoted\" 100% with spaces"}}})
    layout = services.Layout(home=str(tmp_path), prefix=str(tmp_path / "my models & more"), models=str(tmp_path))
    env = services.service_env(s.kv, s.host("mac"), layout, "C", KVPair(s.kv.type_k, s.kv.type_v))
    text = services.render(s.host("mac"), layout, env)
    data = plistlib.loads(text.encode())
    assert data["EnvironmentVariables"]["TURBO_NOTE"] == "a & b < c > d \"quoted\" 100% with spaces"
    assert data["ProgramArguments"][0] == f"{tmp_path}/my models & more/current/bin/ollama"
    path = tmp_path / "job.plist"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("emulator", HERE / "launchctl_emulator.py")
    emulator = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(emulator)  # type: ignore[union-attr]
    assert emulator.validate(str(path))["WorkingDirectory"] == f"{tmp_path}/my models & more"


def test_systemd_unit_rendering(tmp_path: Path) -> None:
    s = config.parse({"hosts": {"box": {"os": "linux", "listen": "0.0.0.0:11434"}},
                      "kv": {"type_k": "q8_0", "type_v": "turbo4",
                             "env": {"TURBO_LAYER_ADAPTIVE": 7, "TURBO_NOTE": 'keep 100% "as is"'}}})
    host = s.host("box")
    layout = services.Layout(home=str(tmp_path), prefix=str(tmp_path / "p"), models=str(tmp_path / "m"))
    env = services.service_env(s.kv, host, layout, "C", KVPair(s.kv.type_k, s.kv.type_v))
    unit = services.render(host, layout, env)
    assert 'Environment="LLAMA_ARG_CACHE_TYPE_K=q8_0"' in unit and 'Environment="LLAMA_ARG_CACHE_TYPE_V=turbo4"' in unit
    assert "OLLAMA_KV_CACHE_TYPE" not in unit and 'Environment="TURBO_LAYER_ADAPTIVE=7"' in unit
    assert f'ExecStart="{tmp_path}/p/current/bin/ollama" serve' in unit
    assert 'Environment="TURBO_NOTE=keep 100%% \\"as is\\""' in unit
    with pytest.raises(server_kv.PairNotPossible, match="one cache type for K and V"):
        services.service_env(s.kv, host, layout, "B", KVPair(s.kv.type_k, s.kv.type_v))
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "p/current/bin").mkdir(parents=True)
    (tmp_path / "p/current/bin/ollama").write_text("#!/bin/sh\n")
    (tmp_path / "p/current/bin/ollama").chmod(0o755)
    unit_file = tmp_path / "ollama-turbo.service"
    unit_file.write_text(unit)
    from ollama_turbo.core import proc

    r = proc.run(["systemd-analyze", "verify", str(unit_file)], check=False)
    assert r.returncode == 0, r.stderr


def test_a_deploy_waits_out_a_bench_that_holds_the_host(fresh: dict) -> None:
    env = fresh
    deployed(env, 1)
    v2 = version_of(env["dists"][1])
    s = config.parse(yaml.safe_load(env["fleet"].read_text())["turbo"])
    import os

    from ollama_turbo.deploy import bench_host

    os.environ.update(env["sshd"].env())
    try:
        _, start = bench_host.bench_targets(s, s.host("mac"), [KVPair("q8_0", "q8_0")], "sample")[0]
        with start() as ep:
            assert ep.label == "q8_0"
            code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][2]), "--specs",
                                 str(env["specs"]))
            assert code == 1 and "another deploy holds the lock on this host" in err, out + err
            assert version(env) == v2
    finally:
        for key in env["sshd"].env():
            os.environ.pop(key, None)
    plist = (env["sshd"].home / "Library/LaunchAgents" / f"{services.LABEL}.plist").read_text()
    assert "<string>turbo4</string>" in plist and version(env) == v2  # bench restored the host's own setting


def test_a_host_listening_on_a_lan_address_is_deployed_through_the_tunnel(fresh: dict) -> None:
    env = fresh
    fleet = yaml.safe_load(env["fleet"].read_text())
    port = int(fleet["turbo"]["hosts"]["lan"]["listen"].rsplit(":", 1)[1])
    v2 = version_of(env["dists"][1])
    code, out, err = run(env, "deploy", "--host", "lan", "--dist", str(env["dists"][1]), "--specs", str(env["specs"]))
    assert code == 0, out + err
    assert requests.get(f"http://127.0.0.2:{port}/api/version", timeout=5).json()["version"] == v2
    code, out, err = run(env, "status", "--host", "lan")
    assert code == 0 and f"serving    {v2}" in out, out + err


# --- faults: a network that cuts or stalls, a full disk, a killed server, two deploys at once -----------


FAULTS: list[str] = []


@pytest.fixture(scope="module")
def flaky(env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path, Path]]:
    """The test host reached through a TCP proxy that can cut or stall the SSH connection."""
    h = env["sshd"]
    proxy = Proxy(h.port)
    root = tmp_path_factory.mktemp("flaky")
    cfg, known = root / "ssh_config", root / "known_hosts"
    identity = next(line.split()[1] for line in h.ssh_config.read_text().splitlines()
                    if line.strip().startswith("IdentityFile"))
    cfg.write_text(h.ssh_config.read_text() + f"""Host turbo-flaky
    HostName 127.0.0.1
    Port {proxy.port}
    User {h.user}
    IdentityFile {identity}
    IdentitiesOnly yes
""")
    key = h.known_hosts.read_text().split(None, 1)[1]
    known.write_text(h.known_hosts.read_text() + f"[127.0.0.1]:{proxy.port} {key}")
    fleet = yaml.safe_load(env["fleet"].read_text())
    fleet["turbo"]["hosts"]["flaky"] = dict(fleet["turbo"]["hosts"]["mac"], ssh="turbo-flaky", health_timeout=10)
    f = root / "fleet.yaml"
    f.write_text(yaml.safe_dump(fleet))
    yield proxy, cfg, known
    proxy.close()
    if FAULTS:
        bench("deploy faults survived (the host serves a verified release after each):\n  " + "\n  ".join(FAULTS))


def _deploy_with_fault(env: dict, flaky: tuple, monkeypatch: pytest.MonkeyPatch, dist: int,
                       fault: Callable[[str, Proxy], None]) -> tuple[str, float]:
    """Deploy dists[dist] to the flaky host in-process; ``fault(line, proxy)`` sees every progress line."""
    from ollama_turbo.deploy import releases

    proxy, cfg, known = flaky
    monkeypatch.setenv("TURBO_SSH_CONFIG", str(cfg))
    monkeypatch.setenv("TURBO_KNOWN_HOSTS", str(known))
    fleet = yaml.safe_load(env["fleet"].read_text())
    fleet["turbo"]["hosts"]["flaky"] = dict(fleet["turbo"]["hosts"]["mac"], ssh="turbo-flaky", health_timeout=10)
    s = config.parse(fleet["turbo"])
    t0 = time.perf_counter()
    with pytest.raises(releases.DeployError) as exc:
        releases.deploy(s, s.host("flaky"), env["dists"][dist], specs_dir=env["specs"],
                        say=lambda line: fault(line, proxy), accept_unmeasured=True)
    return str(exc.value), time.perf_counter() - t0


def _serves(env: dict, v: str) -> None:
    code, out, err = run(env, "status", "--host", "mac")
    assert code == 0, err
    assert f"current    {v}" in out and f"serving    {v}" in out, out
    assert not (env["sshd"].home / ".ollama-turbo/.deploy-lock").exists()
    assert not list((env["sshd"].home / ".ollama-turbo").glob("**/*.tmp-*"))


def test_a_cut_during_upload_leaves_the_old_release(fresh: dict, flaky: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fresh
    deployed(env, 0)
    v1 = version_of(env["dists"][0])

    def fault(line: str, proxy: Proxy) -> None:
        if "upload" in line and "files" in line:
            start = proxy.bytes_up

            def watch() -> None:
                while proxy.bytes_up < start + 1_000_000:
                    time.sleep(0.005)
                proxy.cut()

            threading.Thread(target=watch, daemon=True).start()

    err, seconds = _deploy_with_fault(env, flaky, monkeypatch, 1, fault)
    assert "lost the connection during the upload and was recovered: left on" in err, err
    _serves(env, v1)
    assert not (env["sshd"].home / f".ollama-turbo/releases/{version_of(env['dists'][1])}").exists()
    FAULTS.append(f"cut during upload: stayed on the old release, recovered in {seconds:.1f} s")
    deployed(env, 1)  # the network is back: the next deploy resumes the upload and succeeds


def test_a_cut_during_the_switch_or_the_health_check_rolls_back(fresh: dict, flaky: tuple,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = fresh
    deployed(env, 0)
    v1 = version_of(env["dists"][0])
    # each cut is set off by the deploy's own progress line for that step: no timer races the deploy
    for when, step_line in (("switch", "/8 switch "), ("health", "restart the launchd service")):
        def fault(line: str, proxy: Proxy, step_line: str = step_line) -> None:
            if step_line in line:
                proxy.cut()

        err, seconds = _deploy_with_fault(env, flaky, monkeypatch, 1, fault)
        assert "lost the connection during" in err and "was recovered" in err, err
        _serves(env, v1)
        FAULTS.append(f"cut during {when}: the host serves the old release again, recovered in {seconds:.1f} s "
                      "(target <= health timeout + 5 s)")


def test_ctrl_c_leaves_the_host_on_a_verified_release(fresh: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (a KeyboardInterrupt raised by the deploy's own progress line for the step) before the switch leaves
    the old release; after it, the host is switched back under the lock, and the lock is gone afterwards."""
    from ollama_turbo.core.errors import Interrupted
    from ollama_turbo.deploy import releases

    env = fresh
    deployed(env, 0)
    v1, v2 = version_of(env["dists"][0]), version_of(env["dists"][1])
    for name, value in env["sshd"].env().items():
        monkeypatch.setenv(name, value)
    s = config.parse(yaml.safe_load(env["fleet"].read_text())["turbo"])
    for step, left in (("2/8 ", "nothing was switched: mac keeps the release it served; the partial upload is kept "
                                "and the next deploy resumes it"),
                       ("5/8 ", f"mac was put back on {v1}, which answers again ({v2} was not verified)")):
        def say(line: str, step: str = step) -> None:
            if f"] {step}" in line:
                raise KeyboardInterrupt

        with pytest.raises(Interrupted) as exc:
            releases.deploy(s, s.host("mac"), env["dists"][1], specs_dir=env["specs"], say=say,
                            accept_unmeasured=True)
        assert (exc.value.left, exc.value.hosts) == (left, ["mac"])
        _serves(env, v1)


def test_a_stall_past_the_timeout_rolls_back(fresh: dict, flaky: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fresh
    deployed(env, 0)
    v1 = version_of(env["dists"][0])
    monkeypatch.setenv("TURBO_SSH_COMMAND_TIMEOUT", "4")

    def fault(line: str, proxy: Proxy) -> None:
        if "/8 switch " in line:
            proxy.stall()
            threading.Timer(7.0, proxy.resume).start()

    err, seconds = _deploy_with_fault(env, flaky, monkeypatch, 1, fault)
    assert "lost the connection during" in err and "no answer within 4 s" in err, err
    _serves(env, v1)
    FAULTS.append(f"stall past the command timeout: rolled back after the network came back, {seconds:.1f} s")


def test_a_new_server_that_keeps_dying_rolls_back(fresh: dict) -> None:
    """launchd restarts a killed server (KeepAlive), so one kill is survived; a crash loop is not."""
    env = fresh
    deployed(env, 0)
    v1, v2 = version_of(env["dists"][0]), version_of(env["dists"][1])
    new_bin = str(env["sshd"].home / f".ollama-turbo/releases/{v2}/bin/ollama")
    done = threading.Event()
    kills: list[int] = []

    def kill_new() -> None:  # the new build's server dies whenever it starts (its binary, whatever the path)
        while not done.is_set():
            for pid in subprocess.run(["pgrep", "-f", "[b]in/ollama serve"], capture_output=True,
                                      text=True).stdout.split():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/exe") == new_bin:
                        os.kill(int(pid), signal.SIGKILL)
                        kills.append(int(pid))
            time.sleep(0.05)

    threading.Thread(target=kill_new, daemon=True).start()
    try:
        code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]), "--specs",
                             str(env["specs"]))
    finally:
        done.set()
    assert kills, "the new server never started"
    assert code == 1 and f"failed and was rolled back to {v1}" in err, out + err
    _serves(env, v1)
    FAULTS.append(f"new server killed as it starts ({len(kills)} kills): rolled back to the old release")


def test_two_deploys_at_once_one_waits_out(fresh: dict) -> None:
    env = fresh
    deployed(env, 0)
    lock = env["sshd"].home / ".ollama-turbo/.deploy-lock"
    first: list[tuple[int, str, str]] = []
    th = threading.Thread(target=lambda: first.append(
        run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]), "--specs", str(env["specs"]))))
    th.start()
    # the second starts while the first holds the host's lock (it holds it from upload to health check)
    assert poll.until(lambda: lock.is_dir() or None, interval=0.01, timeout=60), "the first never took the lock"
    second = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][2]), "--specs", str(env["specs"]))
    th.join()
    assert first[0][0] == 0, first
    assert second[0] == 1 and "another deploy holds the lock on this host" in second[2], second
    _serves(env, version_of(env["dists"][1]))
    FAULTS.append("two deploys at once: the second refused by the first's lock, the first served")


def test_a_full_disk_during_upload_leaves_the_old_release(fresh: dict) -> None:
    env = fresh
    deployed(env, 0)
    v1 = version_of(env["dists"][0])
    releases_dir = env["sshd"].home / ".ollama-turbo/releases"
    staging = env["sshd"].home / ".ollama-turbo/full"
    staging.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(staging)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and a kernel that allows it)")
    try:
        shutil.chown(staging, env["sshd"].user, env["sshd"].user)
        # the new release is uploaded into the small filesystem: it fills up mid-upload
        v2 = version_of(env["dists"][1])
        (releases_dir / f"{v2}.partial").symlink_to(staging)
        code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][1]), "--specs",
                             str(env["specs"]))
        assert code == 1, out + err
        _serves(env, v1)
        FAULTS.append("disk full during upload: the old release kept serving")
    finally:
        subprocess.run(["umount", str(staging)])



def test_a_different_build_under_the_current_releases_name_is_refused(fresh: dict, tmp_path: Path) -> None:
    """The live release is never replaced in place: once, a same-named build deleted it mid-deploy."""
    env = fresh
    deployed(env, 0)
    v1 = version_of(env["dists"][0])
    other = tmp_path / v1
    shutil.copytree(env["dists"][0], other, symlinks=True)
    tool = other / "lib/ollama/llama-perplexity"
    tool.write_bytes(tool.read_bytes() + b"\0")
    m = json.loads((other / "manifest.json").read_text())
    m["files"]["lib/ollama/llama-perplexity"] = hashlib.sha256(tool.read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(m, indent=2))
    live = env["sshd"].home / f".ollama-turbo/releases/{v1}"
    before = {p.name: p.stat().st_ino for p in live.rglob("*")}
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(other), "--specs", str(env["specs"]))
    assert code == 1 and f"release {v1} on the host is a different build" in err, out + err
    assert "lib/ollama/llama-perplexity" in err and "Traceback" not in err
    assert {p.name: p.stat().st_ino for p in live.rglob("*")} == before
    _serves(env, v1)


def test_a_dry_run_shows_each_models_own_cache_and_the_hosts_default(env: dict, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    model = env["world"].model
    (specs / "own.yaml").write_text(f"from: {model}\nnum_ctx: 2048\nkv: q8_0/turbo4\nhosts: [mac]\n")
    (specs / "shared.yaml").write_text(f"from: {model}\nnum_ctx: 2048\nhosts: [mac]\n")
    code, out, err = run(env, "deploy", "--host", "mac", "--dist", str(env["dists"][0]), "--dry-run",
                         "--accept-unmeasured", "--specs", str(specs))
    assert code == 0, err
    assert "model own: KV q8_0/turbo4 own" in out and "model shared: KV turbo4 host default" in out
    rendered = (env["root"] / "ws/modelfiles/mac/own.Modelfile").read_text()
    assert "PARAMETER kv_cache_type q8_0/turbo4" in rendered
