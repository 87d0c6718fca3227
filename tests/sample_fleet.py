"""The sample world's "own fleet": two hosts over a real sshd on loopback, for examples/own-fleet.sh.

``python -m tests.sample_fleet up DIR`` writes the sample world to DIR/world and starts two hosts, each with an
account, a home and an sshd of its own (port from the free ones, 127.0.0.1 only):

* ``mac``: macOS-like, launchd being the strict emulator (tests/launchctl_emulator.py), with a stock Ollama
  already running as Homebrew leaves it: the ``homebrew.mxcl.ollama`` agent, one model in ~/.ollama/models;
* ``box``: Linux-like, no service manager (``service: none``), nothing installed.

It writes DIR/fleet.env (the ssh_config, known_hosts, ports and GOPROXY the walkthrough uses) and DIR/ready,
then stays up until SIGTERM or SIGINT, and removes both hosts (accounts, homes, servers) on the way out.
Creating the accounts needs root, as the deploy tests do.

``python -m tests.sample_fleet as-mac DIST OUT`` copies a build into OUT labelled as a macOS build: the
emulated Mac is this Linux machine, so a Linux build stands in for the one a real Mac would make.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest
from ollama_turbo.core import settings as config
from ollama_turbo.core.ports import free_port
from ollama_turbo.prove.ollama_api import Client

from . import ssh_host

HERE = Path(__file__).parent
STOCK = "homebrew.mxcl.ollama"


def _ssh(h: ssh_host.SSHHost, script: str) -> None:
    r = subprocess.run(["ssh", "-F", str(h.ssh_config), "-o", f"UserKnownHostsFile={h.known_hosts}", h.alias,
                        script], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"on {h.alias}: {script}: {r.stderr.strip()}")


def _own(h: ssh_host.SSHHost, *paths: Path) -> None:
    for top in paths:
        for p in [top, *top.rglob("*")]:
            os.chown(p, h.uid, -1)


def _stock_ollama(world: sample.World, dir_: Path) -> Path:
    """Stock Ollama as its release builds it: the llama.cpp it pins, no fork (build-ollama --stock)."""
    s = config.parse({"workspace": str(dir_ / "stock-ws"), "build": {"backend": "cpu"},
                      "sources": {"ollama": {"url": str(world.ollama_c), "ref": "main"},
                                  "upstream": {"url": str(world.upstream), "ref": "master"}}})
    return build.run(s, build.Options(stock=True, go_env={"GOPROXY": world.goproxy_url}), say=lambda _: None).dist


def _serve_stock(h: ssh_host.SSHHost, dist: Path, port: int, world: sample.World) -> str:
    """Install the stock build under ~/stock and load it as Homebrew's agent on ``port``, with one model."""
    shutil.copytree(dist, h.home / "stock")
    agents = h.home / "Library/LaunchAgents"
    agents.mkdir(parents=True)
    (agents / f"{STOCK}.plist").write_bytes(plistlib.dumps({
        "Label": STOCK, "ProgramArguments": [f"{h.home}/stock/bin/ollama", "serve"],
        "EnvironmentVariables": {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_FLASH_ATTENTION": "1"},
        "RunAtLoad": True, "KeepAlive": True, "WorkingDirectory": str(h.home),
        "StandardOutPath": f"{h.home}/stock.log", "StandardErrorPath": f"{h.home}/stock.log"}))
    _own(h, h.home / "stock", h.home / "Library")
    _ssh(h, f"launchctl bootstrap user/$(id -u) ~/Library/LaunchAgents/{STOCK}.plist")
    client = Client(f"http://127.0.0.1:{port}", timeout=60)
    client.wait_ready(timeout=30)
    client.create("stockmodel", gguf=world.model)
    return str(requests.get(f"http://127.0.0.1:{port}/api/version", timeout=5).json()["version"])


def up(dir_: Path) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    hosts: list[ssh_host.SSHHost] = []
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        world = sample.generate(dir_ / "world")
        print(world.describe(), flush=True)
        mac = ssh_host.start(HERE / "launchctl_emulator.py", name="mac", alias="sample-mac")
        hosts.append(mac)
        box = ssh_host.start(HERE / "launchctl_emulator.py", name="box", alias="sample-box")
        hosts.append(box)
        (dir_ / "ssh_config").write_text(mac.ssh_config.read_text() + box.ssh_config.read_text())
        (dir_ / "known_hosts").write_text(mac.known_hosts.read_text() + box.known_hosts.read_text())
        mac_port, box_port = free_port(), free_port()
        stock = _serve_stock(mac, _stock_ollama(world, dir_), mac_port, world)
        print(f"host mac: {mac.user}@127.0.0.1:{mac.port} (sshd), launchd (emulated), stock Ollama {stock} "
              f"as {STOCK} on 127.0.0.1:{mac_port} with model stockmodel", flush=True)
        print(f"host box: {box.user}@127.0.0.1:{box.port} (sshd), no service manager, nothing installed",
              flush=True)
        env = {"WORLD": world.root, "GOPROXY": world.goproxy_url, "TURBO_SSH_CONFIG": dir_ / "ssh_config",
               "TURBO_KNOWN_HOSTS": dir_ / "known_hosts", "MAC_SSH": mac.alias, "BOX_SSH": box.alias,
               "MAC_PORT": mac_port, "BOX_PORT": box_port, "MAC_HOME": mac.home, "BOX_HOME": box.home,
               "MAC_USER": mac.user, "BOX_USER": box.user,
               "STOCK_VERSION": stock}
        (dir_ / "fleet.env").write_text("".join(f"{k}={shlex.quote(str(v))}\n" for k, v in env.items()))
        (dir_ / "ready").write_text(f"{os.getpid()}\n")
        while not stop:
            time.sleep(0.2)
    except BaseException as exc:
        (dir_ / "failed").write_text(f"{type(exc).__name__}: {exc}\n")
        raise
    finally:
        for h in reversed(hosts):
            ssh_host.stop(h)
        (dir_ / "ready").unlink(missing_ok=True)


def as_mac(dist: Path, out: Path) -> Path:
    dest = out / dist.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dist, dest)
    m = manifest.load(dest).data
    manifest.write(dest, dict(m, platform={"os": "darwin", "arch": m["platform"]["arch"]}))
    return dest


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "up":
        up(Path(argv[1]).resolve())
        return 0
    if len(argv) == 3 and argv[0] == "as-mac":
        print(as_mac(Path(argv[1]), Path(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
