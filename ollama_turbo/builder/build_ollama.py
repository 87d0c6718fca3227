"""``invoke build-ollama``: a runnable, versioned, provenance-stamped Ollama around the fork.

plan (plan.py) -> (dry run stops here) -> no-op when the inputs are unchanged -> integrate in scratch
copies (never the user's checkouts) -> build -> stage -> manifest -> dist/<version>/ (or a CUDA build's base
part, parts/<version>/).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo import __version__
from ollama_turbo.builder import cpu_exclude, go_modules, gpu_part, machine
from ollama_turbo.builder import era_c as build_era_c
from ollama_turbo.builder.llama_server import TOOLS, TOOLS_KEY, build_tools
from ollama_turbo.builder.llama_server import publish as llama_publish
from ollama_turbo.builder.options import BuildError, Options
from ollama_turbo.builder.plan import Plan, build_platform, make_plan
from ollama_turbo.check.carry import APPLIED, CARRIED, LEFT_OUT, NOT_NEEDED, Carried
from ollama_turbo.core import build_record, manifest, proc, redact, rules, toolchain
from ollama_turbo.core.errors import CommandError
from ollama_turbo.core.settings import Settings

__all__ = ["BuildError", "Options", "Plan", "Result", "make_plan", "run"]  # the plan's names come from plan.py

Say = Callable[[str], None]
BASE_RAN = "the Go binary, llama-server and its tools (Ollama's CPU preset)"


@dataclass
class Result:
    status: str  # built | up-to-date | dry-run | base-part
    plan: Plan
    dist: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    log: Path | None = None

    def render(self) -> str:
        if self.status == "dry-run":
            return self.plan.render() + "\n\ndry run: nothing was built or changed"
        if self.status == "base-part":
            return (f"built the base part of {self.plan.version} in {self.seconds:.1f} s (all but the GPU backend): "
                    f"{self.dist}\ncopy it to the GPU box and run there: invoke build-ollama --backend cuda "
                    f"--cuda-arch {self.plan.cuda_arch} --base-from <copy> (same sources and settings)")
        if self.status == "up-to-date":
            return (f"up to date: {self.plan.version} was built from the same inputs ({self.seconds:.2f} s; "
                    "--force rebuilds)")
        lines = [f"built {self.plan.version} in {self.seconds:.1f} s: {len(self.manifest.get('files', {}))} files, "
                 f"{len(self.plan.rules)} rules, {len(self.plan.patches)} patches"
                 + (f", CUDA backend for sm_{self.plan.cuda_arch}" if self.plan.cuda_arch else "")]
        if self.plan.dropped_flags:
            lines.append(f"WARNING: {', '.join(self.plan.dropped_flags)} dropped from Ollama's llama-server argv "
                         "(recorded in the manifest as dropped_flags)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The manifest, or the plan on a dry run."""
        p = self.plan
        payload = self.manifest if self.status != "dry-run" else {
            "version": p.version, "era": p.era, "flavor": "stock" if p.stock else "custom", "backend": p.backend,
            "dist": str(self.dist),
            "rules": [o.to_json() for o in p.outcomes], "per_model_kv": p.per_model_kv,
            "patches": p.contract.patch_records() if p.contract and p.era.rules.carries_patches else p.patches,
            "merge_base": p.contract.upstream if p.contract else "",
            "carry_seconds": p.contract.carry_seconds if p.contract else 0.0,
            "dropped_flags": p.dropped_flags, "adaptations": p.adaptations, "commands": p.commands,
            "cpu_exclude": list(p.cpu_exclude),
            "notes": p.notes}
        return {"status": self.status, "dist": str(self.dist), **payload}


