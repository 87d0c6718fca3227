"""deploy takes over a stock Ollama, uninstall gives it back: over a real sshd, with the strict launchctl emulator
running a stock-like Homebrew agent (the sample world's Ollama, stamped as another version) on its own port, with
its models in ~/.ollama/models. Each test sets the host up itself (:func:`fresh`)."""

from __future__ import annotations

import hashlib
import os
import plistlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.builder import era_c
from ollama_turbo.core import manifest
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import TurboError
from ollama_turbo.deploy import services
from ollama_turbo.prove.ollama_api import Client

from . import ssh_host
from .conftest import free_port, invoke
from .tcp_proxy import Proxy

pytestmark = [pytest.mark.sample, pytest.mark.skipif(ssh_host.unavailable() is not None,
                                                     reason=ssh_host.unavailable() or "")]
HERE = Path(__file__).parent
STOCK = "homebrew.mxcl.ollama"
STOCK_VERSION = "0.30.0-stock"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    h = ssh_host.start(HERE / "launchctl_emulator.py")
    root = tmp_path_factory.mktemp("adopt")
    world = sample.generate(root / "world")
    ws = root / "ws"
    s = config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})
    r = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    m = manifest.load(r.dist).data
    manifest.write(r.dist, dict(m, platform={"os": "darwin", "arch": m["platform"]["arch"]}))
    broken = root / "broken"  # the same build with a server that answers nothing
    shutil.copytree(r.dist, broken)
    (broken / "bin/ollama").write_text("#!/bin/sh\necho 'ollama: cannot start (broken on purpose)' >&2\nsleep 2\n"
                                       "exit 1\n")
    bm = manifest.load(broken).data
    manifest.write(broken, dict(bm, version=bm["version"] + ".broken"))
    # the stock Ollama: the same server, stamped as a release of Ollama's own, installed outside our prefix
    stock = root / "stock"
    shutil.copytree(r.dist / "lib", stock / "lib")
    era_c.go_build(world.ollama_c, stock / "bin" / "ollama", version=STOCK_VERSION, log=root / "stock.log")
    shutil.copytree(stock, h.home / "stock")
    for p in [h.home / "stock", *(h.home / "stock").rglob("*")]:
        os.chown(p, h.uid, -1)
    specs = root / "specs"  # no specs: the deploys serve what the stock Ollama had
    specs.mkdir()
    port = free_port()
    mac = {"ssh": h.alias, "os": "darwin", "service": "launchd", "listen": f"127.0.0.1:{port}", "health_timeout": 15}
    fleet = root / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"turbo": {"workspace": str(ws), "hosts": {
        "mac": mac, "elsewhere": dict(mac, models_dir="~/elsewhere/models"),
        "otherport": dict(mac, listen=f"127.0.0.1:{free_port()}")}}}))
    yield {"sshd": h, "root": root, "world": world, "dist": r.dist, "broken": broken, "specs": specs, "port": port,
           "fleet": fleet}
    ssh_host.stop(h)


def ssh(env: dict, script: str) -> subprocess.CompletedProcess[str]:
    h = env["sshd"]
    return subprocess.run(["ssh", "-F", str(h.ssh_config), "-o", f"UserKnownHostsFile={h.known_hosts}", h.alias,
                           script], capture_output=True, text=True, timeout=60)


def version(env: dict) -> str | None:
    try:
        return str(requests.get(f"http://127.0.0.1:{env['port']}/api/version", timeout=1).json()["version"])
    except requests.RequestException:
        return None


def wait_version(env: dict, want: str | None) -> str | None:
    for _ in range(150):
        if version(env) == want:
            break
        time.sleep(0.1)
    return version(env)


def stock_plist(env: dict) -> bytes:
    h = env["sshd"]
    return plistlib.dumps({
        "Label": STOCK, "ProgramArguments": [f"{h.home}/stock/bin/ollama", "serve"],
        "EnvironmentVariables": {"OLLAMA_HOST": f"127.0.0.1:{env['port']}", "OLLAMA_KEEP_ALIVE": "10m",
                                 "OLLAMA_ORIGINS": "app://*", "OLLAMA_FLASH_ATTENTION": "1"},
        "RunAtLoad": True, "KeepAlive": True, "WorkingDirectory": str(h.home),
        "StandardOutPath": f"{h.home}/stock.log", "StandardErrorPath": f"{h.home}/stock.log"})


