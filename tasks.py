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
from ollama_turbo import manifest as manifest_mod
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


@task(help={"verbose": "echo every command", "cache_type": "KV cache type to run with (default turbo4)",
            "keep_running": "leave the deployed demo server running (stop it with kill $(cat <pidfile>))"})
@entry
def demo(c, verbose=False, cache_type="turbo4", keep_running=False):
    """Run the whole job offline on the embedded sample world."""
    from ollama_turbo import demo as demo_mod

    s = settings(c)
    r = demo_mod.run(s.workspace, say=print, cache_type=cache_type, keep_running=keep_running)
    print()
    print(f"{'OK' if r.smoke_ok else 'FAILED'}: Ollama {r.version} runs the fork with a {cache_type} KV cache")
    print(f"result: {s.workspace / 'demo' / 'demo.json'}")
    print(r.dist)
    if not r.smoke_ok:
        raise Exit(code=1)


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


@task(help={
    "ollama": "Ollama source: a local checkout or a git URL (default: turbo.sources.ollama.url)",
    "ollama_ref": "Ollama ref (default: turbo.sources.ollama.ref)",
    "fork": "fork source: a local checkout or a git URL (default: turbo.sources.fork.url)",
    "fork_ref": "fork ref (default: turbo.sources.fork.ref)",
    "backend": "metal, cuda or cpu (default: turbo.build.backend)",
    "dry_run": "print the plan (sources, pins, rules, patches, commands) and change nothing",
    "force": "rebuild even when the inputs are unchanged",
    "allow_dirty": "build a local checkout that has uncommitted changes (the committed ref is built)",
    "json": "write the result (the manifest, or the plan on --dry-run) as JSON to this file",
    "verbose": "echo every command",
})
@entry
def build_ollama(c, ollama="", ollama_ref="", fork="", fork_ref="", backend="", dry_run=False, force=False,
                 allow_dirty=False, json="", verbose=False):
    """Build Ollama around the fork: patched, version-stamped, with a provenance manifest."""
    import json as jsonlib

    from ollama_turbo import build

    s = settings(c)
    if backend and backend not in config.BACKENDS:
        raise _fail(ConfigError(f"--backend {backend!r} is not one of: {', '.join(config.BACKENDS)}"))
    opts = build.Options(ollama=ollama, ollama_ref=ollama_ref, fork=fork, fork_ref=fork_ref, backend=backend,
                         dry_run=dry_run, force=force, allow_dirty=allow_dirty)
    r = build.run(s, opts)
    if r.status == "dry-run":
        print(r.plan.render())
        print("\ndry run: nothing was built or changed")
    elif r.status == "up-to-date":
        print(f"up to date: {r.plan.version} was built from the same inputs ({r.seconds:.2f} s; --force rebuilds)")
    else:
        print(f"built {r.plan.version} in {r.seconds:.1f} s: {len(r.manifest.get('files', {}))} files, "
              f"{len(r.plan.rules)} rules, {len(r.plan.patches)} patches")
        if r.plan.dropped_flags:
            print(f"WARNING: {', '.join(r.plan.dropped_flags)} dropped from Ollama's llama-server argv "
                  "(recorded in the manifest as dropped_flags)")
    if json:
        payload = r.manifest if r.status != "dry-run" else {
            "version": r.plan.version, "era": r.plan.era, "backend": r.plan.backend, "dist": str(r.dist),
            "rules": [vars(x) for x in r.plan.rules], "patches": r.plan.patches,
            "dropped_flags": r.plan.dropped_flags, "commands": r.plan.commands}
        Path(json).write_text(jsonlib.dumps({"status": r.status, "dist": str(r.dist), **payload}, indent=2) + "\n")
    print(r.dist)


