"""``invoke build-ollama``: a runnable, versioned, provenance-stamped Ollama around the fork.

plan -> (dry run stops here) -> no-op when the inputs are unchanged -> integrate in scratch
copies (never the user's checkouts) -> build -> stage -> manifest -> dist/<version>/.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo import __version__
from ollama_turbo.builder import era_c as build_era_c
from ollama_turbo.builder import go_modules, go_rules, gpu_part
from ollama_turbo.builder.go_rules import drop_flag_rules, era_b_rules, kv_bytes_rules
from ollama_turbo.builder.llama_server import TOOLS, build_tools
from ollama_turbo.builder.llama_server import publish as llama_publish
from ollama_turbo.check import contract, verify_fork
from ollama_turbo.core import gpu, manifest, proc, redact, rules, sources, toolchain
from ollama_turbo.core.errors import CommandError, SourceError, ToolMissing, TurboError, UsageError
from ollama_turbo.core.settings import CUDA_ARCH_PATTERN, Settings
from ollama_turbo.fork import blocks
from ollama_turbo.fork import sources as fork_sources

Say = Callable[[str], None]
PROBE_PATHS = ["go.mod", "fs/ggml/ggml.go", "llm/llama_server.go", "llama/llama.go", "ml/backend.go",
               "runner/ollamarunner/cache.go", "llama/patches", "llama/compat", "Makefile.sync",
               "llama/server/CMakeLists.txt"]


class BuildError(TurboError):
    pass


@dataclass
class Options:
    ollama: str = ""
    ollama_ref: str = ""
    fork: str = ""
    fork_ref: str = ""
    backend: str = ""
    dry_run: bool = False
    force: bool = False
    allow_dirty: bool = False
    go_env: dict[str, str] = field(default_factory=dict)  # e.g. GOPROXY for this build only
    skip_verify: bool = False  # build even when verify-fork finds a failing quantizer check
    cuda_arch: str = ""  # --backend cuda: the GPU architecture (default: turbo.build.cuda_arch, else this GPU's)
    part: str = ""  # "base": all but the GPU backend (no CUDA toolkit needed), into <workspace>/parts/<version>
    base_from: str = ""  # a base part built elsewhere: build the GPU backend here and assemble one dist


@dataclass
class Plan:
    version: str
    identity: str  # sha256 of what makes this build differ from another (build_identity)
    era: str
    backend: str
    preset: str
    ollama: sources.Checkout
    fork: sources.Checkout
    info: sources.OllamaInfo
    cache_blocks: list[blocks.Block]  # the fork's cache types Ollama does not know (the Go rules add them)
    all_blocks: list[blocks.Block]    # every cache type the fork accepts, as its sources define it
    dropped_flags: list[str]
    rules: list[rules.Rule]
    patches: list[str]
    dist: Path
    key: str
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a dry run could not check here
    verify: dict[str, Any] = field(default_factory=dict)  # verify-fork's static verdict, recorded in the manifest
    outcomes: list[go_rules.Outcome] = field(default_factory=list)  # every Go rule: applied (file:line) or not needed
    per_model_kv: dict[str, Any] = field(default_factory=dict)  # PARAMETER kv_cache_type: supported, allowed types
    patch_results: list[dict[str, str]] = field(default_factory=list)  # era C: each compat patch on the fork
    adaptations: list[dict[str, str]] = field(default_factory=list)  # CMake defines for the fork, each with why
    targets: tuple[str, ...] = ()  # era C: the programs Ollama's llama/server installs, built beside each other
    cuda_arch: str = ""  # --backend cuda: the one GPU architecture built for (CMAKE_CUDA_ARCHITECTURES)

    def render(self) -> str:
        lines = [
            f"ollama   {self.ollama.url} @ {self.ollama.ref} ({self.ollama.sha[:12]}), version {self.info.version}, "
            f"era {self.era}",
            f"fork     {self.fork.url} @ {self.fork.ref} ({self.fork.sha[:12]})",
            f"pinned   llama.cpp {self.info.pin if self.era == 'C' else 'FETCH_HEAD ' + self.info.pin[:12]} "
            "(replaced by the fork)",
            f"backend  {self.backend}" + (f" (cmake preset {self.preset})" if self.era == "C" else "")
            + (f", for sm_{self.cuda_arch}" if self.cuda_arch else ""),
            f"version  {self.version} (identity {self.identity[:12]}: Ollama and fork commits, backend, "
            f"preset, {build_platform()['os']}/{build_platform()['arch']}, rules)",
            f"dist     {self.dist}",
            "Go rules:",
            *go_rules.render_outcomes(self.outcomes),
            "patches applied by Ollama's own mechanism:" if self.patches else "patches: none",
            *[f"  {p}" for p in self.patches],
        ]
        if self.verify:
            lines.append(f"verify-fork (static): {self.verify['verdict']}"
                         + (" (--skip-verify: building anyway)" if self.verify.get("skipped") else ""))
        if self.dropped_flags:
            lines.append(f"WARNING: dropping {', '.join(self.dropped_flags)} from Ollama's llama-server argv "
                         "(the fork does not define them)")
        lines += [f"adapted: {a['define']}: {a['why']}" for a in self.adaptations]
        lines.append("commands:")
        lines += [f"  {c}" for c in self.commands]
        lines += [f"NOTE: {n}" for n in self.notes]
        return "\n".join(lines)


def build_platform() -> dict[str, str]:
    """The OS and CPU architecture a build made here runs on."""
    return {"os": platform.system().lower(), "arch": platform.machine()}


def build_identity(ollama_sha: str, fork_sha: str, backend: str, preset: str, rule_list: list[rules.Rule],
                   defines: list[str] | None = None, *, cuda_arch: str = "") -> str:
    """What makes two builds differ, as one digest: both commits, the backend and preset (and a CUDA build's
    GPU architecture), this machine's OS/arch and the source rules. Two builds with the same identity are the
    same build."""
    parts: dict[str, Any] = {
        "ollama": ollama_sha, "fork": fork_sha, "backend": backend, "preset": preset, "platform": build_platform(),
        "rules": [(r.name, r.file, r.anchor, r.text) for r in rule_list], "defines": defines or []}
    if cuda_arch:
        parts["cuda_arch"] = cuda_arch
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def identity_preset(backend: str, preset: str) -> str:
    """The preset as a build's identity counts it: a CUDA build's toolkit preset (v12 or v13) is picked where
    its native part is built (and recorded there), so a Go part built elsewhere has the same identity."""
    return "cuda" if backend == "cuda" else preset


def _cuda_arch(given: str, notes: list[str] | None) -> str:
    """The GPU architecture a CUDA build is for: ``given`` (flag or turbo.build.cuda_arch), else this
    machine's GPU. With ``notes`` (a dry run) a machine without a GPU gets a note instead of an error."""
    if given:
        if not re.fullmatch(CUDA_ARCH_PATTERN, given):
            raise UsageError(f"--cuda-arch {given!r} is not a CUDA architecture",
                             hint="give the compute capability without the dot, e.g. 90 (H100/H200), 89 (L4), "
                                  "86 (A10), 80 (A100)")
        return given
    gpus = gpu.local_gpus()
    archs = sorted({a for _, a in gpus})
    if len(archs) > 1:
        raise UsageError(f"this machine has GPUs of {len(archs)} architectures ({gpu.describe(gpus)})",
                         hint="pick one with --cuda-arch or turbo.build.cuda_arch")
    if archs:
        return archs[0]
    if notes is None:
        raise UsageError("--backend cuda: no NVIDIA GPU found here (nvidia-smi) to build for",
                         hint="give the GPU's architecture: --cuda-arch 90 (H100/H200), 89 (L4), 86 (A10), "
                              "80 (A100), or turbo.build.cuda_arch in the settings")
    notes.append("no NVIDIA GPU here: the build needs --cuda-arch (or turbo.build.cuda_arch) or a GPU to detect")
    return ""


