"""``invoke demo``: the whole job on the embedded sample world, offline.

sample world -> api-check (era C) -> build-ollama (cpu) -> plan + Modelfile -> deploy to this
machine (a detached service) -> smoke (version, model, generation, cache type in effect).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo import sample
from ollama_turbo.builder import build_ollama as build
from ollama_turbo.check import apicheck
from ollama_turbo.core import settings as config
from ollama_turbo.core import sources
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.ports import free_port
from ollama_turbo.kv import geometry, plan

Say = Callable[[str], None]


@dataclass
class DemoResult:
    world: str
    verdict: str
    version: str
    dist: str
    plan: str
    smoke_ok: bool
    smoke: dict[str, Any] = field(default_factory=dict)


def run(workspace: Path, say: Say = print, cache_type: str = "turbo4", keep_running: bool = False) -> DemoResult:
    import shutil

    root = workspace / "demo"
    # a fresh demo each time, but the llama-server build cache is kept: the sample world is made the same way
    # every time (fixed commit dates), so a warm run compiles nothing
    for old in [*(root.iterdir() if root.is_dir() else []), *((root / "ws").iterdir() if (root / "ws").is_dir()
                                                               else [])]:
        if old.name in ("ws", "cache"):
            continue
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    say(f"1/7 sample world -> {root / 'world'}")
    world = sample.generate(root / "world")
    raw: dict[str, Any] = {
        "workspace": str(root / "ws"), "build": {"backend": "cpu"},
        "kv": {"type_k": cache_type, "type_v": cache_type},
        "sources": {"ollama": {"url": str(world.ollama_c), "ref": "main"},
                    "fork": {"url": str(world.fork), "ref": sample.world.FORK_BRANCH},
                    "upstream": {"url": str(world.upstream), "ref": "master"}}}
    s = config.parse(raw)
    say("2/7 api-check: can the fork replace the llama.cpp Ollama pins?")
    ollama = sources.open_configured(s, "ollama")
    fork = sources.open_configured(s, "fork")
    report = apicheck.check(s, ollama=ollama, fork=fork)
    say(f"    verdict {report.verdict} (exit {report.exit_code()}): {report.count('incompatible')} incompatible, "
        f"{report.count('review')} to review; flags ok: {all(f.in_fork for f in report.flags)}; "
        f"compat patches: {', '.join(p.status for p in report.patches)}")
    say("3/7 build-ollama (era C, cpu)")
    b = build.run(s, build.Options(go_env={"GOPROXY": world.goproxy_url}), say=lambda line: say("   " + line))
    geo = geometry.geometry_from_gguf(world.model)
    say(f"4/7 plan: KV cache of {world.model.name} at 8,192 tokens; Modelfile with num_ctx: auto")
    p = plan.make_plan(geo, [8192], [KVPair("f16", "f16"), KVPair("q8_0", "q8_0"), KVPair(cache_type, cache_type)])
    table = "\n".join(p.table_lines())
    for line in table.splitlines():
        say("    " + line)
    say(f"5/7 quality: {cache_type} against the f16 cache on {world.model.name} (the build's llama-perplexity)")
    from ollama_turbo.prove import quality as quality_mod
    from ollama_turbo.prove import reports

    tools = reports.Tools.of(str(b.dist))  # the quality task's own path: the build's tool, criteria, index
    q, _ = reports.run_quality(s.workspace, world.model, tools.tool("llama-perplexity"), tools,
                               quality_mod.Options(pairs=[KVPair(cache_type, cache_type)],
                                                                    contexts=[512]), root / "quality",
                               say=lambda line: None)
    for r in q["results"]:
        say(f"    {r['label']}: mean KLD {r['kld']:.5f}, top-1 agreement {100 * r['top1']:.1f} %, "
            f"ΔPPL {r['dppl']:+.4f} -> {r['verdict']}")
    specs = root / "modelfiles"
    specs.mkdir(parents=True)
    (specs / "sample.yaml").write_text(f"from: {world.model}\nnum_ctx: auto\nhosts: [this-machine]\n"
                                       "parameters: {temperature: 0}\n")
    port = free_port()
    s = config.parse({**raw, "hosts": {"this-machine": {
        "ssh": "local", "os": "linux", "service": "none", "listen": f"127.0.0.1:{port}", "memory_gib": 6,
        "prefix": str((root / "host").resolve()), "models_dir": str((root / "host-models").resolve()),
        "health_timeout": 30}}})
    say(f"6/7 deploy {b.plan.version} to this machine (127.0.0.1:{port}, a detached service under {root / 'host'})")
    from ollama_turbo.deploy import releases as deploy_mod

    host = s.host("this-machine")
    try:
        d = deploy_mod.deploy(s, host, b.dist, specs_dir=specs, say=lambda line: say("    " + line))
    finally:
        if not keep_running:
            from ollama_turbo.deploy.managers import manager_for
            from ollama_turbo.deploy.services import Layout
            from ollama_turbo.deploy.transport import LocalTransport

            manager_for(LocalTransport(), host, Layout("", str(root / "host"), "")).stop()
    say("7/7 smoke (run by the deploy): version, model, generation, /api/ps, cache type in effect")
    r = d.proofs[0]  # the deploy's own smoke of the first model (the deploy fails when a smoke fails)
    for line in r.render().splitlines()[1:]:
        say("    " + line)
    result = DemoResult(world=str(world.root), verdict=report.verdict, version=b.plan.version, dist=str(b.dist),
                        plan=table, smoke_ok=r.ok, smoke=r.to_json())
    (root / "demo.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
