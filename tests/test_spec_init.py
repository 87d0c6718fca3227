"""No implicit examples: modelfiles and deploy use the user's specs or say there are none; spec-init writes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.kv import modelfiles as modelfile

from .test_cli_fuzz import isolated, run

FLEET = "turbo:\n  hosts:\n    mac: {memory_gib: 36}\n    box: {os: linux, memory_gib: 24}\n"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    from ollama_turbo.sample.model import write_model

    return write_model(tmp_path / "models" / "sample-model.gguf")


def test_modelfiles_without_specs_says_so_and_how_to_write_one(tmp_path: Path) -> None:
    (tmp_path / "invoke.yaml").write_text(FLEET)
    with isolated(tmp_path):
        code, out, err = run(["modelfiles"])
    assert code == 2 and out == ""
    assert err == (f"error: no Modelfile specs: {tmp_path / 'modelfiles'} does not exist\n"
                   "  next step: write one for your model: invoke spec-init --from MODEL (an Ollama model name or a "
                   ".gguf file), or give --specs DIR; --examples renders the examples shipped with ollama-turbo\n")
    (tmp_path / "modelfiles").mkdir()
    with isolated(tmp_path):
        code, _, err = run(["modelfiles"])
    assert code == 2 and f"error: no Modelfile specs: {tmp_path / 'modelfiles'} has no <name>.yaml" in err
    with isolated(tmp_path):
        code, _, err = run(["modelfiles", "--specs", "nowhere"])
    assert code == 2 and "error: --specs nowhere: no such folder" in err


def test_the_examples_only_when_asked(tmp_path: Path) -> None:
    with isolated(tmp_path):
        code, out, err = run(["modelfiles", "--examples", "--out", str(tmp_path / "mf")])
        assert code == 0, err
        assert out.startswith("no hosts configured: the example specs are rendered for the example fleet")
        assert "macbook      qwen3.5-27b" in out
        code, _, err = run(["modelfiles", "--examples", "--specs", "x"])
    assert code == 2 and "give --specs DIR or --examples, not both" in err


def test_spec_init_writes_a_spec_that_renders_with_auto_context(tmp_path: Path, model: Path) -> None:
    (tmp_path / "invoke.yaml").write_text(FLEET)
    with isolated(tmp_path):
        # a relative path is written absolute: the spec is read from elsewhere later
        code, out, err = run(["spec-init", "--from", "models/sample-model.gguf", "--kv", "q8_0/turbo4"])
        assert code == 0, err
        spec = tmp_path / "modelfiles" / "sample-model.yaml"
        assert out == (f"wrote {spec}:\n"
                       "# sample-model, written by ollama-turbo spec-init: invoke modelfiles renders it for each host "
                       "below,\n"
                       "# invoke deploy creates it there. Other keys (parameters, system, template): "
                       "docs/kv-planning.md.\n"
                       f"from: {model}\n"
                       "num_ctx: auto                # the largest context each host's memory fits, from the GGUF's "
                       "geometry\n"
                       "kv: q8_0/turbo4              # this model's own cache (PARAMETER kv_cache_type)\n"
                       "hosts: [box, mac]\n"
                       "next: invoke modelfiles renders it for each host; invoke deploy --host H creates it there\n")
        loaded = modelfile.load_spec(spec)
        assert (loaded.from_, loaded.num_ctx, loaded.kv, loaded.hosts) == (str(model), "auto", KVPair("q8_0", "turbo4"),
                                                                          ["box", "mac"])
        code, out, err = run(["modelfiles", "--out", str(tmp_path / "mf")])
        assert code == 0, err
        assert "mac          sample-model             num_ctx 32,768" in out

        code, _, err = run(["spec-init", "--from", str(model)])  # never overwrites
        assert code == 2 and f"error: {spec} exists: spec-init does not overwrite a spec" in err
        assert modelfile.load_spec(spec).kv == KVPair("q8_0", "turbo4")


def test_spec_init_for_an_ollama_name(tmp_path: Path) -> None:
    """No GGUF: a fixed context, and the comment saying what 'auto' needs; no hosts: it says so."""
    with isolated(tmp_path):
        code, out, err = run(["spec-init", "--from", "qwen3:8b"])
    assert code == 0, err
    text = (tmp_path / "modelfiles" / "qwen3-8b.yaml").read_text()
    assert "from: qwen3:8b\nnum_ctx: 8192                # 'auto' (the largest context each host fits) needs" in text
    assert text.endswith("hosts: []\n")
    assert "no hosts configured: add them under turbo.hosts in invoke.yaml" in out
    spec = modelfile.load_spec(tmp_path / "modelfiles" / "qwen3-8b.yaml")
    assert (spec.from_, spec.num_ctx, spec.hosts) == ("qwen3:8b", 8192, [])


@pytest.mark.parametrize(("argv", "says"), [
    (["spec-init"], "error: spec-init needs --from MODEL"),
    (["spec-init", "--from", "x", "--gguf", "/no/such.gguf"], "error: --gguf /no/such.gguf: no such file"),
    (["spec-init", "--from", "/no/such.gguf"], "error: --from /no/such.gguf: no such file"),
    (["spec-init", "--from", "x", "--kv", "q8_0/"], "error: --kv q8_0/: 'q8_0/': K and V must both be named"),
    (["spec-init", "--from", "x", "--name", "../up"], "error: --name '../up': not a spec name"),
    (["spec-init", "--from", "x", "--hosts", "ghost"], "unknown host 'ghost'"),
])
def test_spec_init_refuses_bad_input(argv: list[str], says: str, tmp_path: Path) -> None:
    with isolated(tmp_path):
        code, _, err = run(argv)
    assert code == 2 and says in err and "next step:" in err, err
    assert not (tmp_path / "modelfiles").exists() or not list((tmp_path / "modelfiles").iterdir())


def test_a_deploy_without_specs_says_it_serves_no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.deploy import releases

    seen = {}

    class Done:
        def render(self, host: str) -> str:
            return "deployed"

        def to_json(self) -> dict:
            return {}

    def deploy(s: object, host: object, dist: Path, **kw: object) -> Done:
        seen.update(kw)
        return Done()

    monkeypatch.setattr(releases, "deploy", deploy)
    (tmp_path / "invoke.yaml").write_text(FLEET)
    with isolated(tmp_path):
        code, out, err = run(["deploy", "--host", "mac", "--dist", str(tmp_path)])
    assert code == 0, err
    assert out == (f"no Modelfile specs: {tmp_path / 'modelfiles'} does not exist: the server is deployed with no "
                   "models (to add one: invoke spec-init --from MODEL)\ndeployed\n")
    assert seen["specs_dir"] is None
