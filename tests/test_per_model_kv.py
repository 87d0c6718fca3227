"""A cache type per model: the Go rules a build applies give Ollama ``PARAMETER kv_cache_type``.

The sample world's Ollama has the real one's anchors (``api.Runner``, ``setParameters``, ``NewLlamaServer``,
the llama-server launch line) and no per-model support of its own: whatever a test sees here comes from the
rules the build applied.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.core import manifest
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError
from ollama_turbo.kv import modelfiles as modelfile
from ollama_turbo.prove import smoke
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.sample.model import write_model

from .conftest import invoke, serving

pytestmark = pytest.mark.sample


@pytest.fixture(scope="module")
def built(world: sample.World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("per-model-ws")
    s = config.parse({"workspace": str(ws), "build": {"backend": "cpu"}})
    r = build.run(s, build.Options(ollama=str(world.ollama_c), fork=str(world.fork)), say=lambda x: None)
    return r.dist


def test_the_build_records_per_model_cache_types_and_where_each_rule_applied(built: Path) -> None:
    m = manifest.load(built).data
    pm = m["per_model_kv"]
    assert pm["supported"] is True and pm["param"] == "kv_cache_type"
    assert {"f16", "q8_0", "turbo3", "turbo4"} <= set(pm["allowed"])
    rules = {r["rule"]: r for r in m["rules"]}
    for name, file in [("per-model-kv-option", "api/types.go"), ("per-model-kv-check", "server/create.go"),
                       ("per-model-kv-load", "llm/server.go"), ("per-model-kv-split", "llm/llama_server.go")]:
        assert rules[name]["status"] == "applied" and rules[name]["file"] == file
        assert isinstance(rules[name]["line"], int) and rules[name]["line"] > 0


def _other_file(tmp_path: Path, name: str) -> Path:
    """The sample model again as a file of its own (another ``general.name``, so another blob)."""
    return write_model(tmp_path / f"{name}.gguf")


def _model_path(client: Client, name: str) -> str:
    shown = client.post("/api/show", {"model": name})
    path = smoke.model_file(shown)
    assert path, name
    return path


def _servers_for(model_path: str) -> int:
    """How many llama-server processes run ``model_path``."""
    n = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"llama-server") and model_path.encode() in argv:
                n += 1
    return n


def test_two_models_with_their_own_cache_types_run_at_once(built: Path, world: sample.World,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "models"), "OLLAMA_KV_CACHE_TYPE": "f16", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(built / "bin" / "ollama", log, env) as client:
        # Ollama runs one llama-server per model file: three models loaded at once need three files
        client.create("smol-q8t4", gguf=world.model, parameters={"kv_cache_type": "q8_0/turbo4", "num_ctx": 2048})
        client.create("smol-t4", gguf=_other_file(tmp_path, "smol-t4"),
                      parameters={"kv_cache_type": "turbo4", "num_ctx": 2048})
        client.create("smol-default", gguf=_other_file(tmp_path, "smol-default"), parameters={"num_ctx": 2048})
        for name in ("smol-q8t4", "smol-t4", "smol-default"):
            assert client.generate(name, "hello there", num_predict=4)["done"]
        loaded = {m["name"] for m in client.get("/api/ps")["models"]}
        assert {"smol-q8t4:latest", "smol-t4:latest", "smol-default:latest"} <= loaded
        text = log.read_text(errors="replace")
        for name, (k, v) in [("smol-q8t4", ("q8_0", "turbo4")), ("smol-t4", ("turbo4", "turbo4")),
                             ("smol-default", ("f16", "f16"))]:
            path = _model_path(client, name)
            assert _servers_for(path) == 1, name
            ok, evidence = smoke.cache_type_from_log(text, k, v, "C", model_path=path)
            assert ok, (name, evidence)
            assert f"--cache-type-k {k} --cache-type-v {v}" in evidence
        # each model's own section of the log is read
        ok, evidence = smoke.cache_type_from_log(text, "turbo4", "turbo4", "C", model_path="/no/such/blob")
        assert not ok and "no llama-server command line for /no/such/blob" in evidence


def test_two_models_from_one_file_share_its_runner_the_second_load_replaces_the_first(
        built: Path, world: sample.World, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"OLLAMA_MODELS": str(tmp_path / "models"), "OLLAMA_KV_CACHE_TYPE": "f16", "OLLAMA_FLASH_ATTENTION": "1"}
    with serving(built / "bin" / "ollama", log, env) as client:
        client.create("smol-t4", gguf=world.model, parameters={"kv_cache_type": "turbo4", "num_ctx": 2048})
        client.create("smol-q8t4", gguf=world.model, parameters={"kv_cache_type": "q8_0/turbo4", "num_ctx": 2048})
        path = _model_path(client, "smol-t4")
        assert _model_path(client, "smol-q8t4") == path  # one blob
        for name, (k, v) in [("smol-t4", ("turbo4", "turbo4")), ("smol-q8t4", ("q8_0", "turbo4")),
                             ("smol-t4", ("turbo4", "turbo4"))]:
            assert client.generate(name, "hello there", num_predict=4)["done"]
            assert [m["name"] for m in client.get("/api/ps")["models"]] == [f"{name}:latest"]
            assert _servers_for(path) == 1, name
            text = log.read_text(errors="replace")
            section = smoke.model_section(text, path)  # the file's latest llama-server: this model's
            assert section is not None and f"--cache-type-k {k} --cache-type-v {v}" in section.splitlines()[0]
            ok, evidence = smoke.cache_type_from_log(text, k, v, "C", model_path=path)
            assert ok, (name, evidence)
        starts = [ln for ln in log.read_text(errors="replace").splitlines() if smoke.is_start_line(ln)]
        assert len(starts) == 3 and all(path in ln for ln in starts)
        # a model from another file runs beside it
        client.create("smol-other", gguf=_other_file(tmp_path, "smol-other"), parameters={"num_ctx": 2048})
        assert client.generate("smol-other", "hello there", num_predict=4)["done"]
        assert sorted(m["name"] for m in client.get("/api/ps")["models"]) == ["smol-other:latest", "smol-t4:latest"]
        assert _servers_for(path) == 1 and _servers_for(_model_path(client, "smol-other")) == 1


@pytest.mark.parametrize(("value", "message"), [
    ("turbo9", '"turbo9" is not a cache type this build\'s llama-server accepts (allowed: '),
    ("q8_0/", "K and V must both be named"),
    ("/turbo4", "K and V must both be named"),
    ("q8_0/turbo9", '"turbo9" is not a cache type'),
])
def test_ollama_create_refuses_a_cache_type_the_build_lacks(built: Path, world: sample.World, tmp_path: Path,
                                                            value: str, message: str) -> None:
    with serving(built / "bin" / "ollama", tmp_path / "serve.log", {"OLLAMA_MODELS": str(tmp_path / "m")}) as client:
        with pytest.raises(ApiError, match="kv_cache_type") as exc:
            client.create("bad", gguf=world.model, parameters={"kv_cache_type": value})
        assert message in str(exc.value)
        assert "bad:latest" not in {m["name"] for m in client.get("/api/tags")["models"]}


def _fleet(tmp_path: Path) -> config.Settings:
    return config.parse({"workspace": str(tmp_path / "ws"), "kv": {"type_k": "turbo4", "type_v": "turbo4"},
                         "hosts": {"mac": {"ssh": "local", "memory_gib": 16}}})


def _specs(tmp_path: Path, **kvs: str | None) -> list[modelfile.Spec]:
    out = []
    for name, kv in kvs.items():
        p = tmp_path / f"{name}.yaml"
        body = {"from": "smollm2:135m", "num_ctx": 4096, "hosts": ["mac"]}
        if kv:
            body["kv"] = kv
        p.write_text(yaml.safe_dump(body))
        out.append(modelfile.load_spec(p))
    return out


def test_modelfiles_render_the_parameter_per_model_and_the_host_default(tmp_path: Path) -> None:
    specs = _specs(tmp_path, a="q8_0/turbo4", b="turbo3", c=None)
    out = {r.spec.name: r for r in modelfile.render_all(_fleet(tmp_path), specs, tmp_path / "out")}
    assert "PARAMETER kv_cache_type q8_0/turbo4\n" in out["a"].text
    assert "PARAMETER kv_cache_type turbo3\n" in out["b"].text
    assert "kv_cache_type" not in out["c"].text.split("FROM", 1)[1]
    assert (out["c"].type_k, out["c"].type_v, out["c"].per_model) == ("turbo4", "turbo4", False)


def test_a_build_without_per_model_types_refuses_models_that_disagree(tmp_path: Path) -> None:
    specs = _specs(tmp_path, a="q8_0/turbo4", b="turbo3")
    era_b = _manifest({"version": "0.24.0-turbo+x", "era": "B", "per_model_kv": {
        "supported": False, "why_not": "era B runs llama.cpp inside Ollama"}})
    ok, why, _ = modelfile.per_model_support(era_b)
    assert not ok
    with pytest.raises(ConfigError, match="one KV cache type for every model \\(era B runs llama.cpp inside Ollama"):
        modelfile.render_all(_fleet(tmp_path), specs, tmp_path / "out", per_model=ok, why_not=why)
    # a build from before per-model support (no record at all) is refused the same way
    assert modelfile.per_model_support(_manifest({"version": "old", "era": "C"}))[0] is False


def _manifest(data: dict) -> manifest.Manifest:
    return manifest.parse(json.dumps({"files": {}, **data}), Path("dist/manifest.json"))


def test_a_type_the_build_lacks_is_refused_before_anything_reaches_a_host(tmp_path: Path) -> None:
    specs = _specs(tmp_path, a="turbo2")
    with pytest.raises(ConfigError, match="'turbo2' is not one this build's llama-server accepts"):
        modelfile.render_all(_fleet(tmp_path), specs, tmp_path / "out", allowed=["f16", "q8_0", "turbo3", "turbo4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("from: x\nkv: q8_0/\nhosts: [mac]\n")
    with pytest.raises(ConfigError, match="K and V must both be named"):
        modelfile.load_spec(bad)


def test_modelfiles_task_with_a_build_manifest(built: Path, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    _specs(specs, a="q8_0/turbo4")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"turbo": {"workspace": str(tmp_path / "ws"),
                                               "hosts": {"mac": {"ssh": "local", "memory_gib": 16}}}}))
    r = invoke("-f", str(fleet), "modelfiles", "--specs", str(specs), "--manifest", str(built), "--out",
               str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "KV q8_0/turbo4 (model)" in r.stdout
    assert "PARAMETER kv_cache_type q8_0/turbo4" in (tmp_path / "out/mac/a.Modelfile").read_text()