def run(settings: Settings, opts: Options, say: Say = print) -> Result:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="turbo-plan-") as probe:
        plan = make_plan(settings, opts, Path(probe))
    if opts.part:
        plan.dist = settings.workspace / "parts" / plan.version
    base: tuple[Path, dict[str, Any]] | None = None
    if opts.base_from:
        base = gpu_part.load_part(Path(opts.base_from).expanduser(), identity=plan.identity, version=plan.version,
                                  platform=build_platform())
    if opts.dry_run:
        return Result("dry-run", plan, plan.dist, seconds=time.perf_counter() - t0)
    existing = manifest.read(plan.dist) if not opts.part else None
    if existing and not opts.force and existing.inputs_key == plan.key and not existing.verify():
        return Result("up-to-date", plan, plan.dist, existing.data, time.perf_counter() - t0)
    tools = _toolchain(plan, go=base is None, cuda=plan.backend == "cuda" and not opts.part)
    ws = settings.workspace
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = ws / "logs" / f"build-{plan.version.replace('+', '_')}-{stamp}.log"
    work = ws / "build" / plan.version.replace("+", "_")
    if work.exists():
        shutil.rmtree(work)
    stage = plan.dist.parent / f".{plan.dist.name}.staging"
    if stage.exists():
        shutil.rmtree(stage)
    for line in [*plan.picked, *(f"NOTE: {n}" for n in plan.notes)]:
        say(line)
    say(f"building Ollama {plan.version} (era {plan.era}, {plan.backend}); log: {log}")
    if plan.dropped_flags:
        say(f"WARNING: dropping {', '.join(plan.dropped_flags)} from Ollama's llama-server argv: "
            "the fork does not define them")
    step = _Steps(say)
    here = machine.describe()  # recorded with each part it builds: two machines may share a hostname
    ollama_dir = step("export Ollama sources (scratch copy)", lambda: plan.ollama.export(work / "ollama"))
    patch_results: list[dict[str, str]] = []
    parts: dict[str, Any] = {}
    if base is not None:
        root, part = base
        step(f"take the base part built on {part.get('built_on', '?')} ({root})",
             lambda: shutil.copytree(root, stage, ignore=shutil.ignore_patterns(gpu_part.PART)))
        extra = dict(part.get("build_flags") or {})
        extra.pop("ldflags", None)
        patch_results.extend(part.get("patches") or [])
        tools.update({k: v for k, v in (part.get("toolchain") or {}).items() if k not in tools})
        # the dist's toolchain is this machine's (it built the GPU backend); the base's binaries were made
        # with the base part's, kept beside it
        parts["base"] = {"built_on": part.get("built_on"), "machine": part.get("machine") or {},
                         "built_at": part.get("built_at"), "from": str(root), "ran": BASE_RAN,
                         "toolchain": part.get("toolchain") or {}}
    else:
        n_mods = len(go_modules.required((ollama_dir / "go.mod").read_text()))
        step(f"download the {n_mods} Go modules Ollama requires (GOPROXY, vendor/ or the module cache)",
             lambda: go_modules.download(ollama_dir, extra_env=opts.go_env, log=log))
        if plan.era.rules.cmake_presets:  # llama.cpp built by Ollama's CMake, beside the Go binary
            extra = _build_c(plan, settings, work, ollama_dir, stage, log, step, patch_results, opts.go_env)
        else:
            extra = _build_b(plan, work, ollama_dir, stage, log, step, patch_results, opts.go_env)
        parts["base"] = {"built_on": platform.node(), "machine": here, "built_at": _now(), "ran": BASE_RAN}
    gpu: dict[str, Any] | None = None
    if plan.backend == "cuda" and not opts.part:
        if base is not None:  # this half configures Ollama's CMake too: it applies the patches as carried
            _give_cmake_carried(plan, ollama_dir, step)
        gpu = _build_gpu(plan, settings, work, ollama_dir, stage, log, step)
        parts["gpu"] = {"built_on": platform.node(), "machine": here, "built_at": _now(),
                        "ran": f"the CUDA backend (cmake preset {plan.preset}, sm_{plan.cuda_arch})"}
        if base is not None and machine.same(here, parts["base"]["machine"]):
            parts["gpu"]["same_machine_as_base"] = True
    cpu = cpu_exclude.leave_out(stage, plan.cpu_exclude)
    if cpu and cpu.get("excluded"):
        say(f"left out CPU variants {', '.join(cpu['excluded'])}; shipped: {', '.join(cpu['shipped'])}")
    record = build_record.BuildRecord(
        version=plan.version, era=plan.era, flavor="stock" if plan.stock else "custom",
        ollama=build_record.SourceRef(plan.ollama.url, plan.ollama.ref, plan.ollama.sha, plan.info.version),
        fork=build_record.SourceRef(plan.fork.url, plan.fork.ref, plan.fork.sha),
        pinned=plan.era.pin_record(plan.info.pin, plan.contract.upstream if plan.contract else ""),
        backend=plan.backend, preset=plan.preset if plan.era.rules.cmake_presets else None,
        platform=build_platform(), identity=plan.identity,
        planned_kv=build_record.PlannedKV(settings.kv.type_k, settings.kv.type_v, settings.kv.flash_attention,
                                          redact.env(settings.kv.env)),
        cache_types={b.name: build_record.CacheType(b.block, b.size, b.ggml_type) for b in plan.all_blocks},
        rules=[o.to_json() for o in plan.outcomes], per_model_kv=_per_model(plan.per_model_kv),
        patches=patch_results, dropped_flags=plan.dropped_flags, adaptations=plan.adaptations,
        verify_fork=plan.verify, toolchain=tools,
        build_flags={"ldflags": build_era_c.ldflags(plan.version), **extra},
        inputs_key=plan.key, ollama_turbo=__version__, built_at=_now(), cpu_variants=cpu or {})
    if plan.backend == "cuda":
        record = dataclasses.replace(record, cuda_arch=plan.cuda_arch, parts=parts, gpu=_gpu(gpu))
    if opts.part:  # a base part: recorded beside its files, completed into a dist by --base-from
        data = redact.tree({**record.to_json(), "part": "base", "built_on": platform.node(), "machine": here,
                            "files": manifest.file_sums(stage)})
        gpu_part.write_part(stage, data)
        _publish(stage, plan.dist, work)
        return Result("base-part", plan, plan.dist, data, time.perf_counter() - t0, log)
    manifest.write(stage, record)  # the manifest travels to every host: no credentials in it
    _publish(stage, plan.dist, work)
    return Result("built", plan, plan.dist, manifest.load(plan.dist).data, time.perf_counter() - t0, log)