def _check_backend(backend: str, era: str, notes: list[str] | None = None) -> str:
    """The CMake preset for ``backend`` here. With ``notes`` (a dry run, or a Go part, which builds no
    native code) what only the native build needs (macOS, nvcc) becomes a note in the plan instead of an
    error."""
    host = platform.system()
    if backend == "metal":
        if host != "Darwin":
            if notes is None:
                raise UsageError(f"--backend metal builds on macOS only (this is {host})",
                                 hint="use --backend cpu here, or build on the Mac")
            notes.append(f"the build itself needs macOS (this is {host}): run it on the Mac")
        return "darwin"
    if backend == "cuda":
        if era == sources.ERA_B:
            raise UsageError("--backend cuda: this Ollama is era B (it builds llama.cpp into its own binary "
                             "through cgo, with CUDA runners that its Makefile builds outside our build); "
                             "CUDA builds of the custom Ollama need an era C Ollama (v0.30.0 or later), where "
                             "llama-server is built with Ollama's CMake CUDA preset",
                             hint="use --ollama-ref v0.30.0 (or later) with --backend cuda, or --backend cpu "
                                  "for this Ollama")
        if not shutil.which("nvcc"):
            if notes is None:
                raise ToolMissing("--backend cuda needs nvcc (the CUDA toolkit) on PATH",
                                  hint="install the CUDA toolkit 12 or 13, or use --backend cpu")
            notes.append("the native build needs nvcc (the CUDA toolkit 12 or 13); it picks the matching preset there")
            return "llama_cuda_v13_linux"
        out = proc.run(["nvcc", "--version"]).stdout
        return "llama_cuda_v12_linux" if "release 12." in out else "llama_cuda_v13_linux"
    return "cpu"


