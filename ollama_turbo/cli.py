"""The command line: an invoke Program (``ollama-turbo``) and the Collection ``invoke`` finds in tasks.py.

Thin by rule: a task parses its flags, calls one function of the package, prints the result
and maps :class:`TurboError` to its exit code. Settings come from invoke's configuration
(``invoke.yaml`` in the project directory, ``INVOKE_TURBO_*``, ``-f FILE``), checked before
invoke reads them so a malformed file is a one-line error, not a traceback.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import os
import platform
import re
from collections.abc import Callable, Sequence
from functools import partial, wraps
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.program import Program
from invoke.tasks import Task, task

from ollama_turbo import __version__
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core import proc, settings_files
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, TurboError, UsageError

# Short flags are chosen here, by hand, and mean the same in every task (invoke's automatic
# ones gave -d three meanings and produced a broken flag for --n-predict).
SHORT_FLAGS = {"verbose": "v", "dry_run": "n"}
SOURCE_HELP = {
    "ollama": "Ollama source: a local checkout or a git URL "
              "(default: turbo.sources.ollama.url)",
    "ollama_ref": "Ollama ref (default: turbo.sources.ollama.ref)",
    "fork": "fork source: a local checkout or a git URL (default: turbo.sources.fork.url)",
    "fork_ref": "fork ref (default: turbo.sources.fork.ref)",
}
PACKAGED_SPECS = Path(__file__).resolve().parent / "examples" / "modelfiles"
PACKAGED_FLEET = Path(__file__).resolve().parent / "examples" / "fleet.yaml"


class TurboTask(Task[Any]):
    """A task whose only short flags are the ones in :data:`SHORT_FLAGS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"].append(SHORT_FLAGS[name])
        return opts


def preflight(project_dir: Path, argv: Sequence[str]) -> None:
    """Check the settings files invoke is about to read; a problem ends the run with its exit code.
    Also makes invoke's own parse errors (unknown flag or task, a missing value) usage errors of ours."""
    adopt_parse_errors(Program)
    try:
        settings_files.preflight(project_dir, argv)
    except TurboError as err:
        raise Exit(f"error: {err}", code=err.exit_code) from None


def parse_error_message(text: str) -> str:
    """invoke's parse error as ours: what was wrong, and the next step (exit 2, like every usage error)."""
    m = re.match(r"No idea what '([^']*)' is!", text)
    if m and m.group(1).startswith("-"):
        what, step = f"unknown flag {m.group(1)}", "run with --help TASK for the task's flags"
    elif m:
        what, step = f"no task or flag named {m.group(1)!r}", "run with --list for the tasks"
    elif m := re.match(r"Flag <Argument: ([\w-]+)[^>]*> needed value", text):
        flag = "--" + m.group(1).replace("_", "-")
        what, step = f"{flag} needs a value", f"give it one: {flag} VALUE (see --help TASK)"
    elif m := re.match(r"(?:invalid literal for (int)\(\)[^:]*|could not convert string to (float)): '(.*)'", text):
        kind = "a whole number" if m.group(1) else "a number"
        what, step = f"{m.group(3)!r} is not {kind}", "give the flag a number (see --help TASK for each flag)"
    elif m := re.match(r"'([^']+)' did not receive required positional arguments: (.*)", text):
        flags = ", ".join("--" + a.strip(" '").replace("_", "-") for a in m.group(2).split(","))
        what, step = f"{m.group(1)} needs {flags}", f"run with --help {m.group(1)} for what each flag takes"
    else:
        what, step = text.rstrip(".!"), "run with --help TASK for the task's flags, or --list for the tasks"
    return f"error: {what}\n  next step: {step}"


def adopt_parse_errors(cls: type[Program]) -> None:
    """Route ``cls``'s parse errors through :func:`parse_error_message`, once."""
    if getattr(cls, "_turbo_parse_errors", False):
        return
    for name in ("parse_core", "parse_tasks", "parse_cleanup"):
        original = getattr(cls, name)

        def wrapped(self: Program, *args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            try:
                return _original(self, *args, **kwargs)
            except (ParseError, ValueError) as exc:  # ValueError: a flag's int() of a word
                raise Exit(parse_error_message(str(exc)), code=2) from None

        setattr(cls, name, wraps(original)(wrapped))
    cls._turbo_parse_errors = True  # type: ignore[attr-defined]


class TurboProgram(Program):
    """``ollama-turbo``: the bundled tasks, with ``invoke.yaml`` read from the current directory."""

    def parse_collection(self) -> None:
        super().parse_collection()
        preflight(Path.cwd(), self.argv)
        self.config.set_project_location(os.getcwd())
        self.config.load_project()


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body; turn TurboError into its exit code."""

    @wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("verbose"):
            proc.set_verbose(True)
        try:
            for flag, kind in OUTPUT_FLAGS.items():  # before any work: a result that cannot be written is no result
                if isinstance(kwargs.get(flag), str) and kwargs[flag]:
                    check_output(kwargs[flag], flag, kind)
            return fn(c, *args, **kwargs)
        except TurboError as err:
            if isinstance(err, ConfigError) and not err.hint:  # every usage error says what to do next
                err.hint = "fix that setting (settings-show prints them all, with where each came from)"
            elif isinstance(err, UsageError) and not err.hint:
                err.hint = f"see --help {fn.__name__.replace('_', '-')} for what each flag takes"
            raise Exit(f"error: {err}", code=err.exit_code) from None

    return wrapper


OUTPUT_FLAGS = {"json": "file", "markdown": "file", "out": "dir", "dest": "dir"}


def check_output(value: str, flag: str, kind: str) -> None:
    """``--flag value`` names a file or folder this run can write: its folder exists (or is made) and is writable."""
    path = Path(value).expanduser()
    folder = path if kind == "dir" else path.parent
    name = "--" + flag.replace("_", "-")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{name} {value}: is a folder, not a file", hint=f"give {name} a file name")
    blocker = next((a for a in [folder, *folder.parents] if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{name} {value}: {blocker} is a file, not a folder",
                         hint=f"give {name} a path in a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{name} {value}: cannot make the folder {folder}: {exc.strerror or exc}",
                         hint=f"give {name} a path in a writable folder") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {value}: the folder {folder} is not writable",
                         hint=f"give {name} a path in a writable folder")


def turbo_task(**help: str) -> Callable[[Callable[..., Any]], TurboTask]:
    def deco(fn: Callable[..., Any]) -> TurboTask:
        made: TurboTask = task(help=help, klass=TurboTask)(entry(fn))
        return made

    return deco


def project_dir(c: Any) -> Path:
    """Where ``invoke.yaml``, ``modelfiles/`` and ``.apiignore`` are looked for."""
    configured = c.config.get("ollama_turbo", {}).get("project_dir")
    return Path(configured) if configured else Path.cwd()


def settings(c: Any) -> config.Settings:
    return settings_files.settings(c.config, project_dir(c))


def specs_dir(c: Any, given: str) -> Path:
    """``--specs``, else ``modelfiles/`` in the project, else the example specs shipped with the package."""
    if given:
        return Path(given)
    local = project_dir(c) / "modelfiles"
    return local if local.is_dir() else PACKAGED_SPECS


def block_table(c: Any, manifest: str = "", fork: str = "", fork_ref: str = "") -> Any:
    """The block formats a plan uses: a build's (``--manifest``), a fork's (``--fork``), else the built-in table."""
    from ollama_turbo.fork.cache_types import BUILTIN, BlockTable

    if manifest and fork:
        raise UsageError("give --manifest (a build's block formats) or --fork (a fork's), not both")
    if manifest:
        m = manifest_mod.load(Path(manifest))
        return BlockTable.from_manifest(m, str(manifest))
    if fork:
        from ollama_turbo.core import sources
        from ollama_turbo.fork import blocks

        s = settings(c)
        co = sources.open_configured(s, "fork", fork, fork_ref)
        return blocks.table_for_checkout(co)
    return BUILTIN


def write_json(path: str, payload: Any) -> None:
    if path:
        Path(path).write_text(jsonlib.dumps(payload, indent=2, default=str) + "\n")


def print_checklist(render: Callable[..., str], payload: Any, code: int, json: str, markdown: str) -> None:
    """A checklist's text on stdout, its JSON and Markdown where asked, and its exit code."""
    print(render(), end="")
    write_json(json, payload)
    if markdown:
        Path(markdown).write_text(render(markdown=True))
    if code:
        raise Exit(code=code)


@turbo_task(dest="empty directory to write the four repositories into",
            scenario="clean (default), fork-behind, collision, removed-function, patch-conflict",
            verbose="echo every command")
def sample(c, dest, scenario="clean", verbose=False):
    """Write the sample world (upstream, fork, Ollama era B and C) as real git repos."""
    from ollama_turbo import sample as sample_world

    world = sample_world.generate(Path(dest), sample_world.scenario(scenario))
    print(world.describe())


@turbo_task(verbose="echo every command", cache_type="KV cache type to run with (default turbo4)",
            keep_running="leave the deployed demo server running (stop it with kill $(cat <pidfile>))")
def demo(c, verbose=False, cache_type="turbo4", keep_running=False):
    """Run the whole job offline on the embedded sample world."""
    from ollama_turbo import demo as demo_mod
    from ollama_turbo.fork.cache_types import parse_pair

    parse_pair(cache_type)  # checked before step 1, not after a build
    s = settings(c)
    r = demo_mod.run(s.workspace, say=print, cache_type=cache_type, keep_running=keep_running)
    print()
    print(f"{'OK' if r.smoke_ok else 'FAILED'}: Ollama {r.version} runs the fork with a {cache_type} KV cache")
    print(f"result: {s.workspace / 'demo' / 'demo.json'}")
    print(r.dist)
    if not r.smoke_ok:
        raise Exit(code=1)


@turbo_task(key="show only this dotted key, e.g. kv.type_k")
def settings_show(c, key=""):
    """Print the validated settings (defaults merged with invoke.yaml, env and -f)."""
    import dataclasses

    value: Any = dataclasses.asdict(settings(c))
    for part in [p for p in key.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            raise ConfigError("no such setting", key=key)
        value = value[part]
    print(jsonlib.dumps(value, indent=2, default=str))


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

    p = plan_mod.plan_task(settings(c), model=model, layers=int(layers), kv_heads=int(kv_heads),
                           head_dim=int(head_dim), heads=int(heads), weights_gib=float(weights_gib), ctx=ctx,
                           types=types, host=host, reserve_gib=float(reserve_gib),
                           blocks=block_table(c, manifest, fork, fork_ref))
    print(p.render())
    if json:
        write_json(json, p.to_json())
        print(f"\nwrote {json}")


@turbo_task(host="render only for this host (default: every host)",
            out="output directory (default: <workspace>/modelfiles)",
            specs="directory of <name>.yaml specs (default: modelfiles/, else the examples shipped with "
                  "ollama-turbo)",
            reserve_gib="memory kept for OS, runtime and compute buffers (default 4)",
            manifest="render for this build (its manifest.json or dist directory): its block formats, and "
                     "whether it takes PARAMETER kv_cache_type (without: a build by this version, which does)")
def modelfiles(c, host="", out="", specs="", reserve_gib=4.0, manifest=""):
    """Render Modelfiles from modelfiles/*.yaml, num_ctx sized for each host's KV cache."""
    from ollama_turbo.kv import modelfiles as modelfile

    s = settings(c)
    directory = specs_dir(c, specs)
    if directory == PACKAGED_SPECS and not s.hosts:
        import yaml

        print(f"no hosts configured: the bundled example specs are rendered for the example fleet "
              f"({PACKAGED_FLEET}; your own hosts go under turbo.hosts in invoke.yaml)")
        fleet = yaml.safe_load(PACKAGED_FLEET.read_text(encoding="utf-8"))["turbo"]
        s = config.parse({**fleet, "workspace": str(s.workspace)})
    spec_list = modelfile.load_specs(directory)
    out_dir = Path(out) if out else s.workspace / "modelfiles"
    m = manifest_mod.load(Path(manifest)) if manifest else None
    per_model, why_not, allowed = modelfile.per_model_support(m)
    rendered = modelfile.render_all(s, spec_list, out_dir, host=host or None, reserve_gib=float(reserve_gib),
                                    blocks=block_table(c, manifest), per_model=per_model, why_not=why_not,
                                    allowed=allowed)
    if not rendered:
        print("no spec targets " + (f"host {host}" if host else "any configured host")
              + " (add host names under 'hosts:' in the specs)")
    for r in rendered:
        ctx = f"num_ctx {r.num_ctx:,}" if r.num_ctx else "num_ctx from the model"
        kv = f"KV {r.type_k}/{r.type_v}" + (" (model)" if r.per_model else " (host)")
        print(f"{r.host:<12} {r.spec.name:<24} {ctx:<22} {kv:<26} -> {r.path}")


@turbo_task(
    **SOURCE_HELP,
    upstream="upstream llama.cpp, for the tag an era C Ollama pins (default: turbo.sources.upstream.url)",
    target="layouts for this target: arm64-apple-macos (default), x86_64-linux-gnu, aarch64-linux-gnu",
    json="write the report as JSON to this file",
    markdown="write the report as Markdown to this file",
    scan_ollama="check against several Ollama refs (v0.30.0,v0.31.0 or v0.30.0..v0.32.0) and rank them",
    apiignore="accepted changes (YAML); default: .apiignore in the project",
    verbose="echo every command",
)
def api_check(c, ollama="", ollama_ref="", fork="", fork_ref="", upstream="", target="arm64-apple-macos",
              json="", markdown="", scan_ollama="", apiignore="", verbose=False):
    """Can this fork replace the llama.cpp that this Ollama pins? Exit 0 ok, 4 review, 8 incompatible."""
    from ollama_turbo.check import apicheck
    from ollama_turbo.core import sources
    from ollama_turbo.core.capi import TARGETS

    if target not in TARGETS:
        raise UsageError(f"--target {target}: not a target api-check lays out records for",
                         hint=f"one of: {', '.join(TARGETS)}")
    s = settings(c)
    supp = apicheck.load_apiignore(Path(apiignore) if apiignore else project_dir(c) / ".apiignore")
    ollama_url = ollama or s.sources.ollama.url
    fork_co = sources.open_configured(s, "fork", fork, fork_ref)
    if scan_ollama:
        rows = apicheck.scan(s, ollama_url=ollama_url, refs=scan_ollama, fork=fork_co,
                             upstream_url=upstream or None, target=target, suppressions=supp)
        print(apicheck.render_scan(rows))
        write_json(json, [vars(r) for r in rows])
        best = next((r for r in rows if r.verdict != "error"), None)
        if best is None:
            raise Exit("error: no Ollama ref could be checked", code=1)
        if best.exit_code:
            raise Exit(code=best.exit_code)
        return
    ollama_co = sources.open_configured(s, "ollama", ollama, ollama_ref)
    report = apicheck.check(s, ollama=ollama_co, fork=fork_co, upstream_url=upstream or None,
                            target=target, suppressions=supp)
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
    report = verify.verify_checkout(s, fork or s.sources.fork.url, fork_ref, dynamic=not static_only)
    print_checklist(report.render, report.to_json(), report.exit_code(), json, markdown)


@turbo_task(
    **SOURCE_HELP,
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
    verbose="echo every command",
)
def build_ollama(c, ollama="", ollama_ref="", fork="", fork_ref="", backend="", dry_run=False, force=False,
                 allow_dirty=False, json="", skip_verify=False, cuda_arch="", part="", base_from="", verbose=False):
    """Build Ollama around the fork: patched, version-stamped, with a provenance manifest."""
    from ollama_turbo.builder import build_ollama as build

    s = settings(c)
    if backend and backend not in config.BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of: {', '.join(config.BACKENDS)}")
    opts = build.Options(ollama=ollama, ollama_ref=ollama_ref, fork=fork, fork_ref=fork_ref, backend=backend,
                         dry_run=dry_run, force=force, allow_dirty=allow_dirty, skip_verify=skip_verify,
                         cuda_arch=cuda_arch, part=part, base_from=base_from)
    r = build.run(s, opts)
    print(r.render())
    write_json(json, r.to_json())
    print(r.dist)


@turbo_task(
    url="endpoint to check, e.g. http://127.0.0.1:11434",
    host="a configured host: its listen address, its deployed manifest and its service log",
    api="ollama (default) or llama-server (a bare llama-server)",
    model="model to use (default: the first one the server lists)",
    manifest="a build's manifest.json (or its dist directory): the version and era to expect",
    expect_version="the version /api/version must report",
    cache_type="the K/V cache type to expect, e.g. turbo4 or q8_0/turbo4 (default: turbo.kv)",
    log="the service log to read the cache type from",
    baseline="a previous smoke --json result (e.g. the f16 run) to gate against",
    min_decode_ratio="gate: decode tok/s at least this fraction of the baseline (default 0.9)",
    max_ttft_ratio="gate: time to first token at most this multiple of the baseline (default 1.1)",
    json="write the result as JSON to this file",
)
def smoke(c, url="", host="", api="ollama", model="", manifest="", expect_version="", cache_type="", log="",
          baseline="", min_decode_ratio=0.9, max_ttft_ratio=1.1, json=""):
    """Prove the endpoint runs the intended build with the intended cache type, and measure it."""
    from ollama_turbo.fork import cache_types
    from ollama_turbo.fork.behaviour import ForkBehaviour
    from ollama_turbo.prove import smoke as smoke_mod
    from ollama_turbo.prove.server_log import file_reader

    s = settings(c)
    if bool(url) == bool(host):
        raise UsageError("give exactly one of --url or --host")
    if api not in ("ollama", "llama-server"):
        raise UsageError(f"--api {api!r} is not one of: ollama, llama-server")
    type_k, type_v = cache_types.parse_pair(cache_type) if cache_type else (s.kv.type_k, s.kv.type_v)
    expect = smoke_mod.Expect(version=expect_version or None, type_k=type_k, type_v=type_v,
                              fork=ForkBehaviour.from_env(s.kv.env))
    provenance: dict[str, Any] = {"settings_kv": s.kv_summary()}
    with contextlib.ExitStack() as stack:
        log_reader = None
        m = None
        if host:
            from ollama_turbo.deploy.hostview import host_view

            view = stack.enter_context(host_view(s.host(host)))  # the tunnel closes when the smoke is done
            url, log_reader = view.url, view.read_log
            m = view.current_manifest()
            provenance["host"] = host
        if manifest:
            m = manifest_mod.load(Path(manifest))
        if m:
            expect.version = expect.version or m.get("version")
            expect.era = m.get("era")
            provenance["build"] = manifest_mod.summary(m)
        if log:
            log_reader = file_reader(Path(log))
        if api == "ollama":
            r = smoke_mod.smoke_ollama(url, model=model or None, expect=expect, log=log_reader)
        else:
            r = smoke_mod.smoke_llama_server(url, expect=expect, log=log_reader)
    r.provenance.update(provenance)
    if baseline:
        smoke_mod.apply_gates(r, smoke_mod.load_baseline(Path(baseline)),
                              smoke_mod.Thresholds(float(min_decode_ratio), float(max_ttft_ratio)))
    print(r.render())
    write_json(json, r.to_json())
    if not r.ok:
        raise Exit(f"error: smoke failed: {', '.join(r.failed)}", code=1)


@turbo_task(
    url="pre-started servers, one per cache type: f16=http://127.0.0.1:8080,turbo4=http://127.0.0.1:8081",
    host="a configured host: bench redeploys its KV cache type for each type",
    api="ollama (default) or llama-server",
    model="model name (Ollama API)",
    types="cache types or K/V pairs (default f16,q8_0,turbo4,q8_0/turbo4; with --url: the types given there)",
    depths="context depths in tokens (default 0,2048,8192)",
    reps="repetitions per depth (default 3)",
    n_predict="tokens generated per speed run (default 32)",
    niah_lengths="needle-in-a-haystack lengths in tokens (default 1024,4096)",
    niah_depths="needle positions as fractions (default 0.1,0.5,0.9)",
    ab_predict="tokens generated per A/B prompt (default 128; 0: no A/B set)",
    llama_server="start this llama-server binary here for each type (with --gguf)",
    gguf="the model file: for --llama-server, and for the planner's KV prediction",
    ctx="context size for servers bench starts (default: largest depth + 1024)",
    log="server logs for --url servers: TYPE=FILE,...",
    manifest="the build's manifest.json (or dist directory), recorded as provenance (and its GPU backend for "
             "--llama-server and --llama-bench)",
    out="output directory (default <workspace>/bench/<timestamp>)",
    llama_bench="also run llama-bench here on --gguf at the same depths: 'auto' (the --manifest build's) or a "
                "binary; the report sets the two side by side",
    measure_fallback="measure a config whose attention falls back to the CPU at every depth (default: the first "
                     "depth only; deeper prompts would time the CPU)",
)
def bench(c, url="", host="", api="ollama", model="", types="", depths="0,2048,8192",
          reps=3, n_predict=32, niah_lengths="1024,4096", niah_depths="0.1,0.5,0.9", ab_predict=128,
          llama_server="", gguf="", ctx=0, log="", manifest="", out="", llama_bench="", measure_fallback=False):
    """Measure each cache type: tok/s per depth, latency, KV memory, needle retrieval, A/B outputs."""
    from ollama_turbo.prove import bench as bench_mod
    from ollama_turbo.prove import reports
    from ollama_turbo.prove import targets as targets_mod

    s = settings(c)
    opts = bench_mod.Options.parse(depths=depths, reps=int(reps), n_predict=int(n_predict),
                                   ab_predict=int(ab_predict), niah_lengths=niah_lengths, niah_depths=niah_depths,
                                   gguf=gguf)
    opts.measure_fallback = measure_fallback
    out_dir = Path(out) if out else bench_mod.default_out(s.workspace)
    provenance: dict[str, Any] = {"model": model or gguf, "settings_kv": s.kv_summary()}
    tools = reports.Tools.of(manifest)
    if manifest:
        provenance["build"] = tools.provenance
        opts.blocks = block_table(c, manifest)
    if llama_bench and not gguf:
        raise UsageError("--llama-bench needs --gguf MODEL (the file the server serves)")
    side_by_side = (tools.tool("llama-bench", "" if llama_bench == "auto" else llama_bench), Path(gguf),
                    targets_mod.pairs_for(types)) if llama_bench else None
    if host:
        from ollama_turbo.deploy import bench_host, hostview

        targets = bench_host.bench_targets(s, s.host(host), targets_mod.pairs_for(types), model)
        deployed = hostview.deployed_manifest(s.host(host))
        if deployed and "build" not in provenance:
            provenance["build"] = manifest_mod.summary(deployed)
        provenance.update(host=host, parallel=targets_mod.parallel_from(s.kv.env))
    else:
        targets = targets_mod.choose(url=url, log=log, api=api, model=model, types=types,
                                     llama_server=llama_server, gguf=gguf, ctx=int(ctx), opts=opts,
                                     logs_dir=out_dir / "logs", extra_env={**s.kv.env, **tools.env})
        if llama_server:
            provenance.update(server=llama_server, host=f"{platform.node()} (here)",
                              parallel=targets_mod.parallel_from(s.kv.env))
            provenance.setdefault("build", {"version": targets_mod.server_version(Path(llama_server), tools.env)})
        else:
            provenance["url"] = url
    if url and api == "ollama" and not model:
        raise UsageError("--url with the Ollama API needs --model (the model to measure)",
                         hint="name one the server has (ollama list), e.g. --model smollm2")
    report = reports.run_bench(targets, opts, out_dir, provenance, side_by_side=side_by_side, tools=tools)
    print(bench_mod.summary(report))
    print(out_dir)
    if not bench_mod.measured_anything(report):
        raise TurboError(f"bench measured nothing: every cache type failed (see {out_dir / 'bench.json'})",
                         hint="check the server, host or --llama-server named in the errors above")


@turbo_task(
    model="the model's GGUF file",
    manifest="a build's manifest.json or dist directory: use its tools/llama-perplexity (built from the same fork)",
    llama_perplexity="the llama-perplexity binary (instead of --manifest)",
    types="K/V configs to measure against the f16 cache (default q8_0,turbo4,turbo3,q8_0/turbo4)",
    ctx="contexts, comma-separated (default 512,4096)",
    corpus="text file to evaluate (default: ollama-turbo's own README)",
    chunks="at most this many chunks per context (default: all)",
    max_kld="quality gate: mean KL divergence at most (default 0.02; up to twice is BORDERLINE)",
    max_dppl="quality gate: perplexity increase at most (default 0.5)",
    baseline="reuse the f16 baseline of an earlier quality run (its output directory)",
    bench="a bench output directory (or bench.json): adds speed, memory and OOM rows to the verdict table",
    out="output directory (default <workspace>/quality/<model>-<timestamp>)",
    json="also write the report as JSON to this file",
    threads="llama-perplexity's CPU threads (default: every core here; the KL divergence runs on the CPU)",
    gpu_layers="layers on the GPU (default: all where the build has a GPU backend, else 0)",
)
def quality(c, model, manifest="", llama_perplexity="", types="q8_0,turbo4,turbo3,q8_0/turbo4", ctx="512,4096",
            corpus="", chunks=0, max_kld="", max_dppl="", baseline="", bench="", out="", json="", threads=0,
            gpu_layers=-1):
    """What the compressed cache does to the model: KLD, top-1, ΔPPL vs f16; the pass-criteria verdicts."""

    from ollama_turbo.core.sizes import parse_sizes
    from ollama_turbo.fork.cache_types import parse_pairs
    from ollama_turbo.prove import criteria, reports
    from ollama_turbo.prove import quality as quality_mod

    s = settings(c)
    if bool(manifest) == bool(llama_perplexity):
        raise UsageError("give --manifest DIST (a build with tools/llama-perplexity) or --llama-perplexity BIN")
    if int(threads) < 0 or int(gpu_layers) < -1:
        raise UsageError("--threads and --gpu-layers take 0 or more", hint="e.g. --threads 16 --gpu-layers 99")
    tools = reports.Tools.of(manifest)
    binary = tools.tool("llama-perplexity", llama_perplexity)
    opts = quality_mod.Options(pairs=parse_pairs(types), contexts=parse_sizes(ctx, option="--ctx"), chunks=int(chunks),
                               thresholds=quality_mod.Thresholds.parse(max_kld, max_dppl), threads=int(threads),
                               gpu_layers=None if int(gpu_layers) == -1 else int(gpu_layers))
    if manifest:
        opts.blocks = block_table(c, manifest)
    out_dir = Path(out) if out else reports.quality_out(s.workspace, Path(model))
    report, rows = reports.run_quality(s.workspace, Path(model), binary, tools, opts, out_dir,
                                       corpus=Path(corpus) if corpus else None,
                                       baseline=Path(baseline) if baseline else None,
                                       bench=_load_bench(bench) if bench else None,
                                       say=lambda line: print(line, flush=True))
    print(quality_mod.markdown(report))
    print("Pass criteria:\n" + criteria.render(rows))
    write_json(json, report)
    print(out_dir)


def _load_bench(path: str) -> dict[str, Any]:
    p = Path(path)
    p = p / "bench.json" if p.is_dir() else p
    try:
        data: dict[str, Any] = jsonlib.loads(p.read_text())
        return data
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the bench report {p}: {exc}", hint="pass a bench output directory") from None


@turbo_task(
    model="the model's GGUF file",
    host="a host under turbo.hosts (its memory_gib)",
    ctx="the target context in tokens (e.g. 32k)",
    bench="a bench output directory (or bench.json) measured on this model: picks the fastest at that depth",
    manifest="the build's manifest.json or dist directory: its block formats",
    reserve_gib="memory kept for OS, runtime and compute buffers (default 4)",
    json="also write the recommendation as JSON to this file",
)
def recommend(c, model, host, ctx="32k", bench="", manifest="", reserve_gib=4.0, json=""):
    """The K/V config that fits the host at the context, passes the quality gates and decodes fastest."""
    from ollama_turbo.core.sizes import parse_sizes
    from ollama_turbo.prove import recommend as recommend_mod

    sizes = parse_sizes(ctx, option="--ctx")
    if len(sizes) != 1:
        raise UsageError("--ctx takes one context")
    r = recommend_mod.recommend(settings(c), Path(model), host, sizes[0], bench=_load_bench(bench) if bench else None,
                                reserve_gib=float(reserve_gib), blocks=block_table(c, manifest))
    print(r.render())
    write_json(json, r.to_json())
    if r.choice is None:
        raise Exit(code=1)


@turbo_task(
    host="a host under turbo.hosts",
    hosts="a rolling deploy to these hosts, comma-separated: the first is the canary",
    group="a rolling deploy to the hosts of this group (turbo.groups)",
    batch="rolling deploy: hosts per wave after the canary (default 2)",
    dist="the build to deploy (default: the newest in <workspace>/dist)",
    dry_run="print the plan (files to send, service config diff, commands) and change nothing",
    specs="Modelfile specs to create on the host after the switch (default: modelfiles/, else the examples "
          "shipped with ollama-turbo)",
    accept_unmeasured="deploy a K/V config that invoke quality has not measured for the host's models",
    json="write the result as JSON to this file",
    verbose="echo every command",
)
def deploy(c, host="", hosts="", group="", batch=2, dist="", dry_run=False, specs="", accept_unmeasured=False,
           json="", verbose=False):
    """Install a build as a service on a host (or a fleet, canary first), switch atomically, verify, roll back."""
    from ollama_turbo.deploy import dists, releases, rolling

    s = settings(c)
    if hosts or group:
        if host:
            raise UsageError("give --host, or --hosts / --group for a rolling deploy, not both")
        names = rolling.hosts_for(s, hosts, group)
        d = Path(dist) if dist else dists.latest_dist(s)
        out = rolling.rollout(s, names, d, batch=int(batch), dry_run=dry_run, specs_dir=specs_dir(c, specs),
                              accept_unmeasured=accept_unmeasured)
        print(out.render())
        write_json(json, out.to_json())
        if not out.ok:
            raise Exit(f"error: rolling deploy stopped at {out.stopped_at}: "
                       + next(o.error for o in out.outcomes if o.host == out.stopped_at), code=1)
        return
    if not host:
        raise UsageError("give --host H (or --hosts / --group for a rolling deploy)")
    target = s.host(host)  # an unknown host is named before anything else is looked at
    d = Path(dist) if dist else dists.latest_dist(s)
    r = releases.deploy(s, target, d, dry_run=dry_run, specs_dir=specs_dir(c, specs),
                        accept_unmeasured=accept_unmeasured)
    print(r.render(host))
    write_json(json, r.to_json())


@turbo_task(host="a host under turbo.hosts", to="the release to go back to (default: the previous one)",
            dry_run="say which release it would switch to, and change nothing",
            json="write the result as JSON to this file")
def rollback(c, host, to="", dry_run=False, json=""):
    """Switch a host back to the previous (or a given) release and restart it."""
    from ollama_turbo.deploy.rollback import rollback as roll_back

    s = settings(c)
    r = roll_back(s, s.host(host), to or None, dry_run=dry_run)
    if dry_run:
        print(f"would switch {host} from {r['from']} to {r['to']} and restart it; dry run: nothing was changed")
    else:
        print(f"{host} now serves {r['to']} (was {r['from']}); downtime {r['downtime_s']:.2f} s")
    write_json(json, r)


@turbo_task(host="a host under turbo.hosts", json="write the status as JSON to this file")
def status(c, host, json=""):
    """Current and previous releases, service state and KV cache type of a host."""
    from ollama_turbo.deploy import hostview

    st = hostview.status(settings(c), settings(c).host(host))
    for key in ("host", "service", "state", "current", "serving", "previous", "releases", "kv_cache", "kv_running",
                "prefix"):
        value = st[key]
        print(f"{key:<10} {', '.join(value) if isinstance(value, list) else value}")
    for i, m in enumerate(st.get("loaded") or []):
        print(f"{'loaded' if i == 0 else '':<10} {m['name']}: ctx {m['context_length']:,}, K/V {m['configured']} "
              f"({'its own kv_cache_type' if m['source'] == 'model' else 'host default'}); running {m['running']}")
    write_json(json, st)


@turbo_task(record="the record's JSON (default: docs/compatibility.json in the project); the Markdown is "
                   "written beside it",
            add="a JSON file of facts from a field run (an object, or a list of them) to merge in first")
def compat_record(c, record="", add=""):
    """Write docs/compatibility.md from the field record (Ollama ref x fork commit x backend)."""
    from ollama_turbo.prove import compat

    path = Path(record) if record else project_dir(c) / "docs" / "compatibility.json"
    rows = compat.load(path)
    if add:
        try:
            facts = jsonlib.loads(Path(add).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read facts from {add}: {exc}", hint="pass a JSON file of field facts") from None
        for f in facts if isinstance(facts, list) else [facts]:
            if not isinstance(f, dict):
                raise UsageError(f"{add}: each fact must be a JSON object")
            rows = compat.merge(rows, f)
    if not rows:
        raise UsageError(f"{path} has no rows", hint="run the field tier (tests/field) to record some")
    print(f"{len(rows)} rows -> {compat.write(path, rows)}")


def namespace(project: Path | None = None) -> Collection:
    """The task collection; ``project`` is where settings and specs are read (default: the current directory)."""
    ns = Collection(sample, demo, settings_show, plan, modelfiles, api_check, verify_fork, build_ollama, smoke, bench,
                    quality, recommend, deploy, rollback, status, compat_record)
    ns.configure({"turbo": config.DEFAULTS, "ollama_turbo": {"project_dir": str(project) if project else ""}})
    return ns


program = TurboProgram(namespace=namespace(), name="ollama-turbo", binary="ollama-turbo",
                       binary_names=["ollama-turbo"], version=__version__)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        raise SystemExit(1) from None
