"""Rolling deploys across several hosts of this machine (service: none): canary first, stop at the first
failure, the hosts not reached keep their release."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import settings as config
from ollama_turbo.deploy.managers import manager_for
from ollama_turbo.deploy.services import Layout
from ollama_turbo.deploy.transport import LocalTransport

from .conftest import bench, free_port, invoke

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rolling")
    world = sample.generate(root / "world")
    r = build.run(config.parse({"workspace": str(root / "ws"), "build": {"backend": "cpu"}}),
                  build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    return r.dist


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    ports = {name: free_port() for name in ("a", "b", "c", "d")}
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump({"turbo": {"workspace": str(tmp_path / "ws"), "hosts": {
        name: {"ssh": "local", "os": "linux", "service": "none", "listen": f"127.0.0.1:{port}",
               "prefix": str(tmp_path / name), "models_dir": str(tmp_path / f"{name}-models"), "health_timeout": 20}
        for name, port in ports.items()}, "groups": {"all": ["a", "b", "c", "d"]}}}))
    yield f, ports
    s = config.parse(yaml.safe_load(f.read_text())["turbo"])
    for name in ports:
        manager_for(LocalTransport(), s.host(name), Layout("", str(tmp_path / name), "")).stop()


def _taken(port: int) -> http.server.HTTPServer:
    httpd = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_dry_run_shows_the_order(dist: Path, fleet: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    f, _ = fleet
    r = invoke("-f", str(f), "deploy", "--group", "all", "--batch", "2", "--dist", str(dist), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "rolling deploy order: wave 0 (canary): a | wave 1: b, c | wave 2: d" in r.stdout
    assert "  d: server K/V turbo4; models: none" in r.stdout
    assert not (tmp_path / "a").exists()


def test_every_hosts_deploy_is_decided_before_the_canary_is_touched(
        dist: Path, fleet: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    """A model of the last host with no quality measurement stops the rollout before any host changes."""
    f, _ = fleet
    specs = tmp_path / "specs"
    specs.mkdir()
    model = next((dist.parents[2] / "world").rglob("*.gguf"))  # the sample world's model, never measured here
    (specs / "late.yaml").write_text(f"from: {model}\nnum_ctx: 2048\nhosts: [d]\n")
    r = invoke("-f", str(f), "deploy", "--group", "all", "--dist", str(dist), "--specs", str(specs),
               "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rolling deploy stopped at d: late has no quality measurement with turbo4" in r.stderr
    assert "stopped at d before any host was touched" in r.stdout
    out = json.loads((tmp_path / "r.json").read_text())
    assert [(h["host"], h["result"]) for h in out["hosts"]] == [("a", "not reached"), ("b", "not reached"),
                                                                 ("c", "not reached"), ("d", "refused")]
    assert not any((tmp_path / name).exists() for name in "abcd")  # not even the canary was reached
    assert "wave 0" not in r.stdout


def test_a_failing_canary_stops_the_rollout(dist: Path, fleet: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    f, ports = fleet
    httpd = _taken(ports["a"])
    try:
        r = invoke("-f", str(f), "deploy", "--hosts", "a,b,c", "--dist", str(dist), "--accept-unmeasured",
                   "--json", str(tmp_path / "r.json"))
    finally:
        httpd.shutdown()
    assert r.returncode == 1 and "rolling deploy stopped at a: " in r.stderr
    out = json.loads((tmp_path / "r.json").read_text())
    assert [(h["host"], h["result"]) for h in out["hosts"]] == [("a", "failed"), ("b", "not reached"),
                                                                 ("c", "not reached")]
    assert not (tmp_path / "b/current").exists() and not (tmp_path / "c/current").exists()


def test_a_failing_third_host_stops_before_the_fourth(dist: Path, fleet: tuple[Path, dict[str, int]],
                                                      tmp_path: Path) -> None:
    f, ports = fleet
    httpd = _taken(ports["c"])
    t0 = time.perf_counter()
    try:
        r = invoke("-f", str(f), "deploy", "--group", "all", "--batch", "2", "--dist", str(dist),
                   "--accept-unmeasured", "--json", str(tmp_path / "r.json"))
    finally:
        httpd.shutdown()
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads((tmp_path / "r.json").read_text())
    assert [(h["host"], h["result"]) for h in out["hosts"]] == [("a", "deployed"), ("b", "deployed"),
                                                                 ("c", "failed"), ("d", "not reached")]
    assert "port " in out["hosts"][2]["error"] and "already in use" in out["hosts"][2]["error"]
    assert (tmp_path / "a/current").exists() and not (tmp_path / "d/current").exists()
    assert "stopped at c: the hosts not reached keep their release" in r.stdout
    assert any(line.startswith("host ") and "wave" in line for line in r.stdout.splitlines())
    bench(f"rolling deploy, 2 of 4 sample hosts before the failing third: {time.perf_counter() - t0:.1f} s")


def test_rolling_deploy_of_three_hosts(dist: Path, fleet: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    f, ports = fleet
    t0 = time.perf_counter()
    r = invoke("-f", str(f), "deploy", "--hosts", "a,b,c", "--batch", "2", "--dist", str(dist),
               "--accept-unmeasured")
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 3 hosts deployed" in r.stdout
    bench(f"rolling deploy of 3 sample hosts (canary, then 2): {seconds:.1f} s")
    import requests

    for name in ("a", "b", "c"):
        assert requests.get(f"http://127.0.0.1:{ports[name]}/api/version", timeout=5).ok