def _per_model(pm: dict[str, Any]) -> build_record.PerModelKV:
    allowed = pm.get("allowed")
    return build_record.PerModelKV(bool(pm.get("supported")), tuple(allowed) if allowed is not None else None,
                                   str(pm.get("why_not") or ""), str(pm.get("param") or ""))


def _gpu(g: dict[str, Any] | None) -> build_record.GPU | None:
    return build_record.GPU(**{k: str(v) for k, v in g.items()}) if g else None


def _publish(stage: Path, dest: Path, work: Path) -> None:
    """The finished stage becomes ``dest`` (a dist or a base part) in one rename; the scratch copies go."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage.rename(dest)
    shutil.rmtree(work, ignore_errors=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build_gpu(plan: Plan, settings: Settings, work: Path, ollama_dir: Path, stage: Path, log: Path,
               step: _Steps) -> dict[str, Any]:
    """The CUDA backend (Ollama's CUDA preset, one architecture) into the stage's lib/ollama/cuda_vNN/."""
    fork_dir = work / "fork"
    if not fork_dir.is_dir():
        step(f"copy {_llama_source(plan)} to a scratch source tree", lambda: _clone_fork(plan, fork_dir, log))
    cache = settings.workspace / "cache" / "ggml-cuda"
    out, key = step(f"build the CUDA backend (cmake preset {plan.preset}, sm_{plan.cuda_arch}; cached by source "
                    "hash)",
                    lambda: gpu_part.build_backend(ollama_dir, fork_dir, work, cache, preset=plan.preset,
                                                   arch=plan.cuda_arch, toolkit=plan.cuda_toolkit,
                                                   fork_sha=plan.fork.sha,
                                                   defines=tuple(a["define"] for a in plan.adaptations), log=log))
    shutil.copytree(out / "lib", stage / "lib", dirs_exist_ok=True)
    return gpu_part.record(plan.preset, plan.cuda_arch, plan.cuda_toolkit, key)


def _llama_source(plan: Plan) -> str:
    """What a build compiles as llama.cpp, in its step lines: the fork, or for a stock build upstream at the pin."""
    return f"upstream llama.cpp {plan.info.pin}" if plan.stock else "the fork"


def _clone_fork(plan: Plan, fork_dir: Path, log: Path) -> None:
    proc.run(["git", "clone", "--quiet", "--no-checkout", str(plan.fork.git_dir), str(fork_dir)], log=log)
    proc.run(["git", "-C", str(fork_dir), "checkout", "--quiet", "--detach", plan.fork.sha], log=log)


class _Steps:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.n = 0

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        self.n += 1
        t0 = time.perf_counter()
        self.say(f"  [{self.n}] {what} ...")
        out = fn()
        self.say(f"      done in {time.perf_counter() - t0:.1f} s")
        return out


def _toolchain(plan: Plan, *, go: bool = True, cuda: bool = False) -> dict[str, str]:
    """The tools this build needs here, checked before any work (a base part from elsewhere: no Go;
    a GPU backend: nvcc)."""
    tools = {"git": proc.run(["git", "--version"]).stdout.strip()}
    if go:
        go_mod = plan.ollama.read("go.mod")
        tools["go"] = str(toolchain.require_go(toolchain.go_mod_version(go_mod)))
    if cuda:  # the plan read it (and refused a build without nvcc)
        tools["nvcc"] = plan.cuda_toolkit
    if plan.era.rules.cmake_presets:
        tools["cmake"] = str(toolchain.require_cmake("3.24"))
    else:
        toolchain.require("make")
        toolchain.require("rsync")
    cc = toolchain.require("cc")
    tools["cc"] = proc.run([cc, "--version"]).stdout.splitlines()[0]
    return tools


def _build_c(plan: Plan, settings: Settings, work: Path, ollama_dir: Path, stage: Path, log: Path,
             step: _Steps, patch_results: list[dict[str, str]], go_env: dict[str, str]) -> dict[str, Any]:
    fork_dir = work / "fork"
    step(f"copy {_llama_source(plan)} to a scratch source tree", lambda: _clone_fork(plan, fork_dir, log))
    preset = gpu_part.BASE_PRESET if plan.backend == "cuda" else plan.preset  # a GPU build's base: Ollama's CPU
    step(f"apply {len(plan.rules)} Go rules", lambda: rules.apply_rules(ollama_dir, plan.rules))

    _give_cmake_carried(plan, ollama_dir, step)
    if plan.contract is not None:
        patch_results.extend(plan.contract.patch_records())
    cache_key = hashlib.sha256("\0".join([
        plan.fork.sha, manifest.tree_hash(ollama_dir, ["llama/server", "llama/compat"]), preset,
        str(toolchain.cmake_version()), TOOLS_KEY, *[a["define"] for a in plan.adaptations],
        *plan.targets]).encode()).hexdigest()[:16]
    cached = settings.workspace / "cache" / "llama-server" / cache_key
    tools: dict[str, str] = {}  # llama-perplexity: built from the same fork and flags, for invoke quality
    tool_paths: dict[str, str] = {}  # where each tool is in the dist (recorded: invoke quality reads it)
    if not (cached / "lib").is_dir():
        def cmake() -> None:
            tmp = cached.parent / f".{cache_key}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build_era_c.build_llama_server(ollama_dir, work / "cmake-build", tmp, preset=preset,
                                               defines=tuple(a["define"] for a in plan.adaptations),
                                               targets=plan.targets, source_dir=fork_dir, log=log)
                tools.update(build_tools(work / "cmake-build", tmp / "tools", log=log))
                (tmp / "tools.json").write_text(json.dumps(tools))
            except CommandError as exc:
                if "does not apply" in exc.stderr_tail:
                    raise BuildError(f"a compat patch failed at configure time:\n{exc.stderr_tail}",
                                     hint=f"full log: {log}") from None
                raise
            llama_publish(tmp, cached, done=cached / "lib")

        step(f"build llama-server (cmake preset {preset}; cached by source hash)", cmake)
    else:
        step(f"llama-server unchanged: reuse {cached}", lambda: None)
    shutil.copytree(cached / "lib", stage / "lib")
    # the tools sit beside llama-server: they link the same shared libraries, found through $ORIGIN
    for tool in (cached / "tools").glob("*") if (cached / "tools").is_dir() else []:
        shutil.copy2(tool, stage / "lib" / "ollama" / tool.name)  # a tool, or a library of its own
        if tool.name in TOOLS:
            tool_paths[tool.name] = f"lib/ollama/{tool.name}"
    if (cached / "tools.json").is_file():
        tools.update(json.loads((cached / "tools.json").read_text()))
    step(f"go build ollama {plan.version}",
         lambda: build_era_c.go_build(ollama_dir, stage / "bin" / "ollama", version=plan.version, log=log,
                                      extra_env=go_env))
    return {"cmake_preset": preset, "fetchcontent_source_dir": "scratch copy of the fork",
            "llama_server_cache_key": cache_key, "tools": tools, "tool_paths": tool_paths}


def _give_cmake_carried(plan: Plan, ollama_dir: Path, step: _Steps) -> None:
    """Ollama's compat folder as the fork needs it, before any of Ollama's CMake runs (each half of a two-part
    build configures it): the patches as the plan carried them onto the fork."""
    if plan.contract is None:
        return
    carried = plan.contract.carried
    as_is = all(c.status == APPLIED for c in carried)
    step(f"Ollama's {len(carried)} compat patches apply as they are (its own CMake applies them)" if as_is else
         f"give Ollama's CMake the {len(carried)} compat patches as carried onto the fork",
         lambda: carry_into(ollama_dir, carried))


def carry_into(ollama_dir: Path, carried: list[Carried]) -> None:
    """Ollama's compat folder as the fork needs it: a patch carried hunk by hunk is replaced by the carried one
    (which applies to the fork as it is), a patch left out or not needed is removed with the compat sources of a
    left-out feature; Ollama's own apply-patch.cmake then applies what is there, in its order."""
    for c in carried:
        path = ollama_dir / c.patch
        if c.status in (LEFT_OUT, NOT_NEEDED):
            path.unlink()
            for src in c.sources_left_out:
                (ollama_dir / src).unlink(missing_ok=True)
        elif c.status == CARRIED:
            path.write_text(c.text, errors="surrogateescape")


def _build_b(plan: Plan, work: Path, ollama_dir: Path, stage: Path, log: Path, step: _Steps,
             patch_results: list[dict[str, str]], go_env: dict[str, str]) -> dict[str, Any]:
    make = ["make", "-f", "Makefile.sync", f"UPSTREAM={plan.fork.git_dir}", f"FETCH_HEAD={plan.fork.sha}"]

    def sync() -> None:
        try:
            proc.run([*make, "clean", "apply-patches", "sync"], cwd=ollama_dir, extra_env=toolchain.go_env(go_env),
                     log=log)
        except CommandError as exc:
            vendor = ollama_dir / "llama" / "vendor"
            if not proc.run(["git", "-C", str(vendor), "rev-parse", "--verify", "-q", "HEAD"], check=False).ok or \
                    "unable to checkout" in exc.stderr_tail:
                raise BuildError(f"Makefile.sync could not check out the fork {plan.fork.short} into llama/vendor, "
                                 f"before any of Ollama's patches was tried:\n{exc.stderr_tail.strip()[-1200:]}",
                                 hint=f"is {plan.fork.url} a complete clone (git fsck; a snapshot without large "
                                      f"files cannot be checked out)? full log: {log}") from None
            done = {p.name[1:-2] for p in (ollama_dir / "llama/patches").glob(".*.patched")}
            failing = next((p for p in plan.patches if Path(p).name not in done), "a patch")
            files = proc.run(["git", "-C", str(vendor), "diff", "--name-only", "--diff-filter=U"],
                             check=False).stdout.split()
            patch_results.extend({"patch": p, "status": "applied" if Path(p).name in done else "not applied"}
                                 for p in plan.patches)
            raise BuildError(
                f"Ollama's patch {failing} does not apply to the fork"
                + (f" (conflicts in {', '.join(files)})" if files else ""),
                hint=f"the conflict is left in {vendor} (your checkouts are untouched): resolve it there, run "
                     f"'git -C {vendor} am --continue', then '{' '.join(make)} apply-patches sync' in "
                     f"{ollama_dir}; or fix the patch in Ollama and run invoke build-ollama again") from None
        patch_results.extend({"patch": p, "status": "applied"} for p in plan.patches)

    step("sync the fork into llama/llama.cpp and ml/backend/ggml/ggml (Makefile.sync, git am -3, go generate)",
         sync)
    step(f"apply {len(plan.rules)} Go rules", lambda: rules.apply_rules(ollama_dir, plan.rules))
    vendored = manifest.tree_hash(ollama_dir, ["llama/llama.cpp", "ml/backend/ggml/ggml"])[:16]
    flags = f"-O2 -g -DOLLAMA_TURBO_SOURCES={vendored}"
    step(f"go build ollama {plan.version} (cgo)",
         lambda: build_era_c.go_build(ollama_dir, stage / "bin" / "ollama", version=plan.version, log=log,
                                      extra_env={**go_env, "CGO_CFLAGS": flags, "CGO_CXXFLAGS": flags}))
    return {"cgo_cflags": flags}
