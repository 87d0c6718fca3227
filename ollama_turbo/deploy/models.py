"""The models a host serves, decided before the host changes: their Modelfiles rendered for the build (a cache
type per model where it takes one), the server's default K/V, the quality gate; then created there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable
from ollama_turbo.kv import modelfiles as modelfile
from ollama_turbo.prove import quality
from ollama_turbo.prove.ollama_api import Client

Say = Callable[[str], None]


def server_kv(settings: Settings, rendered: list[modelfile.Rendered]) -> KVPair:
    """The K/V pair the host's server is configured with (its default): what the Modelfiles without their own
    ``kv_cache_type`` were rendered for (:func:`ollama_turbo.kv.modelfiles.render_all`), else the settings."""
    shared = [r for r in rendered if not r.per_model]
    return KVPair(shared[0].type_k, shared[0].type_v) if shared else KVPair(settings.kv.type_k, settings.kv.type_v)


def render_models(settings: Settings, host: Host, specs_dir: Path | None,
                  m: Manifest | None = None) -> list[modelfile.Rendered]:
    """The host's Modelfiles, rendered before anything on the host changes (bad specs stop here), for the build
    being deployed: its block formats, and a cache type per model where it takes ``PARAMETER kv_cache_type``
    (a spec's ``kv`` for a build without that must agree with every other model on the host)."""
    if specs_dir is None or not specs_dir.is_dir():
        return []
    specs = [s for s in modelfile.load_specs(specs_dir) if host.name in s.hosts]
    if not specs:
        return []
    blocks = BlockTable.from_manifest(m) if m and m.cache_types else BUILTIN
    per_model, why_not, allowed = modelfile.per_model_support(m)
    return modelfile.render_all(settings, specs, settings.workspace / "modelfiles", host=host.name, blocks=blocks,
                                per_model=per_model, why_not=why_not, allowed=allowed)


def quality_gate(settings: Settings, rendered: list[modelfile.Rendered],
                 accept_unmeasured: bool) -> list[dict[str, Any]]:
    """Each served model's recorded quality verdict with the K/V pair it will run (its own, or the host's); a
    failed one, or an unmeasured one without ``accept_unmeasured``, stops the deploy before the host is touched."""
    out = []
    for r in rendered:
        kv = KVPair(r.type_k, r.type_v)
        config = kv.label
        gguf = r.spec.gguf or (Path(r.spec.from_).expanduser() if r.spec.from_.endswith(".gguf") else None)
        found = (quality.verdict_for(settings.workspace, quality.model_sha256(settings.workspace, gguf), kv)
                 if gguf and gguf.is_file() else None)
        entry: dict[str, Any] = {"model": r.spec.name, "config": config}
        if found is None:
            if not accept_unmeasured:
                raise DeployError(f"{r.spec.name} has no quality measurement with {config} (invoke quality has not "
                                  f"compared it with the f16 cache{'' if gguf else '; its spec names no GGUF file'})",
                                  hint=f"measure it: invoke quality --model {gguf or '<the .gguf>'} --types {config} "
                                       "--manifest <dist>; or deploy anyway with --accept-unmeasured")
            entry["verdict"] = "unmeasured (accepted)"
        elif found["verdict"] == "FAIL":
            raise DeployError(f"{r.spec.name} with {config} failed the quality gate: mean KLD {found['kld']:.5f}, "
                              f"ΔPPL {found['dppl']:+.4f} at ctx {found['ctx']} (report {found['report']})",
                              hint=f"invoke recommend --model {gguf} --host <host> picks a config that passes; set it "
                                   "in the spec's kv: or turbo.kv")
        else:
            entry.update(found)
        out.append(entry)
    return out


def create_models(host: Host, url: str, rendered: list[modelfile.Rendered], say: Say) -> list[str]:
    client = Client(url, timeout=600)
    names = []
    for r in rendered:
        s = r.spec
        params: dict[str, Any] = dict(s.parameters)
        if r.num_ctx:
            params["num_ctx"] = r.num_ctx
        if r.kv_param:
            params["kv_cache_type"] = r.kv_param  # the model's own cache (a build with per-model cache types)
        local = Path(s.from_).expanduser()
        if s.from_.endswith(".gguf") and local.is_file():
            client.create(s.name, gguf=local, parameters=params, template=s.template or None,
                          system=s.system or None)
        else:
            client.create(s.name, from_=s.from_, parameters=params, template=s.template or None,
                          system=s.system or None)
        say(f"[{host.name}] model {s.name} created (num_ctx {r.num_ctx or 'default'}"
            + (f", kv_cache_type {r.kv_param})" if r.kv_param else ")"))
        names.append(s.name)
    return names