def _verify(f_dir: Path, fork: sources.Checkout, opts: Options) -> dict[str, Any]:
    """verify-fork's static checks on the fork about to be built; a failing one stops the build."""
    try:
        report = verify_fork.verify(f_dir, {"url": fork.url, "ref": fork.ref, "sha": fork.sha}, dynamic=False)
    except verify_fork.VerifyError:
        return {"verdict": "not run", "why": "the fork has no turbo cache types", "skipped": opts.skip_verify}
    failing = [i for i in report.items if i.verdict == verify_fork.FAIL]
    summary = {"verdict": report.verdict, "skipped": opts.skip_verify,
               "failing": [f"{i.item}: {i.evidence}" for i in failing]}
    if failing and not opts.skip_verify:
        raise BuildError(f"verify-fork: the fork's quantizer fails {len(failing)} check(s): {failing[0].item}: "
                         f"{failing[0].evidence}",
                         hint="see invoke verify-fork --fork ...; build anyway with --skip-verify (recorded in the "
                              "manifest)")
    return summary


def _grep(co: sources.Checkout) -> go_rules.Grep:
    """A search of Ollama's Go code (tests left out) at the commit being built."""
    return lambda pattern: co.grep(pattern, "*.go", ":!*_test.go")


def _enclosing(co: sources.Checkout) -> Callable[[str, int], str | None]:
    """The name of the Go function that holds line ``n`` of ``file``."""
    texts: dict[str, list[str]] = {}

    def find(file: str, n: int) -> str | None:
        lines = texts.setdefault(file, co.read(file).splitlines())
        for line in reversed(lines[:n]):
            m = re.match(r"func (?:\([^)]*\)\s*)?(\w+)\(", line)
            if m:
                return m.group(1)
        return None

    return find


def _check_compat(ollama: sources.Checkout, fork: sources.Checkout, patches: list[str],
                  probe: Path) -> list[dict[str, str]]:
    """Era C: Ollama's compat patches tried on the fork's files (a scratch copy), so a conflict stops the build
    (and names itself in a dry run) before any Go or CMake work."""
    o_dir = ollama.export(probe / "compat-ollama", ["llama/compat"])
    files = [o_dir / p for p in patches]
    targets = sorted({t for f in files for t in contract.patch_targets(f.read_text(errors="replace"))})
    tree = fork.export(probe / "compat-fork", targets)
    results = contract.try_compat_patches(files, tree, o_dir)
    bad = [r for r in results if r.status not in ("applied", "already-applied")]
    if bad:
        r = bad[0]
        detail = "; ".join(line.strip() for line in r.detail.splitlines() if line.strip())[:300]
        raise BuildError(
            f"Ollama {ollama.ref}'s compat patch {r.patch} does not apply to the fork {fork.ref} ({fork.short}): "
            f"{r.status} in {', '.join(r.files)}" + (f"; the fork lacks {', '.join(r.missing)}" if r.missing else "")
            + (f" ({detail})" if detail else ""),
            hint="use an Ollama release whose pin the fork is based on (invoke api-check --scan-ollama), "
                 "or rebase the fork; nothing was built or downloaded, your checkouts are untouched")
    return [{"patch": r.patch, "status": r.status} for r in results]


