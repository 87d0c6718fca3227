"""``invoke demo``: the whole job on the embedded sample world, offline.

Generates the sample world in the workspace, puts the TurboQuant fork into the era C Ollama
(a scratch copy of the fork as the llama.cpp source, Ollama's compat patch applied), builds
llama-server and the version-stamped ``ollama`` binary, runs it with ``turbo4`` and proves
that the KV cache really is ``turbo4``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import build_era_c, proc, sample
from .ollama_api import Client

Say = Callable[[str], None]


@dataclass
class DemoResult:
    world: str
    version: str
    binary: str
    llama_server: str
    cache_type: str
    server_argv: str
    kv_cache_line: str
    reply: str
    eval_count: int
    decode_tps: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(workspace: Path, say: Say = print, cache_type: str = "turbo4") -> DemoResult:
    root = workspace / "demo"
    if root.exists():
        shutil.rmtree(root)
    logs = root / "logs"
    say(f"1/5 generating the sample world in {root / 'world'}")
    world = sample.generate(root / "world")
    tag = proc.run(["git", "describe", "--tags", "--abbrev=0"], cwd=world.ollama_c).stdout.strip()
    fork_sha = proc.run(["git", "rev-parse", "--short=9", "HEAD"], cwd=world.fork).stdout.strip()
    version = f"{tag.lstrip('v')}-turbo+{fork_sha}"
    say(f"2/5 copying the fork ({sample.world.FORK_BRANCH} @ {fork_sha}) to a scratch source tree")
    fork_src = root / "fork-src"
    proc.run(["git", "clone", "-q", "--branch", sample.world.FORK_BRANCH, world.fork, fork_src])
    dist = root / "dist" / version
    say(f"3/5 building llama-server from the fork (cmake preset cpu); log: {logs / 'build.log'}")
    server_bin = build_era_c.build_llama_server(
        world.ollama_c, root / "build", dist, preset="cpu", source_dir=fork_src, log=logs / "build.log")
    say(f"4/5 building ollama {version} (go build)")
    binary = build_era_c.go_build(world.ollama_c, dist / "bin" / "ollama", version=version,
                                  log=logs / "build.log")
    port = free_port()
    serve_log = logs / "serve.log"
    say(f"5/5 running it on 127.0.0.1:{port} with OLLAMA_KV_CACHE_TYPE={cache_type}")
    server = proc.spawn([binary, "serve"], log=serve_log, extra_env={
        "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root / "models"),
        "OLLAMA_KV_CACHE_TYPE": cache_type, "OLLAMA_FLASH_ATTENTION": "1",
    })
    try:
        client = Client(f"http://127.0.0.1:{port}")
        client.wait_ready()
        served = client.version()
        client.create("sample", gguf=world.model, parameters={"num_ctx": 8192})
        out = client.generate("sample", "Why compress the KV cache?", num_predict=12)
    finally:
        proc.stop(server)
    log = serve_log.read_text(errors="replace")
    argv = next((ln for ln in log.splitlines() if "starting llama server" in ln), "")
    kv = next((ln for ln in log.splitlines() if re.search(r"llama_kv_cache: size", ln)), "")
    seconds = out.get("eval_duration", 0) / 1e9
    result = DemoResult(
        world=str(world.root), version=served, binary=str(binary), llama_server=str(server_bin),
        cache_type=cache_type, server_argv=argv, kv_cache_line=kv.strip(),
        reply=str(out.get("response", "")), eval_count=int(out.get("eval_count", 0)),
        decode_tps=round(out.get("eval_count", 0) / seconds, 1) if seconds else 0.0,
    )
    (root / "demo.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
