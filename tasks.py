"""ollama-turbo tasks. Thin: parse flags, call the package, map errors to exit codes.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for each one's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

from ollama_turbo import config, proc, settings_files
from ollama_turbo.errors import ConfigError, TurboError

ROOT = Path(__file__).resolve().parent


def _fail(err: TurboError) -> Exit:
    return Exit(f"error: {err}", code=err.exit_code)


try:
    settings_files.preflight(ROOT, sys.argv)
except TurboError as _err:
    print(f"error: {_err}", file=sys.stderr)
    sys.exit(_err.exit_code)


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body with our settings; turn TurboError into its exit code."""

    @wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        proc.set_verbose(bool(kwargs.get("verbose")) or proc._verbose)
        try:
            return fn(c, *args, **kwargs)
        except TurboError as err:
            raise _fail(err) from None

    return wrapper


def settings(c: Any) -> config.Settings:
    return settings_files.settings(c.config, ROOT)


@task(help={"dest": "empty directory to write the four repositories into",
            "scenario": "clean (default), fork-behind, collision, removed-function, patch-conflict",
            "verbose": "echo every command"})
@entry
def sample(c, dest, scenario="clean", verbose=False):
    """Write the sample world (upstream, fork, Ollama era B and C) as real git repos."""
    from ollama_turbo import sample as sample_world

    world = sample_world.generate(Path(dest), sample_world.scenario(scenario))
    print(world.describe())


@task(help={"verbose": "echo every command", "cache_type": "KV cache type to run with (default turbo4)"})
@entry
def demo(c, verbose=False, cache_type="turbo4"):
    """Run the whole job offline on the embedded sample world."""
    from ollama_turbo import demo as demo_mod

    s = settings(c)
    r = demo_mod.run(s.workspace, say=print, cache_type=cache_type)
    print()
    print(f"built     {r.binary}")
    print(f"version   {r.version}")
    print(f"argv      {r.server_argv.split('cmd=', 1)[-1].strip(chr(34))}")
    print(f"kv cache  {r.kv_cache_line}")
    print(f"reply     {r.reply!r} ({r.eval_count} tokens, {r.decode_tps} tok/s)")
    print(f"result    {s.workspace / 'demo' / 'demo.json'}")