@pytest.fixture
def fresh(env: dict) -> dict:
    """The host as Homebrew leaves it: the stock agent loaded and serving, one model in ~/.ollama/models."""
    h = env["sshd"]
    r = ssh(env, f"launchctl bootout user/$(id -u)/{services.LABEL} >/dev/null 2>&1; "
                 f"launchctl bootout user/$(id -u)/{STOCK} >/dev/null 2>&1; "
                 "pkill -KILL -u $(id -u) -f '[b]in/ollama serve'; "
                 "for i in $(seq 100); do pgrep -u $(id -u) -f '[b]in/ollama serve' >/dev/null || break; sleep 0.1; "
                 "done; chmod 755 ~/stock/bin/ollama; "
                 "rm -rf ~/.ollama-turbo ~/.ollama ~/elsewhere ~/Library ~/.launchctl-emulator ~/stock.log")
    assert r.returncode == 0, r.stderr
    assert wait_version(env, None) is None
    agents = h.home / "Library/LaunchAgents"
    agents.mkdir(parents=True)
    (agents / f"{STOCK}.plist").write_bytes(stock_plist(env))
    for p in [h.home / "Library", agents, agents / f"{STOCK}.plist"]:
        os.chown(p, h.uid, -1)
    r = ssh(env, f"launchctl bootstrap user/$(id -u) ~/Library/LaunchAgents/{STOCK}.plist")
    assert r.returncode == 0, r.stderr
    assert wait_version(env, STOCK_VERSION) == STOCK_VERSION
    Client(f"http://127.0.0.1:{env['port']}", timeout=60).create("stockmodel", gguf=env["world"].model)
    return env


def run(env: dict, *args: str) -> tuple[int, str, str]:
    r = invoke("-f", str(env["fleet"]), *args, env=env["sshd"].env())
    return r.returncode, r.stdout, r.stderr


def deploy(env: dict, *args: str, host: str = "mac", dist: Path | None = None) -> tuple[int, str, str]:
    return run(env, "deploy", "--host", host, "--dist", str(dist or env["dist"]), "--specs", str(env["specs"]), *args)