@task(help={
    "url": "endpoint to check, e.g. http://127.0.0.1:11434",
    "host": "a configured host: its listen address, its deployed manifest and its service log",
    "api": "ollama (default) or llama-server (a bare llama-server)",
    "model": "model to use (default: the first one the server lists)",
    "manifest": "a build's manifest.json (or its dist directory): the version and era to expect",
    "expect_version": "the version /api/version must report",
    "cache_type": "the K/V cache type to expect, e.g. turbo4 or q8_0/turbo4 (default: turbo.kv)",
    "log": "the service log to read the cache type from",
    "baseline": "a previous smoke --json result (e.g. the f16 run) to gate against",
    "min_decode_ratio": "gate: decode tok/s at least this fraction of the baseline (default 0.9)",
    "max_ttft_ratio": "gate: time to first token at most this multiple of the baseline (default 1.1)",
    "json": "write the result as JSON to this file",
})
@entry
def smoke(c, url="", host="", api="ollama", model="", manifest="", expect_version="", cache_type="", log="",
          baseline="", min_decode_ratio=0.9, max_ttft_ratio=1.1, json=""):
    """Prove the endpoint runs the intended build with the intended cache type, and measure it."""
    import json as jsonlib

    from ollama_turbo import kvmem
    from ollama_turbo import smoke as smoke_mod
    from ollama_turbo.errors import UsageError

    s = settings(c)
    if bool(url) == bool(host):
        raise UsageError("give exactly one of --url or --host")
    if api not in ("ollama", "llama-server"):
        raise UsageError(f"--api {api!r} is not one of: ollama, llama-server")
    expect = smoke_mod.Expect(version=expect_version or None)
    type_k, type_v = kvmem.parse_pair(cache_type) if cache_type else (s.kv.type_k, s.kv.type_v)
    expect.type_k, expect.type_v = type_k, type_v
    log_reader = None
    provenance: dict = {"settings_kv": {"type_k": s.kv.type_k, "type_v": s.kv.type_v, "env": s.kv.env}}
    if host:
        from ollama_turbo import deploy

        view = deploy.host_view(s, s.host(host))
        url, log_reader = view.url, view.read_log
        m = view.current_manifest()
        provenance["host"] = host
    else:
        m = None
    if manifest:
        m = manifest_mod.load(Path(manifest))
    if m:
        expect.version = expect.version or m.get("version")
        expect.era = m.get("era")
        provenance["build"] = {k: m.get(k) for k in ("version", "era", "ollama", "fork", "backend")}
    if log:
        log_reader = Path(log).read_text
    if api == "ollama":
        r = smoke_mod.smoke_ollama(url, model=model or None, expect=expect, log=log_reader)
    else:
        r = smoke_mod.smoke_llama_server(url, expect=expect, log=log_reader)
    r.provenance.update(provenance)
    if baseline:
        smoke_mod.apply_gates(r, jsonlib.loads(Path(baseline).read_text()),
                              smoke_mod.Thresholds(float(min_decode_ratio), float(max_ttft_ratio)))
    print(r.render())
    if json:
        Path(json).write_text(jsonlib.dumps(r.to_json(), indent=2) + "\n")
    if not r.ok:
        raise Exit(f"error: smoke failed: {', '.join(r.failed)}", code=1)


@task(help={
    "url": "pre-started servers, one per cache type: f16=http://127.0.0.1:8080,turbo4=http://127.0.0.1:8081",
    "host": "a configured host: bench redeploys its KV cache type for each type",
    "api": "ollama (default) or llama-server",
    "model": "model name (Ollama API)",
    "types": "cache types or K/V pairs (default f16,q8_0,turbo4,q8_0/turbo4)",
    "depths": "context depths in tokens (default 0,2048,8192)",
    "reps": "repetitions per depth (default 3)",
    "n_predict": "tokens generated per speed run (default 32)",
    "niah_lengths": "needle-in-a-haystack lengths in tokens (default 1024,4096)",
    "niah_depths": "needle positions as fractions (default 0.1,0.5,0.9)",
    "ab_predict": "tokens generated per A/B prompt (default 128)",
    "llama_server": "start this llama-server binary here for each type (with --gguf)",
    "gguf": "the model file: for --llama-server, and for the planner's KV prediction",
    "ctx": "context size for servers bench starts (default: largest depth + 1024)",
    "log": "server logs for --url servers: TYPE=FILE,...",
    "manifest": "the build's manifest.json (or dist directory), recorded as provenance",
    "out": "output directory (default <workspace>/bench/<timestamp>)",
})
@entry
def bench(c, url="", host="", api="ollama", model="", types="f16,q8_0,turbo4,q8_0/turbo4", depths="0,2048,8192",
          reps=3, n_predict=32, niah_lengths="1024,4096", niah_depths="0.1,0.5,0.9", ab_predict=128,
          llama_server="", gguf="", ctx=0, log="", manifest="", out=""):
    """Measure each cache type: tok/s per depth, latency, KV memory, needle retrieval, A/B outputs."""
    import datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ollama_turbo import bench as bench_mod
    from ollama_turbo import bench_targets, kvmem
    from ollama_turbo import plan as plan_mod
    from ollama_turbo.errors import UsageError

    s = settings(c)
    pairs = plan_mod.parse_types(types)
    opts = bench_mod.Options(
        depths=bench_mod.parse_depths(depths), reps=int(reps), n_predict=int(n_predict), ab_predict=int(ab_predict),
        niah_lengths=plan_mod.parse_contexts(niah_lengths) if niah_lengths else [],
        niah_depths=[float(x) for x in niah_depths.split(",") if x.strip()] if niah_lengths else [])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else s.workspace / "bench" / stamp
    provenance: dict = {"model": model or gguf, "settings_kv": {"type_k": s.kv.type_k, "type_v": s.kv.type_v,
                                                                "env": s.kv.env}}
    if gguf:
        opts.geometry = kvmem.geometry_from_gguf(Path(gguf))
    if manifest:
        m = manifest_mod.load(Path(manifest))
        provenance["build"] = {k: m.get(k) for k in ("version", "era", "ollama", "fork", "backend")}
    if llama_server:
        if not gguf:
            raise UsageError("--llama-server needs --gguf MODEL")
        size = int(ctx) or max([*opts.depths, *opts.niah_lengths, 0]) + 1024
        targets = bench_targets.local_llama_server(Path(llama_server), Path(gguf), pairs, ctx=size,
                                                   logs=out_dir / "logs", extra_env=s.kv.env)
        provenance["server"] = llama_server
    elif url:
        urls = bench_targets.parse_urls(url)
        logs = {k: Path(v) for k, v in (bench_targets.parse_urls(log) if log else {}).items()}
        wanted = {bench_targets.label(k, v) for k, v in pairs}
        if types and set(urls) != wanted and types != "f16,q8_0,turbo4,q8_0/turbo4":
            raise UsageError(f"--types {types} does not match the types given in --url ({', '.join(urls)})")
        targets = bench_targets.static(urls, api, model, logs)
        provenance["url"] = url
    elif host:
        from ollama_turbo import deploy

        targets = deploy.bench_targets(s, s.host(host), pairs, model)
        provenance["host"] = host
    else:
        raise UsageError("give --url TYPE=URL,..., --host H, or --llama-server BIN --gguf MODEL")

    def progress(total: int):
        with Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False) as bar:
            task_id = bar.add_task("bench", total=total)

            def tick(what: str) -> None:
                bar.update(task_id, advance=1, description=what)

            yield tick

    report = bench_mod.run(targets, opts, out_dir, provenance, progress)
    for r in report["results"]:
        last = r["perf"][-1]
        kv = r["kv"].get("logged_mib")
        print(f"{r['label']:<14} decode {last['decode_tps']['mean']:8.1f} tok/s at depth {last['depth']:>6}, "
              f"KV {kv if kv is not None else '-'} MiB, needles {sum(g['found'] for g in r['niah'])}/{len(r['niah'])}")
    print(out_dir)