def make_plan(settings: Settings, opts: Options, probe: Path) -> Plan:
    ws = settings.workspace
    ollama = sources.open_configured(settings, "ollama", opts.ollama, opts.ollama_ref)
    fork = sources.open_configured(settings, "fork", opts.fork, opts.fork_ref)
    for co in (ollama, fork):
        changed = sources.dirty(co)
        if changed and not opts.allow_dirty:
            raise SourceError(f"{co.name}: {co.url} has uncommitted changes ({', '.join(changed[:5])}); the build "
                              f"uses the committed {co.ref} ({co.short}) and would not contain them",
                              hint="commit or stash them, or pass --allow-dirty to build the committed tree anyway")
    info = sources.detect(ollama)
    backend = opts.backend or settings.build.backend
    notes: list[str] = []
    if (opts.part or opts.base_from) and backend != "cuda":
        raise UsageError(f"--part/--base-from split a CUDA build (the GPU backend is built where the CUDA toolkit "
                         f"is); a {backend} build is built in one piece", hint="drop the option, or --backend cuda")
    if opts.part not in ("", "base"):
        raise UsageError(f"--part {opts.part!r}: the only part built alone is 'base'",
                         hint="--part base builds all but the GPU backend; --base-from PATH builds the rest")
    if opts.part and opts.base_from:
        raise UsageError("--part base and --base-from are the two halves of one build: give one of them")
    lenient = opts.dry_run or bool(opts.part)  # a base part builds no GPU code: nvcc need not be here
    preset = _check_backend(backend, info.era, notes if lenient else None)
    cuda_arch = _cuda_arch(opts.cuda_arch or settings.build.cuda_arch, notes if opts.dry_run else None) \
        if backend == "cuda" else ""
    if backend == "cuda" and info.era != sources.ERA_C:
        raise UsageError("--backend cuda needs an era C Ollama", hint="use --ollama-ref v0.30.0 or later")
    o_dir = ollama.export(probe / "ollama", PROBE_PATHS)
    f_dir = fork.export(probe / "fork", [*fork_sources.FORK_PATHS, "ggml/src/ggml-common.h", "ggml/src"])
    arg_cpp, ggml_c = fork_sources.read_fork_sources(f_dir)
    fork_types = fork_sources.fork_cache_types(arg_cpp, ggml_c)
    if not fork_types:
        raise BuildError(f"fork {fork.ref}: no KV cache type list in common/arg.cpp", hint="is this llama.cpp?")
    known = {"f16"}
    for a in contract.kv_allowlists(o_dir):
        if a.function == "kvCacheBytesPerElement":
            known |= set(a.types)
    new = [t for t in fork_types if t not in known]
    verified = _verify(f_dir, fork, opts)
    all_blocks = list(blocks.derive(f_dir, fork_types).values())  # recorded: plans for this build use them
    cache_blocks = [b for b in all_blocks if b.name in new]
    dropped: list[str] = []
    patch_results: list[dict[str, str]] = []
    adaptations: list[dict[str, str]] = []
    grep = _grep(ollama)
    skipped: list[go_rules.Outcome] = []
    per_model: dict[str, Any] = {"supported": False, "param": go_rules.PER_MODEL_PARAM}
    if info.era == sources.ERA_C:
        flags = contract.server_flags((o_dir / "llm/llama_server.go").read_text())
        have = fork_sources.fork_flags(arg_cpp)
        dropped = [f.name for f in flags if f.always and f.name not in have]
        kv_rules = kv_bytes_rules(cache_blocks)
        needed, why_not = go_rules.kv_bytes_needed(grep, _enclosing(ollama))
        rule_list = kv_rules if needed else []
        skipped += [] if needed else [go_rules.Outcome(r.name, r.file, "not needed", None, why_not) for r in kv_rules]
        skipped += go_rules.allowlists_not_needed(grep, cache_blocks)
        rule_list += drop_flag_rules(dropped) + go_rules.per_model_rules(fork_types)
        per_model = {"supported": True, "param": go_rules.PER_MODEL_PARAM, "allowed": fork_types}
        patches = sorted(str(p.relative_to(o_dir)) for p in (o_dir / "llama/compat").rglob("*.patch"))
        patch_results = _check_compat(ollama, fork, patches, probe)
        if fork.exists("tools/server/CMakeLists.txt"):
            adaptations = build_era_c.fork_cmake_adaptations(fork.read("tools/server/CMakeLists.txt"))
    else:
        rule_list = kv_bytes_rules(cache_blocks) + era_b_rules(cache_blocks)
        per_model["why_not"] = ("era B runs llama.cpp inside Ollama through cgo, with one cache type per process; "
                                "a cache type per model needs an era C Ollama (v0.30.0 or later)")
        patches = sorted(str(p.relative_to(o_dir)) for p in (o_dir / "llama/patches").glob("*.patch"))
    # every rule must apply now, so a moved anchor is found before anything is built; where it applies is
    # recorded (file:line of the anchor in Ollama's own source)
    texts: dict[str, str] = {}
    applied: list[go_rules.Outcome] = []
    for r in rule_list:
        if r.file not in texts:
            if not ollama.exists(r.file):
                raise rules.RuleError(f"{r.file}: rule {r.name}: file not found in Ollama {ollama.ref}",
                                      hint="Ollama has moved this code; update ollama_turbo/builder/go_rules.py. "
                                           "Nothing was built")
            texts[r.file] = ollama.read(r.file)
        applied.append(go_rules.Outcome(r.name, r.file, "applied", rules.anchor_line(texts[r.file], r), r.why))
        texts[r.file] = rules.apply_rule(texts[r.file], r)
    # a build's identity, in the one name every later stage uses (dist folder, release, /api/version):
    # readable parts (fork commit, backend) and a digest of everything that makes two builds differ
    identity = build_identity(ollama.sha, fork.sha, backend, identity_preset(backend, preset), rule_list,
                              [a["define"] for a in adaptations], cuda_arch=cuda_arch)
    version = f"{info.version}-{settings.build.version_suffix}+{fork.short}.{backend}.{identity[:6]}"
    # the up-to-date check: the build's identity, its version stamp and the tool that builds it
    key = hashlib.sha256(json.dumps({"identity": identity, "version": version, "tool": __version__},
                                    sort_keys=True).encode()).hexdigest()
    plan = Plan(version=version, identity=identity, era=info.era, backend=backend, preset=preset, ollama=ollama,
                fork=fork,
                info=info, cache_blocks=cache_blocks, all_blocks=all_blocks, dropped_flags=dropped, rules=rule_list,
                patches=patches,
                dist=ws / "dist" / version, key=key, notes=notes, verify=verified,
                outcomes=applied + skipped, per_model_kv=per_model, patch_results=patch_results,
                adaptations=adaptations, cuda_arch=cuda_arch)
    ld = build_era_c.ldflags(version)
    server_cmake = o_dir / "llama/server/CMakeLists.txt"
    if server_cmake.is_file():
        plan.targets = build_era_c.install_targets(server_cmake.read_text(errors="replace"))
    if info.era == sources.ERA_C:
        base_preset = gpu_part.BASE_PRESET if backend == "cuda" else preset
        base = [
            "go mod download (through GOPROXY, vendor/ or the module cache; before any CMake work)",
            f"cmake -S llama/server -B <build> --preset {base_preset} -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<fork copy>"
            + "".join(f" {a['define']}" for a in adaptations),
            f"cmake --build <build> --target {' '.join(plan.targets)}",
            "cmake --install <build> --component llama-server",
            f'go build -trimpath -ldflags "{ld}" -o bin/ollama .']
        gpu = [
            f"cmake -S llama/server -B <build-gpu> --preset {preset} "
            f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch or '<arch>'} -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<fork copy>"
            + "".join(f" {a['define']}" for a in adaptations),
            "cmake --build <build-gpu> --target ggml-cuda",
            f"cmake --install <build-gpu> --component llama-server   # lib/ollama/{gpu_part.runner_dir(preset)}/"]
        if backend != "cuda":
            plan.commands = base
        elif opts.part:
            plan.commands = [*base, f"# then, on the GPU box: --base-from <parts/{version}>"]
        elif opts.base_from:
            plan.commands = [f"# base part from {opts.base_from} (Go binary, llama-server, tools)", *gpu]
        else:
            plan.commands = [*base, *gpu]
    else:
        plan.commands = [
            "go mod download (through GOPROXY, vendor/ or the module cache)",
            f"make -f Makefile.sync UPSTREAM={fork.git_dir} FETCH_HEAD={fork.sha} clean apply-patches sync",
            f'go build -trimpath -ldflags "{ld}" -o bin/ollama .']
    return plan


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
            "version": p.version, "era": p.era, "backend": p.backend, "dist": str(self.dist),
            "rules": [o.to_json() for o in p.outcomes], "per_model_kv": p.per_model_kv, "patches": p.patches,
            "dropped_flags": p.dropped_flags, "adaptations": p.adaptations, "commands": p.commands,
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
    if existing and not opts.force and existing.get("inputs_key") == plan.key and not manifest.verify(
            plan.dist, existing):
        return Result("up-to-date", plan, plan.dist, existing, time.perf_counter() - t0)
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
    say(f"building Ollama {plan.version} (era {plan.era}, {plan.backend}); log: {log}")
    if plan.dropped_flags:
        say(f"WARNING: dropping {', '.join(plan.dropped_flags)} from Ollama's llama-server argv: "
            "the fork does not define them")
    step = _Steps(say)
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
        parts["base"] = {"built_on": part.get("built_on"), "built_at": part.get("built_at"), "from": str(root)}
    else:
        n_mods = len(go_modules.required((ollama_dir / "go.mod").read_text()))
        step(f"download the {n_mods} Go modules Ollama requires (GOPROXY, vendor/ or the module cache)",
             lambda: go_modules.download(ollama_dir, extra_env=opts.go_env, log=log))
        if plan.era == sources.ERA_C:
            extra = _build_c(plan, settings, work, ollama_dir, stage, log, step, patch_results, opts.go_env)
        else:
            extra = _build_b(plan, work, ollama_dir, stage, log, step, patch_results, opts.go_env)
        parts["base"] = {"built_on": platform.node(), "built_at": _now()}
    gpu: dict[str, Any] | None = None
    if plan.backend == "cuda" and not opts.part:
        gpu = _build_gpu(plan, settings, work, ollama_dir, stage, log, step)
        parts["gpu"] = {"built_on": platform.node(), "built_at": _now()}
    data = {
        "version": plan.version, "era": plan.era,
        "ollama": {"url": plan.ollama.url, "ref": plan.ollama.ref, "sha": plan.ollama.sha,
                   "version": plan.info.version},
        "fork": {"url": plan.fork.url, "ref": plan.fork.ref, "sha": plan.fork.sha},
        "pinned": {"tag": plan.info.pin} if plan.era == "C" else {"fetch_head": plan.info.pin},
        "backend": plan.backend, "preset": plan.preset if plan.era == "C" else None,
        "platform": build_platform(), "identity": plan.identity,
        "kv": {"type_k": settings.kv.type_k, "type_v": settings.kv.type_v,
               "flash_attention": settings.kv.flash_attention, "env": redact.env(settings.kv.env)},
        "cache_types": {b.name: {"ggml_type": b.ggml_type, "block": b.block, "bytes": b.size}
                        for b in plan.all_blocks},
        "rules": [o.to_json() for o in plan.outcomes],
        "per_model_kv": plan.per_model_kv,
        "patches": patch_results,
        "dropped_flags": plan.dropped_flags,
        "adaptations": plan.adaptations,
        "verify_fork": plan.verify,
        "toolchain": tools,
        "build_flags": {"ldflags": build_era_c.ldflags(plan.version), **extra},
        "inputs_key": plan.key, "ollama_turbo": __version__,
        "built_at": _now(),
    }
    if plan.backend == "cuda":
        data.update(cuda_arch=plan.cuda_arch, parts=parts, gpu=gpu)
    if opts.part:  # a base part: recorded beside its files, completed into a dist by --base-from
        data = redact.tree({**data, "part": "base", "built_on": platform.node(),
                            "files": manifest.file_sums(stage)})
        gpu_part.write_part(stage, data)
        if plan.dist.exists():
            shutil.rmtree(plan.dist)
        plan.dist.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(plan.dist)
        shutil.rmtree(work, ignore_errors=True)
        return Result("base-part", plan, plan.dist, data, time.perf_counter() - t0, log)
    manifest.write(stage, redact.tree(data))  # the manifest travels to every host: no credentials in it
    if plan.dist.exists():
        shutil.rmtree(plan.dist)
    stage.rename(plan.dist)
    shutil.rmtree(work, ignore_errors=True)
    written = manifest.read(plan.dist) or data
    return Result("built", plan, plan.dist, written, time.perf_counter() - t0, log)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build_gpu(plan: Plan, settings: Settings, work: Path, ollama_dir: Path, stage: Path, log: Path,
               step: _Steps) -> dict[str, Any]:
    """The CUDA backend (Ollama's CUDA preset, one architecture) into the stage's lib/ollama/cuda_vNN/."""
    fork_dir = work / "fork"
    if not fork_dir.is_dir():
        step("copy the fork to a scratch source tree", lambda: _clone_fork(plan, fork_dir, log))
    cache = settings.workspace / "cache" / "ggml-cuda"
    out, key = step(f"build the CUDA backend (cmake preset {plan.preset}, sm_{plan.cuda_arch}; cached by source "
                    "hash)",
                    lambda: gpu_part.build_backend(ollama_dir, fork_dir, work, cache, preset=plan.preset,
                                                   arch=plan.cuda_arch, fork_sha=plan.fork.sha,
                                                   defines=tuple(a["define"] for a in plan.adaptations), log=log))
    shutil.copytree(out / "lib", stage / "lib", dirs_exist_ok=True)
    return gpu_part.record(plan.preset, plan.cuda_arch, key)


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
    if cuda:
        nvcc = proc.run([proc.which("nvcc", hint="install the CUDA toolkit 12 or 13"), "--version"]).stdout
        tools["nvcc"] = nvcc.strip().splitlines()[-1] if nvcc.strip() else "nvcc"
    if plan.era == sources.ERA_C:
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
    step("copy the fork to a scratch source tree", lambda: _clone_fork(plan, fork_dir, log))
    preset = gpu_part.BASE_PRESET if plan.backend == "cuda" else plan.preset  # a GPU build's base: Ollama's CPU
    step(f"apply {len(plan.rules)} Go rules", lambda: rules.apply_rules(ollama_dir, plan.rules))

    patch_results.extend(plan.patch_results)  # checked against the fork by the plan, before Go or CMake ran
    cache_key = hashlib.sha256("\0".join([
        plan.fork.sha, manifest.tree_hash(ollama_dir, ["llama/server", "llama/compat"]), preset,
        str(toolchain.cmake_version()), "tools: " + " ".join(TOOLS), *[a["define"] for a in plan.adaptations],
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
        shutil.copy2(tool, stage / "lib" / "ollama" / tool.name)
        tool_paths[tool.name] = f"lib/ollama/{tool.name}"
    if (cached / "tools.json").is_file():
        tools.update(json.loads((cached / "tools.json").read_text()))
    step(f"go build ollama {plan.version}",
         lambda: build_era_c.go_build(ollama_dir, stage / "bin" / "ollama", version=plan.version, log=log,
                                      extra_env=go_env))
    return {"cmake_preset": preset, "fetchcontent_source_dir": "scratch copy of the fork",
            "llama_server_cache_key": cache_key, "tools": tools, "tool_paths": tool_paths}


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