@task(help={"key": "show only this dotted key, e.g. kv.type_k"})
@entry
def settings_show(c, key=""):
    """Print the validated settings (defaults merged with invoke.yaml, env and -f)."""
    import dataclasses
    import json

    s = dataclasses.asdict(settings(c))
    value: Any = s
    for part in [p for p in key.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            raise _fail(ConfigError("no such setting", key=key))
        value = value[part]
    print(json.dumps(value, indent=2, default=str))


@task(help={
    "model": "GGUF file to read the geometry (and weights size) from",
    "layers": "number of layers (instead of --model)",
    "kv_heads": "KV heads per layer (instead of --model)",
    "head_dim": "head size (instead of --model)",
    "heads": "query heads (for the auto-asymmetric rule; default = kv heads)",
    "weights_gib": "model weights in GiB, for the host budget (instead of --model)",
    "ctx": "context sizes, comma-separated (e.g. 8192,32k,128k)",
    "types": "cache types or K/V pairs, comma-separated (e.g. f16,q8_0,turbo4,q8_0/turbo4)",
    "host": "size the largest context for this host's memory_gib",
    "reserve_gib": "memory kept for OS, runtime and compute buffers (default 4)",
    "json": "also write the plan as JSON to this file",
})
@entry
def plan(c, model="", layers=0, kv_heads=0, head_dim=0, heads=0, weights_gib=0.0,
         ctx="4096,8192,32768,131072", types="f16,q8_0,q4_0,turbo4,turbo3,turbo2,q8_0/turbo4",
         host="", reserve_gib=4.0, json=""):
    """KV cache MiB per context and cache type, and the largest context a host fits."""
    import json as jsonlib

    from ollama_turbo import kvmem
    from ollama_turbo import plan as plan_mod
    from ollama_turbo.errors import UsageError

    s = settings(c)
    if model:
        geo = kvmem.geometry_from_gguf(Path(model).expanduser())
    elif layers and kv_heads and head_dim:
        geo = kvmem.Geometry.simple(int(layers), int(kv_heads), int(head_dim), heads=int(heads) or None,
                                    weights_bytes=int(float(weights_gib) * kvmem.GIB))
    else:
        raise UsageError("give --model GGUF, or --layers, --kv-heads and --head-dim")
    budget = None
    if host:
        h = s.host(host)
        if h.memory_gib is None:
            raise ConfigError("no memory size for this host", key=f"hosts.{host}.memory_gib",
                              hint="set it in invoke.yaml")
        budget = plan_mod.Budget(host, h.memory_gib, geo.weights_bytes, float(reserve_gib))
    p = plan_mod.make_plan(geo, plan_mod.parse_contexts(ctx), plan_mod.parse_types(types),
                           fb=kvmem.ForkBehaviour.from_env(s.kv.env), budget=budget)
    print(p.render())
    if json:
        Path(json).write_text(jsonlib.dumps(p.to_json(), indent=2) + "\n")
        print(f"\nwrote {json}")


@task(help={"host": "render only for this host (default: every host)",
            "out": "output directory (default: <workspace>/modelfiles)",
            "specs": "directory of <name>.yaml specs (default: modelfiles/)",
            "reserve_gib": "memory kept for OS, runtime and compute buffers (default 4)"})
@entry
def modelfiles(c, host="", out="", specs="", reserve_gib=4.0):
    """Render Modelfiles from modelfiles/*.yaml, num_ctx sized for each host's KV cache."""
    from ollama_turbo import modelfile

    s = settings(c)
    spec_list = modelfile.load_specs(Path(specs) if specs else ROOT / "modelfiles")
    out_dir = Path(out) if out else s.workspace / "modelfiles"
    rendered = modelfile.render_all(s, spec_list, out_dir, host=host or None, reserve_gib=float(reserve_gib))
    if not rendered:
        print("no spec targets " + (f"host {host}" if host else "any configured host")
              + " (add host names under 'hosts:' in the specs)")
    for r in rendered:
        ctx = f"num_ctx {r.num_ctx:,}" if r.num_ctx else "num_ctx from the model"
        print(f"{r.host:<12} {r.spec.name:<24} {ctx:<22} KV {r.type_k}/{r.type_v}  -> {r.path}")


@task(help={
    "ollama": "Ollama source: a local checkout or a git URL (default: turbo.sources.ollama.url)",
    "ollama_ref": "Ollama ref (default: turbo.sources.ollama.ref)",
    "fork": "fork source: a local checkout or a git URL (default: turbo.sources.fork.url)",
    "fork_ref": "fork ref (default: turbo.sources.fork.ref)",
    "upstream": "upstream llama.cpp, for the tag an era C Ollama pins (default: turbo.sources.upstream.url)",
    "target": "layouts for this target: arm64-apple-macos (default), x86_64-linux-gnu, aarch64-linux-gnu",
    "json": "write the report as JSON to this file",
    "markdown": "write the report as Markdown to this file",
    "scan_ollama": "check against several Ollama refs (v0.30.0,v0.31.0 or v0.30.0..v0.32.0) and rank them",
    "apiignore": "accepted changes (YAML); default: .apiignore in the project",
    "verbose": "echo every command",
})
@entry
def api_check(c, ollama="", ollama_ref="", fork="", fork_ref="", upstream="", target="arm64-apple-macos",
              json="", markdown="", scan_ollama="", apiignore="", verbose=False):
    """Can this fork replace the llama.cpp that this Ollama pins? Exit 0 ok, 4 review, 8 incompatible."""
    import json as jsonlib

    from ollama_turbo import apicheck, sources

    s = settings(c)
    supp = apicheck.load_apiignore(Path(apiignore) if apiignore else ROOT / ".apiignore")
    fork_co = sources.open_source("fork", fork or s.sources.fork.url, fork_ref or s.sources.fork.ref,
                                  s.workspace)
    ollama_url = ollama or s.sources.ollama.url
    if scan_ollama:
        rows = apicheck.scan(s, ollama_url=ollama_url, refs=scan_ollama, fork=fork_co,
                             upstream_url=upstream or None, target=target, suppressions=supp)
        print(apicheck.render_scan(rows))
        if json:
            Path(json).write_text(jsonlib.dumps([vars(r) for r in rows], indent=2) + "\n")
        best = next((r for r in rows if r.verdict != "error"), None)
        if best is None:
            raise Exit("error: no Ollama ref could be checked", code=1)
        if best.exit_code:
            raise Exit(code=best.exit_code)
        return
    ollama_co = sources.open_source("ollama", ollama_url, ollama_ref or s.sources.ollama.ref, s.workspace)
    report = apicheck.check(s, ollama=ollama_co, fork=fork_co, upstream_url=upstream or None,
                            target=target, suppressions=supp)
    print(apicheck.render(report), end="")
    if json:
        Path(json).write_text(jsonlib.dumps(report.to_json(), indent=2) + "\n")
    if markdown:
        Path(markdown).write_text(apicheck.render(report, markdown=True))
    if report.exit_code():
        raise Exit(code=report.exit_code())


ns = Collection(sample, demo, settings_show, plan, modelfiles, api_check)
ns.configure({"turbo": config.DEFAULTS})