def models(env: dict) -> dict[str, tuple[int, str]]:
    """Every file of the models directory: its inode and its bytes' digest."""
    root = env["sshd"].home / ".ollama/models"
    return {str(p.relative_to(root)): (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def tags(env: dict) -> list[str]:
    return [m["name"] for m in requests.get(f"http://127.0.0.1:{env['port']}/api/tags", timeout=5).json()["models"]]


def stock_loaded(env: dict) -> bool:
    return ssh(env, f"launchctl print user/$(id -u)/{STOCK}").returncode == 0


def given_back(env: dict, before: dict[str, tuple[int, str]], *, uninstalled: bool = True) -> None:
    """The stock agent's plist back byte for byte, loaded and serving; the models untouched; and after an
    uninstall, nothing of ours left."""
    h = env["sshd"]
    assert wait_version(env, STOCK_VERSION) == STOCK_VERSION
    assert (h.home / f"Library/LaunchAgents/{STOCK}.plist").read_bytes() == stock_plist(env)
    assert stock_loaded(env) and not (h.home / ".ollama-turbo/adopted.json").exists()
    if uninstalled:
        assert not (h.home / ".ollama-turbo").exists()
        assert not (h.home / f"Library/LaunchAgents/{services.LABEL}.plist").exists()
    assert models(env) == before and "stockmodel:latest" in tags(env)


def test_deploy_adopts_the_stock_ollama_and_uninstall_gives_it_back(fresh: dict) -> None:
    env, h = fresh, fresh["sshd"]
    before = models(env)
    assert any(name.startswith("blobs/") for name in before)
    code, out, err = deploy(env, "--dry-run")
    assert code == 0, out + err
    assert f"adopts stock Ollama: {STOCK}, {h.home}/Library/LaunchAgents/{STOCK}.plist" in out
    assert "take over the stock Ollama (homebrew.mxcl.ollama)" in out and "dry run: nothing was changed" in out
    assert version(env) == STOCK_VERSION and not (h.home / ".ollama-turbo").exists()

    code, out, err = deploy(env)
    assert code == 0, out + err
    ours = manifest.load(env["dist"]).version
    assert "4/9 take over the stock Ollama" in out and "stock Ollama stopped and disabled" in out
    assert version(env) == ours  # the same port
    assert "stockmodel:latest" in tags(env) and models(env) == before  # the same files: nothing copied
    assert not (h.home / f"Library/LaunchAgents/{STOCK}.plist").exists() and not stock_loaded(env)
    job = plistlib.loads((h.home / f"Library/LaunchAgents/{services.LABEL}.plist").read_bytes())
    envs = job["EnvironmentVariables"]
    assert envs["OLLAMA_MODELS"] == f"{h.home}/.ollama/models" and envs["OLLAMA_HOST"] == f"127.0.0.1:{env['port']}"
    assert envs["OLLAMA_KEEP_ALIVE"] == "10m" and envs["OLLAMA_ORIGINS"] == "app://*"  # the stock's, kept
    code, out, err = run(env, "status", "--host", "mac")
    assert code == 0, err
    assert f"adopted    adopted stock Ollama ({STOCK}, {h.home}/Library/LaunchAgents/{STOCK}.plist; " \
           f"models {h.home}/.ollama/models, port {env['port']})" in out

    code, out, err = deploy(env)  # a redeploy keeps the first record: the stock is still given back as it was
    assert code == 0 and "take over the stock Ollama" not in out, out + err

    code, out, err = run(env, "uninstall", "--host", "mac", "--dry-run")
    assert code == 0 and "give back the stock Ollama" in out and version(env) == ours, out + err
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0, out + err
    assert f"stock Ollama given back ({STOCK}, port {env['port']}); models untouched" in out
    given_back(env, before)
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0 and "nothing of ollama-turbo on mac: nothing to uninstall" in out, out + err


def test_a_failed_first_deploy_gives_the_stock_back_and_a_rerun_adopts_it(fresh: dict) -> None:
    env = fresh
    before = models(env)
    code, out, err = deploy(env, dist=env["broken"])
    assert code == 1 and "the stock Ollama was given back (homebrew.mxcl.ollama" in err, out + err
    given_back(env, before, uninstalled=False)
    code, out, err = deploy(env)
    assert code == 0, out + err
    assert version(env) == manifest.load(env["dist"]).version and "stockmodel:latest" in tags(env)


@pytest.fixture
def flaky(env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Proxy, config.Settings]]:
    """The host reached through a TCP proxy that can cut the SSH connection; the settings to reach it."""
    h = env["sshd"]
    proxy = Proxy(h.port)
    identity = next(line.split()[1] for line in h.ssh_config.read_text().splitlines()
                    if line.strip().startswith("IdentityFile"))
    cfg, known = tmp_path / "ssh_config", tmp_path / "known_hosts"
    cfg.write_text(f"Host turbo-flaky\n    HostName 127.0.0.1\n    Port {proxy.port}\n    User {h.user}\n"
                   f"    IdentityFile {identity}\n    IdentitiesOnly yes\n")
    key = h.known_hosts.read_text().split(None, 1)[1]
    known.write_text(f"[127.0.0.1]:{proxy.port} {key}")
    monkeypatch.setenv("TURBO_SSH_CONFIG", str(cfg))
    monkeypatch.setenv("TURBO_KNOWN_HOSTS", str(known))
    fleet = yaml.safe_load(env["fleet"].read_text())["turbo"]
    fleet["hosts"]["mac"]["ssh"] = "turbo-flaky"
    yield proxy, config.parse(fleet)
    proxy.close()


def test_a_cut_between_stopping_the_stock_and_starting_ours_gives_it_back(fresh: dict, flaky: tuple) -> None:
    from ollama_turbo.deploy import releases

    env, (proxy, s) = fresh, flaky
    before = models(env)

    def fault(line: str) -> None:
        if "stock Ollama stopped and disabled" in line:
            proxy.cut()

    with pytest.raises(releases.DeployError) as exc:
        releases.deploy(s, s.host("mac"), env["dist"], specs_dir=env["specs"], say=fault)
    # the cut shows at the next command: the switch or the restart, both before our server answered
    assert "lost the connection during the " in str(exc.value) and "was recovered" in str(exc.value), str(exc.value)
    assert "the stock Ollama was given back (homebrew.mxcl.ollama" in str(exc.value), str(exc.value)
    given_back(env, before, uninstalled=False)
    code, out, err = deploy(env)  # the network is back: the rerun adopts it
    assert code == 0, out + err
    assert version(env) == manifest.load(env["dist"]).version and "stockmodel:latest" in tags(env)


def test_ctrl_c_after_the_stock_is_stopped_gives_it_back(fresh: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.core.errors import Interrupted
    from ollama_turbo.deploy import releases

    env = fresh
    before = models(env)
    for name, value in env["sshd"].env().items():
        monkeypatch.setenv(name, value)
    s = config.parse(yaml.safe_load(env["fleet"].read_text())["turbo"])

    def say(line: str) -> None:
        if "stock Ollama stopped and disabled" in line:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as exc:
        releases.deploy(s, s.host("mac"), env["dist"], specs_dir=env["specs"], say=say)
    assert exc.value.left.startswith("nothing was switched on mac: the stock Ollama was given back "
                                     "(homebrew.mxcl.ollama, port"), exc.value.left
    given_back(env, before, uninstalled=False)
    assert not (env["sshd"].home / ".ollama-turbo/.deploy-lock").exists()
    code, out, err = deploy(env)
    assert code == 0, out + err


def test_an_uninstall_cut_short_is_completed_by_running_it_again(fresh: dict, flaky: tuple) -> None:
    """Ctrl-C (raised by the uninstall's own progress line) after our service is gone and before the stock one is
    back; then a cut connection at the same point: each time, running uninstall again completes it."""
    from ollama_turbo.core.errors import Interrupted
    from ollama_turbo.deploy.uninstall import uninstall

    env, (proxy, s) = fresh, flaky
    before = models(env)
    code, out, err = deploy(env)
    assert code == 0, out + err

    def ctrl_c(line: str) -> None:
        if "2/3 give back" in line:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as exc:
        uninstall(s.host("mac"), say=ctrl_c)
    assert exc.value.left == "the uninstall of mac was cut short: run invoke uninstall --host mac again to complete it"
    # our service is gone and the stock one not yet back: its record is still there, the lock is not
    home = env["sshd"].home
    assert version(env) is None and (home / ".ollama-turbo/adopted.json").exists()
    assert not (home / ".ollama-turbo/.deploy-lock").exists()
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0 and "stock Ollama given back" in out, out + err
    given_back(env, before)

    code, out, err = deploy(env)
    assert code == 0, out + err

    def cut(line: str) -> None:
        if "2/3 give back" in line:
            proxy.cut()

    # the cut shows at the next command, or Fabric reconnects at once and the uninstall goes on: either way the
    # host is left on one of the two, and running it again completes it
    try:
        uninstall(s.host("mac"), say=cut)
    except TurboError as e:
        assert "the uninstall of mac lost the connection during the return of the stock Ollama" in e.message
        assert "invoke uninstall --host mac" in str(e.hint)
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0, out + err
    given_back(env, before)


def test_a_stock_that_fails_to_start_again_keeps_its_record_for_the_next_uninstall(fresh: dict) -> None:
    env = fresh
    before = models(env)
    code, out, err = deploy(env)
    assert code == 0, out + err
    assert ssh(env, "chmod 644 ~/stock/bin/ollama").returncode == 0
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 1 and "mac: launchctl bootstrap" in err and "Traceback" not in err, out + err
    assert "run the task again" in err
    assert (env["sshd"].home / ".ollama-turbo/adopted.json").exists() and version(env) is None
    assert ssh(env, "chmod 755 ~/stock/bin/ollama").returncode == 0
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0, out + err
    given_back(env, before)


def test_a_stock_with_its_models_elsewhere_is_refused_naming_both(fresh: dict) -> None:
    env, h = fresh, fresh["sshd"]
    code, out, err = deploy(env, host="elsewhere")
    assert code == 1, out + err
    assert f"elsewhere: the stock Ollama ({h.home}/Library/LaunchAgents/{STOCK}.plist) keeps its models in " \
           f"{h.home}/.ollama/models, but turbo.hosts.elsewhere.models_dir gives {h.home}/elsewhere/models" in err
    assert f"set turbo.hosts.elsewhere.models_dir: {h.home}/.ollama/models" in err and "Traceback" not in err
    assert version(env) == STOCK_VERSION and stock_loaded(env)
    assert not (h.home / ".ollama-turbo/adopted.json").exists()
    code, out, err = deploy(env, host="otherport")
    assert code == 1 and f"listens on 127.0.0.1:{env['port']}, but turbo.hosts.otherport.listen is" in err, out + err
    assert version(env) == STOCK_VERSION


def test_a_stock_with_a_model_loaded_is_taken_over_only_when_asked(fresh: dict) -> None:
    env = fresh
    Client(f"http://127.0.0.1:{env['port']}", timeout=120).generate("stockmodel", "hello", num_predict=2)
    code, out, err = deploy(env)
    assert code == 1, out + err
    assert "mac: the stock Ollama has 1 model(s) loaded (stockmodel:latest)" in err and "--adopt-loaded" in err
    assert version(env) == STOCK_VERSION and stock_loaded(env)
    code, out, err = deploy(env, "--adopt-loaded")
    assert code == 0, out + err
    assert version(env) == manifest.load(env["dist"]).version


def test_uninstall_on_a_host_that_never_ran_a_stock_ollama_removes_ours_and_says_so(fresh: dict) -> None:
    env, h = fresh, fresh["sshd"]
    before = models(env)
    assert ssh(env, f"launchctl bootout user/$(id -u)/{STOCK}; rm ~/Library/LaunchAgents/{STOCK}.plist") \
        .returncode == 0
    assert wait_version(env, None) is None
    code, out, err = deploy(env)
    assert code == 0 and "take over" not in out, out + err
    code, out, err = run(env, "uninstall", "--host", "mac")
    assert code == 0, out + err
    assert "no stock Ollama had been adopted there, so none was given back: no Ollama runs there now" in out
    assert version(env) is None and not (h.home / ".ollama-turbo").exists() and models(env) == before
