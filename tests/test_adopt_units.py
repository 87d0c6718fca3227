"""The stock Ollama, read and decided without a host: units and plists parsed, the take-over refused or allowed,
the environment kept, the record read back; the platform table the settings and the service managers share; and
the systemd manager's commands for a stock ``ollama.service`` (systemd cannot run here: a scripted transport
answers its queries as a host with Ollama's install script's unit would, and records what is run)."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from ollama_turbo.core import proc
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.platforms import SERVICES
from ollama_turbo.deploy import adopt, services, stock
from ollama_turbo.deploy.managers import MANAGERS, manager_for
from ollama_turbo.deploy.session import HostSession

# as Ollama's install script writes it, and a drop-in the way systemd users set the environment
UNIT = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/bin:/usr/bin:/bin"

[Install]
WantedBy=default.target
"""
DROPIN = """[Service]
Environment="OLLAMA_HOST=0.0.0.0:11434" "OLLAMA_KEEP_ALIVE=24h"
Environment="OLLAMA_NUM_PARALLEL=2" "OLLAMA_KV_CACHE_TYPE=q8_0"
"""
CAT = f"# /etc/systemd/system/ollama.service\n{UNIT}\n# /etc/systemd/system/ollama.service.d/override.conf\n{DROPIN}"


def test_a_unit_and_its_drop_in_are_read_as_systemd_reads_them() -> None:
    user, env = stock.from_unit(CAT)
    assert user == "ollama"
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_KEEP_ALIVE": "24h",
                   "OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KV_CACHE_TYPE": "q8_0"}
    assert stock.from_unit(CAT + "[Service]\nEnvironment=\nEnvironment=A=1\n")[1] == {"A": "1"}
    assert stock.models_of(env, "/usr/share/ollama") == "/usr/share/ollama/.ollama/models"
    assert stock.models_of({"OLLAMA_MODELS": "/data/models/"}, "/h") == "/data/models"
    assert stock.models_of({"OLLAMA_MODELS": "~/m"}, "/h") == "/h/m"


@pytest.mark.parametrize(("value", "listen"), [
    ("", "127.0.0.1:11434"), ("0.0.0.0", "0.0.0.0:11434"), (":9000", "127.0.0.1:9000"),
    ("http://localhost:8080/", "localhost:8080"), ("[::1]:1234", "[::1]:1234"), ("[::]", "[::]:11434")])
def test_ollama_host_is_read_as_ollama_reads_it(value: str, listen: str) -> None:
    assert stock.normal_listen(value) == listen


def found(**changes: object) -> stock.StockService:
    base = stock.StockService("systemd", "ollama.service", "/etc/systemd/system/ollama.service", enabled=True,
                              active=True, env=stock.from_unit(CAT)[1], models="/usr/share/ollama/.ollama/models",
                              listen="0.0.0.0:11434", user="ollama",
                              config_b64=base64.b64encode(UNIT.encode()).decode())
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_take_over_is_refused_with_the_file_the_key_and_the_next_step() -> None:
    s = found()
    why = stock.refusal("box", s, models="/home/me/.ollama/models", listen="0.0.0.0:11434", loaded=[],
                        models_ok=None, adopt_loaded=False)
    assert why is not None
    assert why.message == ("box: the stock Ollama (/etc/systemd/system/ollama.service) keeps its models in "
                           "/usr/share/ollama/.ollama/models, but turbo.hosts.box.models_dir gives "
                           "/home/me/.ollama/models: adopting it would serve none of them")
    assert why.hint is not None and "turbo.hosts.box.models_dir: /usr/share/ollama/.ollama/models" in why.hint
    ok = dict(models="/usr/share/ollama/.ollama/models", listen="0.0.0.0:11434", models_ok=None)
    why = stock.refusal("box", s, **ok, loaded=["qwen:7b"], adopt_loaded=False)
    assert why is not None and "1 model(s) loaded (qwen:7b)" in why.message and "--adopt-loaded" in str(why.hint)
    assert stock.refusal("box", s, **ok, loaded=["qwen:7b"], adopt_loaded=True) is None
    why = stock.refusal("box", s, **dict(ok, listen="127.0.0.1:11434"), loaded=[], adopt_loaded=False)
    assert why is not None and "turbo.hosts.box.listen: 0.0.0.0:11434" in str(why.hint)
    why = stock.refusal("box", s, **dict(ok, models_ok="this login cannot read and write X"), loaded=[],
                        adopt_loaded=False)
    assert why is not None and "usermod -aG ollama" in str(why.hint)


def test_the_stock_environment_is_kept_except_what_our_service_sets() -> None:
    s = config.parse({"hosts": {"box": {"os": "linux", "listen": "0.0.0.0:11434"}},
                      "kv": {"type_k": "q8_0", "type_v": "turbo4", "env": {"OLLAMA_NUM_PARALLEL": "4"}}})
    kept = stock.carried(found(), services.owned_env(s.kv))
    assert kept == {"OLLAMA_KEEP_ALIVE": "24h"}  # OLLAMA_NUM_PARALLEL is set by turbo.kv.env
    layout = services.Layout(home="/home/me", prefix="/home/me/.ollama-turbo",
                             models="/usr/share/ollama/.ollama/models")
    env = dict(services.service_env(s.kv, s.host("box"), layout, "C", KVPair("q8_0", "turbo4"), kept))
    assert env["OLLAMA_KEEP_ALIVE"] == "24h" and env["OLLAMA_NUM_PARALLEL"] == "4"  # turbo.kv.env wins
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434" and "OLLAMA_KV_CACHE_TYPE" not in env and "PATH" not in env


