"""The plan of a build-ollama run, made before anything is built: both sources at their commits, the era and
pin, the backend's preset (and a CUDA build's GPU architecture), the fork's cache types, every Go rule with
where it applies, Ollama's compat patches tried on the fork, verify-fork's verdict, the build's identity and
version. A dry run prints it; a build runs it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo import __version__
from ollama_turbo.builder import era_c as build_era_c
from ollama_turbo.builder import go_rules, gpu_part, ref_choice, rule_families
from ollama_turbo.builder.options import PROBE_PATHS, BuildError, Options
from ollama_turbo.builder.ref_choice import pinned_upstream
from ollama_turbo.check import carry_report, carry_rules, fork_contract, verify_fork
from ollama_turbo.check.carry import Upstream
from ollama_turbo.core import cpu_variants, gpu, proc, rules, sources
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import SourceError, ToolMissing, UsageError
from ollama_turbo.core.settings import CUDA_ARCH_EXAMPLES, CUDA_ARCH_PATTERN, Settings
from ollama_turbo.fork import blocks
from ollama_turbo.fork import sources as fork_sources

Say = Callable[[str], None]


@dataclass
class Plan:
    version: str
    identity: str  # sha256 of what makes this build differ from another (build_identity)
    era: Era
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
    contract: fork_contract.Contract | None = None  # Ollama's contract with the fork: flags, patches carried
    adaptations: list[dict[str, str]] = field(default_factory=list)  # CMake defines for the fork, each with why
    targets: tuple[str, ...] = ()  # era C: the programs Ollama's llama/server installs, built beside each other
    cuda_arch: str = ""  # --backend cuda: the one GPU architecture built for (CMAKE_CUDA_ARCHITECTURES)
    cuda_toolkit: str = ""  # --backend cuda: nvcc's version line here ("" where the GPU backend is not built)
    picked: list[str] = field(default_factory=list)  # why this Ollama ref, where none was named
    stock: bool = False  # Ollama with the llama.cpp it pins, as its own release builds it
    cpu_exclude: tuple[str, ...] = ()  # ggml CPU variants left out of the dist (flag and settings)

    def render(self) -> str:
        lines = [*self.picked,
            f"ollama   {self.ollama.url} @ {self.ollama.ref} ({self.ollama.sha[:12]}), version {self.info.version}, "
            f"era {self.era}",
            (f"llama    {self.fork.url} @ {self.fork.ref} ({self.fork.sha[:12]}): stock, the llama.cpp Ollama pins"
             if self.stock else f"fork     {self.fork.url} @ {self.fork.ref} ({self.fork.sha[:12]})"),
            f"pinned   llama.cpp {self.era.pin_text(self.info.pin)} "
            + ("(built as pinned: no fork, no rules of ours)" if self.stock else "(replaced by the fork)"),
            f"backend  {self.backend}" + (f" (cmake preset {self.preset})" if self.era.rules.cmake_presets else "")
            + (f", for sm_{self.cuda_arch}" if self.cuda_arch else ""),
            f"version  {self.version} (identity {self.identity[:12]}: Ollama and fork commits, backend, "
            f"preset, {build_platform()['os']}/{build_platform()['arch']}, rules)",
            f"dist     {self.dist}",
            "Go rules:",
            *go_rules.render_outcomes(self.outcomes),
            *self._render_patches(),
        ]
        if self.verify:
            lines.append(f"verify-fork (static): {self.verify['verdict']}"
                         + (" (--skip-verify: building anyway)" if self.verify.get("skipped") else ""))
        if self.dropped_flags:
            lines.append(f"WARNING: dropping {', '.join(self.dropped_flags)} from Ollama's llama-server argv "
                         "(the fork does not define them)")
        lines += [f"adapted: {a['define']}: {a['why']}" for a in self.adaptations]
        if self.cpu_exclude:
            lines.append("cpu variants left out: " + ", ".join(f"lib/ollama/{cpu_variants.PREFIX}{v}.so"
                                                             for v in self.cpu_exclude))
        lines.append("commands:")
        lines += [f"  {c}" for c in self.commands]
        lines += [f"NOTE: {n}" for n in self.notes]
        return "\n".join(lines)


    def _render_patches(self) -> list[str]:
        if self.contract is None or not self.era.rules.carries_patches:
            return (["patches applied by Ollama's own mechanism:", *[f"  {p}" for p in self.patches]]
                    if self.patches else ["patches: none"])
        c = self.contract
        lines = [f"compat patches, carried onto the fork (3-way base: {c.upstream}; {c.carry_seconds:.2f} s), "
                 "then applied by Ollama's own CMake:"]
        lines += carry_report.render(c.carried)
        return lines


def build_platform() -> dict[str, str]:
    """The OS and CPU architecture a build made here runs on."""
    return {"os": platform.system().lower(), "arch": platform.machine()}


def build_identity(ollama_sha: str, fork_sha: str, backend: str, preset: str, rule_list: list[rules.Rule],
                   defines: list[str] | None = None, *, cuda_arch: str = "", stock: bool = False,
                   cpu_exclude: tuple[str, ...] = ()) -> str:
    """What makes two builds differ, as one digest: both commits, the backend and preset (and a CUDA build's
    GPU architecture), this machine's OS/arch and the source rules. Two builds with the same identity are the
    same build."""
    parts: dict[str, Any] = {
        "ollama": ollama_sha, "fork": fork_sha, "backend": backend, "preset": preset, "platform": build_platform(),
        "rules": [(r.name, r.file, r.anchor, r.text) for r in rule_list], "defines": defines or []}
    if cuda_arch:
        parts["cuda_arch"] = cuda_arch
    if stock:
        parts["stock"] = True
    if cpu_exclude:  # a dist without some CPU variants is another build (another release on the hosts)
        parts["cpu_exclude"] = sorted(cpu_exclude)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def identity_preset(backend: str, preset: str) -> str:
    """The preset as a build's identity counts it: a CUDA build's toolkit preset (v12 or v13) is picked where
    its native part is built (and recorded there), so a Go part built elsewhere has the same identity."""
    return "cuda" if backend == "cuda" else preset


def _cuda_arch(given: str, notes: list[str] | None) -> str:
    """The GPU architecture a CUDA build is for: ``given`` (flag or turbo.build.cuda_arch), else this
    machine's GPU. With ``notes`` (a dry run) a machine without a GPU gets a note instead of an error."""
    if given:  # checked already: the flag by _check_options, the setting when the settings were read
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
                         hint=f"give the GPU's architecture: --cuda-arch {CUDA_ARCH_EXAMPLES}, or "
                              "turbo.build.cuda_arch in the settings")
    notes.append("no NVIDIA GPU here: the build needs --cuda-arch (or turbo.build.cuda_arch) or a GPU to detect")
    return ""


