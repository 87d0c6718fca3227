from __future__ import annotations

from pathlib import Path

import pytest

from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError

from .conftest import invoke

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_point_at_the_real_projects() -> None:
    s = config.parse({})
    assert s.sources.ollama.url.endswith("ollama/ollama.git")
    assert s.sources.fork.ref == "feature/turboquant-kv-cache"
    assert "TheTom/llama-cpp-turboquant" in s.sources.fork.url
    assert s.sources.upstream.url.endswith("ggml-org/llama.cpp.git")
    assert (s.kv.type_k, s.kv.type_v, s.kv.flash_attention) == ("turbo4", "turbo4", True)
    assert s.build.backend == "metal"
    assert s.workspace == Path(".turbo")
    assert s.hosts == {}


def test_hosts_get_defaults_by_os() -> None:
    s = config.parse({"hosts": {
        "macbook": {"ssh": "me@macbook.local", "memory_gib": 36},
        "predator": {"ssh": "predator", "os": "linux"},
    }})
    mac, box = s.host("macbook"), s.host("predator")
    assert (mac.os, mac.service, mac.port, mac.memory_gib) == ("darwin", "launchd", 11434, 36.0)
    assert (box.os, box.service) == ("linux", "systemd")
    assert not mac.is_local


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"kv": {"type_kk": "q8_0"}}, "turbo.kv.type_kk", "unknown key"),
    ({"colour": "red"}, "turbo.colour", "unknown key"),
    ({"kv": {"flash_attention": "maybe"}}, "turbo.kv.flash_attention", "true or false"),
    ({"build": {"backend": "rocm"}}, "turbo.build.backend", "not one of: metal, cuda, cpu"),
    ({"build": {"cuda_arch": "9.0"}}, "turbo.build.cuda_arch", "not a CUDA architecture"),
    ({"build": {"cuda_arch": True}}, "turbo.build.cuda_arch", "compute capability without the dot"),
    ({"kv": {"type_k": 8}}, "turbo.kv.type_k", "non-empty string"),
    ({"kv": {"type_v": "Turbo 4"}}, "turbo.kv.type_v", "not a cache type the fork has"),
    ({"kv": {"type_k": "turbo5"}}, "turbo.kv.type_k", "'turbo5' is not a cache type the fork has; known: f32, f16"),
    ({"kv": {"env": {"TURBO_LAYER_ADAPTIVE": "x"}}}, "turbo.kv.env.TURBO_LAYER_ADAPTIVE",
     "not a layer-adaptive mode"),
    ({"kv": {"env": {"turbo layer": 1}}}, "turbo.kv.env.turbo layer", "environment variable"),
    ({"sources": {"fork": {"ref": ""}}}, "turbo.sources.fork.ref", "non-empty string"),
    ({"sources": "here"}, "turbo.sources", "expected a mapping"),
    ({"hosts": {"mac": {"os": "windows"}}}, "turbo.hosts.mac.os", "not one of"),
    ({"hosts": {"mac": {"os": "linux", "service": "launchd"}}}, "turbo.hosts.mac.service", "darwin"),
    ({"hosts": {"mac": {"memory_gib": -3}}}, "turbo.hosts.mac.memory_gib", "positive number"),
    ({"hosts": {"mac": {"memory_gib": float("nan")}}}, "turbo.hosts.mac.memory_gib", "positive number, got nan"),
    ({"hosts": {"mac": {"memory_gib": float("inf")}}}, "turbo.hosts.mac.memory_gib", "positive number, got inf"),
    ({"hosts": {"mac": {"health_timeout": float("inf")}}}, "turbo.hosts.mac.health_timeout", "seconds > 0"),
    ({"hosts": {"mac": {"listen": "nowhere"}}}, "turbo.hosts.mac.listen", "does not match"),
    ({"hosts": {"mac": {"sshh": "x"}}}, "turbo.hosts.mac.sshh", "unknown key"),
    ({"hosts": {"mac": {"prefix": "relative/dir"}}}, "turbo.hosts.mac.prefix", "absolute path"),
    ({"hosts": {"mac": {"prefix": "~/a\nrm -rf ~"}}}, "turbo.hosts.mac.prefix", "single line"),
])
def test_bad_settings_name_the_key_and_the_file(raw: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(raw, lambda k: "/home/me/invoke.yaml")
    msg = str(info.value)
    assert msg.startswith(key + " (in /home/me/invoke.yaml): "), msg
    assert words in msg
    assert info.value.exit_code == 2


def test_unknown_host_lists_the_known_ones() -> None:
    s = config.parse({"hosts": {"macbook": {}}})
    with pytest.raises(ConfigError, match=r"unknown host 'mini' \(configured hosts: macbook\)"):
        s.host("mini")


def test_env_and_runtime_file_override_defaults(tmp_path: Path) -> None:
    r = invoke("settings-show", "--key", "kv", env={"INVOKE_TURBO_KV_TYPE_K": "q8_0"})
    assert r.returncode == 0, r.stderr
    assert '"type_k": "q8_0"' in r.stdout and '"type_v": "turbo4"' in r.stdout
    f = tmp_path / "mine.yaml"
    f.write_text("turbo:\n  build: {backend: cuda}\n  hosts:\n    box: {os: linux, memory_gib: 24}\n")
    r = invoke("-f", str(f), "settings-show")
    assert r.returncode == 0, r.stderr
    assert '"backend": "cuda"' in r.stdout and '"service": "systemd"' in r.stdout


def test_bad_value_in_runtime_file_names_it(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("turbo:\n  kv:\n    type_k: q8_0\n    flash_attention: sometimes\n")
    r = invoke("-f", str(f), "settings-show")
    assert r.returncode == 2
    assert f"turbo.kv.flash_attention (in {f})" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_value_from_env_names_the_variable() -> None:
    r = invoke("settings-show", env={"INVOKE_TURBO_BUILD_BACKEND": "rocm"})
    assert r.returncode == 2
    assert "turbo.build.backend (in environment INVOKE_TURBO_BUILD_BACKEND)" in r.stderr


def test_malformed_project_yaml_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    (tmp_path / "invoke.yaml").write_text("turbo:\n  kv: [q8_0,\n")
    r = invoke("settings-show", cwd=tmp_path)
    assert r.returncode == 2
    assert f"{tmp_path / 'invoke.yaml'}:3:1: not valid YAML" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_runtime_file_is_a_clear_error(tmp_path: Path) -> None:
    r = invoke("-f", str(tmp_path / "nope.yaml"), "settings-show")
    assert r.returncode == 2
    assert "nope.yaml does not exist" in r.stderr


def test_every_task_has_help() -> None:
    r = invoke("--list")
    assert r.returncode == 0
    for name in ("demo", "sample", "settings-show"):
        assert name in r.stdout
    r = invoke("--help", "sample")
    assert "--scenario" in r.stdout and "empty directory" in r.stdout


def test_the_cache_is_typed_once_with_the_forks_knobs() -> None:
    s = config.parse({"kv": {"type_k": "Q8_0", "type_v": "turbo4",
                             "env": {"TURBO_LAYER_ADAPTIVE": 7, "TURBO_AUTO_ASYMMETRIC": False}}})
    assert (s.kv.type_k, s.kv.label) == ("q8_0", "q8_0/turbo4")
    assert (s.kv.fork.layer_adaptive, s.kv.fork.auto_asymmetric) == (7, False)
    assert s.kv.env == {"TURBO_LAYER_ADAPTIVE": "7", "TURBO_AUTO_ASYMMETRIC": "0"}  # as the server is given them
    d = config.parse({}).kv
    assert (d.label, d.fork.layer_adaptive, d.fork.auto_asymmetric) == ("turbo4", None, True)


def test_a_ref_is_given_only_when_the_user_sets_it(tmp_path: Path) -> None:
    s = config.parse({})
    assert not s.sources.ollama.ref_given and s.sources.ollama.ref == "main"
    s = config.parse({"sources": {"ollama": {"url": "/src/ollama", "ref": "v0.30.0"}}})
    assert s.sources.ollama.ref_given and not s.sources.fork.ref_given


@pytest.mark.parametrize(("knob", "value", "words"), [
    ("TURBO_LAYER_ADAPTIVE", "x", "'x' is not a layer-adaptive mode of the fork: one of 0, 1, 2, 5, 6, 7"),
    ("TURBO_LAYER_ADAPTIVE", "3", "'3' is not a layer-adaptive mode of the fork"),
    ("TURBO_AUTO_ASYMMETRIC", "yes", "'yes': the fork reads 0 (off) or 1 (on)"),
])
def test_a_fork_knob_the_fork_would_misread_stops_every_task_at_the_start(tmp_path: Path, knob: str, value: str,
                                                                          words: str) -> None:
    f = tmp_path / "knobs.yaml"
    f.write_text(f"turbo:\n  kv:\n    env: {{{knob}: \"{value}\"}}\n")
    for task in (["plan", "--layers", "8", "--kv-heads", "2", "--head-dim", "64", "--ctx", "4k"],
                 ["modelfiles", "--out", str(tmp_path / "mf")]):
        r = invoke("-f", str(f), *task)
        assert r.returncode == 2, (task, r.stdout, r.stderr)
        assert f"error: turbo.kv.env.{knob} (in {f}): {words}" in r.stderr and "next step:" in r.stderr
    assert not list((tmp_path / "mf").glob("*"))  # nothing rendered


@pytest.mark.parametrize(("text", "says"), [
    ("turbo:\n", "error: turbo (in {f}): nothing under it\n  next step: put its settings under it, indented, or "
                  "delete the line 'turbo:' in {f}\n"),
    ("turbo:\n  kv:\n", "error: turbo.kv (in {f}): nothing under it\n"),
    ("turbo:\n  kv: 3\n", "error: turbo.kv (in {f}): expected a mapping, got int 3\n"),
    ("turbo:\n  workspace: {a: 1}\n", "error: turbo.workspace (in {f}): expected a single value, got a mapping\n"),
    ("run: yes\n", "error: run (in {f}): expected a mapping, got bool True\n"),
])
def test_an_empty_or_misshapen_section_is_named_not_a_merge_traceback(tmp_path: Path, text: str, says: str) -> None:
    """invoke would end these in AmbiguousMergeError: each is named by its key and file."""
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    r = invoke("-f", str(f), "settings-show")
    assert r.returncode == 2 and says.format(f=f) in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_settings_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_bytes(b"turbo:\n  workspace: \xe9\n")
    r = invoke("-f", str(f), "settings-show")
    assert r.returncode == 2 and f"error: {f}: not UTF-8 text (byte 20: b'\\xe9')" in r.stderr