@task(help={
    "host": "a host under turbo.hosts",
    "dist": "the build to deploy (default: the newest in <workspace>/dist)",
    "dry_run": "print the plan (files to send, service config diff, commands) and change nothing",
    "specs": "Modelfile specs to create on the host after the switch (default: modelfiles/)",
    "json": "write the result as JSON to this file",
    "verbose": "echo every command",
})
@entry
def deploy(c, host, dist="", dry_run=False, specs="", json="", verbose=False):
    """Install a build as a service on a host, switch atomically, verify, roll back on failure."""
    import json as jsonlib

    from ollama_turbo import deploy as deploy_mod

    s = settings(c)
    h = s.host(host)
    d = Path(dist) if dist else deploy_mod.latest_dist(s)
    r = deploy_mod.deploy(s, h, d, dry_run=dry_run, specs_dir=Path(specs) if specs else ROOT / "modelfiles")
    if r.status == "dry-run":
        print(f"plan for {host}: {r.version} (current: {r.previous or 'none'})")
        print(f"files to send ({len(r.uploaded)}): " + (", ".join(r.uploaded) or "none"))
        print(f"already on the host: {', '.join(r.reused) or 'none'}")
        print(r.config_diff or "service config unchanged")
        for cmd in r.commands:
            print(f"  {cmd}")
        print("dry run: nothing was changed")
    else:
        print(f"deployed {r.version} to {host} in {r.seconds:.1f} s (previous: {r.previous or 'none'}); "
              f"models: {', '.join(r.models) or 'none'}; smoke ok")
    if json:
        Path(json).write_text(jsonlib.dumps(r.to_json(), indent=2) + "\n")


@task(help={"host": "a host under turbo.hosts", "to": "the release to go back to (default: the previous one)",
            "dry_run": "say which release it would switch to, and change nothing",
            "json": "write the result as JSON to this file"})
@entry
def rollback(c, host, to="", dry_run=False, json=""):
    """Switch a host back to the previous (or a given) release and restart it."""
    import json as jsonlib

    from ollama_turbo import deploy as deploy_mod

    s = settings(c)
    r = deploy_mod.rollback(s, s.host(host), to or None, dry_run=dry_run)
    if dry_run:
        print(f"would switch {host} from {r['from']} to {r['to']} and restart it; dry run: nothing was changed")
    else:
        print(f"{host} now serves {r['to']} (was {r['from']})")
    if json:
        Path(json).write_text(jsonlib.dumps(r, indent=2) + "\n")


@task(help={"host": "a host under turbo.hosts", "json": "write the status as JSON to this file"})
@entry
def status(c, host, json=""):
    """Current and previous releases, service state and KV cache type of a host."""
    import json as jsonlib

    from ollama_turbo import deploy as deploy_mod

    s = settings(c)
    st = deploy_mod.status(s, s.host(host))
    for key in ("host", "service", "state", "current", "serving", "previous", "releases", "kv_cache", "prefix"):
        value = st[key]
        print(f"{key:<10} {', '.join(value) if isinstance(value, list) else value}")
    if json:
        Path(json).write_text(jsonlib.dumps(st, indent=2) + "\n")


ns = Collection(sample, demo, settings_show, plan, modelfiles, api_check, build_ollama, smoke, bench, deploy,
                rollback, status)
ns.configure({"turbo": config.DEFAULTS})
