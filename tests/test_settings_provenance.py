"""Settings are read and merged by the toolkit itself, and each value says where it came from."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from ollama_turbo.core import settings_layers
from ollama_turbo.core.errors import ConfigError

from .conftest import invoke

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ollama_turbo"


def project(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "invoke.yaml").write_text("turbo:\n  kv: {type_k: q8_0, type_v: turbo3}\n  build: {backend: cpu}\n")
    given = tmp_path / "mine.yaml"
    given.write_text("turbo:\n  build: {backend: cuda}\n")
    return tmp_path, given


def test_each_value_names_its_layer(tmp_path: Path) -> None:
    where, given = project(tmp_path)
    layers = settings_layers.load(where, given, {"INVOKE_TURBO_KV_TYPE_K": "turbo2",
                                                 "INVOKE_TURBO_BUILD_BACKEND": "metal"})
    assert layers.origin("kv.type_v") == str(where / "invoke.yaml")
    assert layers.origin("kv.type_k") == "environment INVOKE_TURBO_KV_TYPE_K"  # the environment beats the file
    assert layers.origin("build.backend") == str(given)  # -f beats the environment
    assert layers.origin("workspace") == "built-in defaults"
    assert layers.given("kv.type_v") and not layers.given("workspace")
    s = layers.settings(where)
    assert (s.kv.type_k, s.kv.type_v, s.build.backend) == ("turbo2", "turbo3", "cuda")
    assert layers.sources()["build.version_suffix"] == "built-in defaults"


def test_the_environment_is_read_as_each_settings_type(tmp_path: Path) -> None:
    layers = settings_layers.load(tmp_path, None, {"INVOKE_TURBO_KV_FLASH_ATTENTION": "no",
                                                   "INVOKE_TURBO_BUILD_LEAVE_OUT": "laguna, other"})
    s = layers.settings(tmp_path)
    assert s.kv.flash_attention is False and s.build.leave_out == ("laguna", "other")
    with pytest.raises(ConfigError, match="INVOKE_TURBO_HOSTS: turbo.hosts is a section"):
        settings_layers.load(tmp_path, None, {"INVOKE_TURBO_HOSTS": "x"})


def test_a_bad_value_names_the_layer_it_came_from(tmp_path: Path) -> None:
    where, given = project(tmp_path)
    given.write_text("turbo:\n  build: {backend: rocm}\n")
    with pytest.raises(ConfigError, match=re.escape(f"turbo.build.backend (in {given})")):
        settings_layers.load(where, given, {}).settings(where)


@pytest.mark.parametrize("program", ["invoke", "ollama-turbo"])
def test_settings_show_says_where_each_value_came_from(tmp_path: Path, program: str) -> None:
    where, given = project(tmp_path)
    (where / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    env = {"INVOKE_TURBO_KV_TYPE_K": "turbo2", "PYTHONPATH": str(ROOT)}
    args = ("-f", str(given), "settings-show", "--where", "--key", "kv")
    if program == "invoke":
        r = invoke(*args, cwd=where, env=env)
    else:
        import subprocess

        r = subprocess.run([sys.executable, "-m", "ollama_turbo", *args], cwd=where, text=True,
                           capture_output=True, env={**__import__("os").environ, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["kv.type_k"] == "environment INVOKE_TURBO_KV_TYPE_K"
    assert shown["kv.type_v"] == str(where / "invoke.yaml")
    assert shown["kv.flash_attention"] == "built-in defaults"
    r2 = invoke("-f", str(given), "settings-show", "--where", "--key", "build.backend", cwd=where, env=env) \
        if program == "invoke" else None
    if r2 is not None:
        assert json.loads(r2.stdout) == {"build.backend": str(given)}


def test_no_private_invoke_configuration_is_read() -> None:
    """The toolkit's settings come from its own reader: nothing reaches into invoke's private config layers."""
    private = re.compile(r"\._(runtime|env|project|user|system|collection|overrides)(_path|_prefix|_found)?\b(?!\()")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in [*PACKAGE.rglob("*.py"), ROOT / "tasks.py"]
            for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert hits == []


def test_invokes_parser_is_neither_patched_nor_read_for_its_words() -> None:
    """The command line is checked by the toolkit before invoke parses it: nothing assigns to invoke's Program or
    Parser classes, and nothing matches invoke's English error messages."""
    patching = re.compile(r"setattr\((cls|Program|Parser)\b|\b(Program|Parser|ParseMachine)\.\w+\s*=[^=]"
                          r"|No idea what|needed value|did not receive required|invalid literal for|"
                          r"could not convert string")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in [*PACKAGE.rglob("*.py"), ROOT / "tasks.py"]
            for n, line in enumerate(p.read_text().splitlines(), 1) if patching.search(line)]
    assert hits == []
