"""``invoke demo``: the whole job on the embedded sample world, offline.

sample world -> api-check (era C) -> build-ollama (cpu) -> plan -> run the build with turbo4 ->
create the model -> smoke (version, model, generation, cache type in effect).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import apicheck, build, config, kvmem, plan, proc, sample, smoke, sources
from .ollama_api import Client

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(workspace: Path, say: Say = print, cache_type: str = "turbo4") -> DemoResult:
    import shutil

    root = workspace / "demo"
    if root.exists():
        shutil.rmtree(root)
    say(f"1/6 sample world -> {root / 'world'}")
    world = sample.generate(root / "world")
    s = config.parse({"workspace": str(root / "ws"), "build": {"backend": "cpu"},
                      "kv": {"type_k": cache_type, "type_v": cache_type},
                      "sources": {"ollama": {"url": str(world.ollama_c), "ref": "main"},
                                  "fork": {"url": str(world.fork), "ref": sample.world.FORK_BRANCH},
                                  "upstream": {"url": str(world.upstream), "ref": "master"}}})
    say("2/6 api-check: can the fork replace the llama.cpp Ollama pins?")
    ollama = sources.open_source("ollama", str(world.ollama_c), "main", s.workspace)
    fork = sources.open_source("fork", str(world.fork), sample.world.FORK_BRANCH, s.workspace)
    report = apicheck.check(s, ollama=ollama, fork=fork)
    say(f"    verdict {report.verdict} (exit {report.exit_code()}): {report.count('incompatible')} incompatible, "
        f"{report.count('review')} to review; flags ok: {all(f.in_fork for f in report.flags)}; "
        f"compat patches: {', '.join(p.status for p in report.patches)}")
    say("3/6 build-ollama (era C, cpu)")
    b = build.run(s, build.Options(), say=lambda line: say("   " + line))
    geo = kvmem.geometry_from_gguf(world.model)
    say(f"4/6 plan: KV cache of {world.model.name} at 8,192 tokens")
    p = plan.make_plan(geo, [8192], [("f16", "f16"), ("q8_0", "q8_0"), (cache_type, cache_type)])
    table = "\n".join(p.render().splitlines()[2:6])
    for line in table.splitlines():
        say("    " + line)
    port = free_port()
    log = root / "logs" / "serve.log"
    say(f"5/6 run {b.plan.version} on 127.0.0.1:{port} with OLLAMA_KV_CACHE_TYPE={cache_type}")
    server = proc.spawn([b.dist / "bin" / "ollama", "serve"], log=log, extra_env={
        "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root / "models"),
        "OLLAMA_KV_CACHE_TYPE": cache_type, "OLLAMA_FLASH_ATTENTION": "1"})
    try:
        client = Client(f"http://127.0.0.1:{port}")
        client.wait_ready()
        client.create("sample", gguf=world.model, parameters={"num_ctx": 8192})
        say("6/6 smoke: version, model, generation, /api/ps, cache type in effect")
        r = smoke.smoke_ollama(client.base, model="sample", log=log.read_text,
                               expect=smoke.Expect(version=b.plan.version, type_k=cache_type, type_v=cache_type,
                                                   era="C"))
    finally:
        proc.stop(server)
    for line in r.render().splitlines()[1:]:
        say("    " + line)
    result = DemoResult(world=str(world.root), verdict=report.verdict, version=b.plan.version, dist=str(b.dist),
                        plan=table, smoke_ok=r.ok, smoke=r.to_json())
    (root / "demo.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