def test_the_record_reads_back_and_a_damaged_one_is_named() -> None:
    s = found()
    import json

    assert stock.parse_record(json.dumps(s.to_json()), "box:/p/adopted.json") == s
    with pytest.raises(stock.StockError, match=r"^box:/p/adopted.json is not a record of an adopted stock Ollama"):
        stock.parse_record("{not json", "box:/p/adopted.json")


def test_one_platform_table_for_the_settings_and_the_service_managers() -> None:
    assert set(MANAGERS) == set(SERVICES)
    with pytest.raises(ConfigError, match="launchd runs only on os: darwin"):
        config.parse({"hosts": {"box": {"os": "linux", "service": "launchd"}}})
    assert config.parse({"hosts": {"box": {"os": "linux"}}}).host("box").service == "systemd"
    assert config.parse({"hosts": {"m": {"os": "darwin"}}}).host("m").service == "launchd"


class Scripted:
    """A transport whose answers are scripted by pattern; it records every command run."""

    name = "box"

    def __init__(self, answers: list[tuple[str, str]]) -> None:
        self.answers, self.ran = answers, []  # type: ignore[var-annotated]

    def sh(self, script: str, *, check: bool = True, timeout: float | None = 120) -> proc.Result:
        self.ran.append(script)
        out = next((a for pattern, a in self.answers if re.search(pattern, script)), "")
        return proc.Result([script], 0, out, "")

    def write(self, remote: str, text: str) -> None:
        self.ran.append(f"write {remote}")


def test_the_systemd_manager_finds_stops_and_restores_the_stock_unit(tmp_path: Path) -> None:
    t = Scripted([
        (r"^systemctl show ollama.service", "LoadState=loaded\nFragmentPath=/etc/systemd/system/ollama.service\n"
                                            "UnitFileState=enabled\nActiveState=active\n"),
        (r"^systemctl cat", CAT), (r"^getent passwd", "/usr/share/ollama\n"), (r"^id -u", "1000\n"),
        (r"^base64 <", base64.b64encode(UNIT.encode()).decode()), (r"curl .*api/ps", '{"models": []}'),
        (r"^cat .*adopted.json", "")])
    s = config.parse({"hosts": {"box": {"os": "linux", "ssh": "box", "listen": "0.0.0.0:11434",
                                        "models_dir": "/usr/share/ollama/.ollama/models"}}})
    host = s.host("box")
    layout = services.Layout("/home/me", "/home/me/.ollama-turbo", "/usr/share/ollama/.ollama/models")
    mgr = manager_for(t, host, layout)  # type: ignore[arg-type]
    got = mgr.find_stock()
    assert got is not None and got == found(config_b64=got.config_b64)
    adoption = adopt.survey(HostSession(host, t, layout, mgr), adopt_loaded=False)  # type: ignore[arg-type]
    assert adoption is not None and adoption.new and adoption.carried(s.kv) == {
        "OLLAMA_KEEP_ALIVE": "24h", "OLLAMA_NUM_PARALLEL": "2"}
    t.ran.clear()
    mgr.stop_stock(got)
    assert t.ran[-1] == "sudo -n systemctl disable --now ollama.service"
    t.ran.clear()
    mgr.restore_stock(got)
    assert [r for r in t.ran if "systemctl" in r] == ["sudo -n systemctl enable ollama.service",
                                                      "sudo -n systemctl start ollama.service"]
    # the user unit our service runs as, with the stock environment kept, is one systemd accepts
    unit = services.render(host, layout, services.service_env(s.kv, host, layout, "C", KVPair("q8_0", "q8_0"),
                                                              adoption.carried(s.kv)))
    assert 'Environment="OLLAMA_KEEP_ALIVE=24h"' in unit
    assert 'Environment="OLLAMA_MODELS=/usr/share/ollama/.ollama/models"' in unit
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    layout = services.Layout(str(tmp_path), str(tmp_path / "p"), "/usr/share/ollama/.ollama/models")
    (tmp_path / "p/current/bin").mkdir(parents=True)
    (tmp_path / "p/current/bin/ollama").write_text("#!/bin/sh\n")
    (tmp_path / "p/current/bin/ollama").chmod(0o755)
    (tmp_path / "ollama-turbo.service").write_text(services.render(host, layout, services.service_env(
        s.kv, host, layout, "C", KVPair("q8_0", "q8_0"), adoption.carried(s.kv))))
    r = proc.run(["systemd-analyze", "verify", str(tmp_path / "ollama-turbo.service")], check=False)
    assert r.returncode == 0, r.stderr


def test_a_refused_systemd_take_over_changes_nothing() -> None:
    t = Scripted([
        (r"^systemctl show ollama.service", "LoadState=loaded\nFragmentPath=/etc/systemd/system/ollama.service\n"
                                            "UnitFileState=enabled\nActiveState=active\n"),
        (r"^systemctl cat", CAT), (r"^getent passwd", "/usr/share/ollama\n"),
        (r"^base64 <", base64.b64encode(UNIT.encode()).decode()), (r"curl .*api/ps", '{"models": []}')])
    s = config.parse({"hosts": {"box": {"os": "linux", "ssh": "box", "listen": "0.0.0.0:11434"}}})
    host = s.host("box")
    layout = services.Layout("/home/me", "/home/me/.ollama-turbo", "/home/me/.ollama/models")
    mgr = manager_for(t, host, layout)  # type: ignore[arg-type]
    with pytest.raises(stock.StockError, match="keeps its models in /usr/share/ollama/.ollama/models"):
        adopt.survey(HostSession(host, t, layout, mgr), adopt_loaded=False)  # type: ignore[arg-type]
    assert not [r for r in t.ran if "disable" in r or r.startswith("write")]