def _check_backend(backend: str, era: Era, notes: list[str] | None = None) -> tuple[str, str]:
    """The CMake preset for ``backend`` here, and for CUDA the toolkit's version line (nvcc's last, "" where
    nvcc is absent). With ``notes`` (a dry run, or a base part, which builds no GPU code) what only the native
    build needs (macOS, nvcc) becomes a note in the plan instead of an error."""
    host = platform.system()
    if backend == "metal":
        if host != "Darwin":
            if notes is None:
                raise UsageError(f"--backend metal builds on macOS only (this is {host})",
                                 hint="use --backend cpu here, or build on the Mac")
            notes.append(f"the build itself needs macOS (this is {host}): run it on the Mac")
        return "darwin", ""
    if backend == "cuda":
        if host != "Linux":  # refused even for a base part: it could only be completed on a machine like this one
            raise UsageError(f"--backend cuda builds for Linux GPU boxes (this is {host}): its base part runs only "
                             "on the OS and CPU it was built on",
                             hint="build on the GPU box, or --part base on a Linux machine of the box's CPU "
                                  "architecture")
        if not era.rules.cuda:
            raise UsageError(f"--backend cuda: this Ollama is era {era} (it builds llama.cpp into its own binary "
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
            return "llama_cuda_v13_linux", ""
        out = proc.run(["nvcc", "--version"]).stdout
        toolkit = (out.strip().splitlines() or ["nvcc"])[-1]
        return ("llama_cuda_v12_linux" if "release 12." in out else "llama_cuda_v13_linux"), toolkit
    return "cpu", ""


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


def check_options(opts: Options, backend: str) -> None:
    """The flags that need no source: refused before any checkout is opened or fetched."""
    if (opts.part or opts.base_from) and backend != "cuda":
        raise UsageError(f"--part/--base-from split a CUDA build (the GPU backend is built where the CUDA toolkit "
                         f"is); a {backend} build is built in one piece", hint="drop the option, or --backend cuda")
    if opts.part not in ("", "base"):
        raise UsageError(f"--part {opts.part!r}: the only part built alone is 'base'",
                         hint="--part base builds all but the GPU backend; --base-from PATH builds the rest")
    if opts.part and opts.base_from:
        raise UsageError("--part base and --base-from are the two halves of one build: give one of them")
    if opts.base_from and not Path(opts.base_from).expanduser().exists():
        raise UsageError(f"--base-from {opts.base_from}: no such base part",
                         hint="copy <workspace>/parts/<version>/ of the build machine here and name that folder")
    cpu_variants.exclude(opts.cpu_exclude, (), key="--cpu-exclude")  # a name not in our table: refused here
    if opts.cuda_arch and not re.fullmatch(CUDA_ARCH_PATTERN, opts.cuda_arch):
        raise UsageError(f"--cuda-arch {opts.cuda_arch!r} is not a CUDA architecture",
                         hint=f"give the compute capability without the dot, e.g. {CUDA_ARCH_EXAMPLES}")


def make_plan(settings: Settings, opts: Options, probe: Path) -> Plan:
    ws = settings.workspace
    backend = opts.backend or settings.build.backend
    check_options(opts, backend)
    cpu_exclude = tuple(dict.fromkeys([*settings.build.cpu_exclude, *opts.cpu_exclude]))
    cpu_variants.exclude(settings.build.cpu_exclude, (), key="turbo.build.cpu_exclude")
    ollama, fork, pick = ref_choice.sources_for(settings, opts, probe)
    for co in (ollama, fork):
        changed = sources.dirty(co)
        if changed and not opts.allow_dirty:
            raise SourceError(f"{co.name}: {co.url} has uncommitted changes ({', '.join(changed[:5])}); the build "
                              f"uses the committed {co.ref} ({co.short}) and would not contain them",
                              hint="commit or stash them, or pass --allow-dirty to build the committed tree anyway")
    info = sources.detect(ollama)
    notes: list[str] = [n for n in [sources.version_note(info.version)] if n]
    lenient = opts.dry_run or bool(opts.part)  # a base part builds no GPU code: nvcc need not be here
    preset, toolkit = _check_backend(backend, info.era, notes if lenient else None)
    cuda_arch = _cuda_arch(opts.cuda_arch or settings.build.cuda_arch, notes if opts.dry_run else None) \
        if backend == "cuda" else ""
    o_dir = ollama.export(probe / "ollama", PROBE_PATHS)
    f_dir = fork.export(probe / "fork", [*fork_sources.FORK_PATHS, "ggml/src/ggml-common.h", "ggml/src",
                                         "src/llama-arch.h"])
    placements = opts.placements or settings.build.placements
    the_contract = fork_contract.evaluate(
        info, o_dir, fork, f_dir, scratch=probe / "carry",
        upstream=Upstream("", absent="a stock build takes Ollama's patches as they are") if opts.stock
        else pinned_upstream(settings, info, opts.upstream),
        leave_out=[] if opts.stock else [*settings.build.leave_out, *opts.leave_out],
        rules=carry_rules.load(Path(placements)) if placements and not opts.stock else [])
    if opts.stock:  # Ollama's own patches on the llama.cpp they were made for: as they are, or not at all
        the_contract.require_applied(f"llama.cpp {info.pin} ({fork.url})")
    the_contract.require_carried()  # before any Go or CMake work, naming the patch and the hunk
    fork_types = the_contract.fork_types
    if not fork_types:
        raise BuildError(f"fork {fork.ref}: no KV cache type list in common/arg.cpp", hint="is this llama.cpp?")
    known = {"f16"}
    for a in the_contract.allowlists:
        if a.function == "kvCacheBytesPerElement":
            known |= set(a.types)
    new = [t for t in fork_types if t not in known]
    verified = {"verdict": "not run", "why": "a stock build: upstream llama.cpp has no turbo cache types"} \
        if opts.stock else _verify(f_dir, fork, opts)
    all_blocks = list(blocks.derive(f_dir, fork_types).values())  # recorded: plans for this build use them
    cache_blocks = [b for b in all_blocks if b.name in new]
    era = info.era
    adaptations: list[dict[str, str]] = []
    patches = the_contract.patch_names()
    per_model: dict[str, Any] = {"supported": False, "param": go_rules.PER_MODEL_PARAM}
    if opts.stock:  # Ollama as its own release builds it: no rules of ours, its own patches
        dropped: list[str] = []
        rule_list: list[rules.Rule] = []
        skipped: list[go_rules.Outcome] = []
        per_model["why_not"] = ("a stock build: Ollama's own cache handling, one type for the host "
                                "(OLLAMA_KV_CACHE_TYPE; LLAMA_ARG_CACHE_TYPE_K/V in its environment split K and V)")
    else:
        dropped = the_contract.dropped_flags
        server_go = o_dir / "llm/llama_server.go"
        rule_list, skipped = rule_families.make(rule_families.Context(
            era, the_contract, cache_blocks, _grep(ollama), _enclosing(ollama),
            server_go.read_text() if era.rules.server_argv and server_go.is_file() else ""))
        per_model = {"supported": True, "param": go_rules.PER_MODEL_PARAM, "allowed": fork_types} \
            if era.rules.per_model_kv else {**per_model, "why_not": era.rules.per_model_why_not}
    if era.rules.cmake_presets and fork.exists("tools/server/CMakeLists.txt"):
        adaptations = build_era_c.fork_cmake_adaptations(fork.read("tools/server/CMakeLists.txt"))
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
                              [a["define"] for a in adaptations], cuda_arch=cuda_arch, stock=opts.stock,
                              cpu_exclude=cpu_exclude)
    version = (f"{info.version}-stock+{info.pin}.{backend}.{identity[:6]}" if opts.stock else
               f"{info.version}-{settings.build.version_suffix}+{fork.short}.{backend}.{identity[:6]}")
    # the up-to-date check: the build's identity, its version stamp and the tool that builds it
    key = hashlib.sha256(json.dumps({"identity": identity, "version": version, "tool": __version__},
                                    sort_keys=True).encode()).hexdigest()
    plan = Plan(version=version, identity=identity, era=info.era, backend=backend, preset=preset, ollama=ollama,
                fork=fork,
                info=info, cache_blocks=cache_blocks, all_blocks=all_blocks, dropped_flags=dropped, rules=rule_list,
                patches=patches,
                dist=ws / "dist" / version, key=key, notes=notes, verify=verified,
                outcomes=applied + skipped, per_model_kv=per_model, contract=the_contract,
                adaptations=adaptations, cuda_arch=cuda_arch, cuda_toolkit=toolkit, picked=pick, stock=opts.stock,
                cpu_exclude=cpu_exclude)
    ld = build_era_c.ldflags(version)
    server_cmake = o_dir / "llama/server/CMakeLists.txt"
    if server_cmake.is_file():
        plan.targets = build_era_c.install_targets(server_cmake.read_text(errors="replace"))
    base = era.build_steps(fork_git=str(fork.git_dir), fork_sha=fork.sha, ldflags=ld,
                           preset=gpu_part.BASE_PRESET if backend == "cuda" else preset,
                           defines="".join(f" {a['define']}" for a in adaptations), targets=" ".join(plan.targets))
    if backend == "cuda":  # only an era that builds CUDA gets here (_check_backend)
        gpu = [
            f"cmake -S llama/server -B <build-gpu> --preset {preset} "
            f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch or '<arch>'} -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<fork copy>"
            + "".join(f" {a['define']}" for a in adaptations),
            "cmake --build <build-gpu> --target ggml-cuda",
            f"cmake --install <build-gpu> --component llama-server   # lib/ollama/{gpu_part.runner_dir(preset)}/"]
        if opts.part:
            plan.commands = [*base, f"# then, on the GPU box: --base-from <parts/{version}>"]
        elif opts.base_from:
            plan.commands = [f"# base part from {opts.base_from} (Go binary, llama-server, tools)", *gpu]
        else:
            plan.commands = [*base, *gpu]
    else:
        plan.commands = base
    return plan
