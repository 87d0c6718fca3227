"""Generate the sample world: upstream llama.cpp, the TurboQuant fork, and Ollama of both eras.

Everything is written as real git repositories with the real file paths and mechanisms
(FetchContent + compat patches for era C; Makefile.sync, rsync filters and ``git am`` patches
for era B), small enough to build in seconds. Scenarios reproduce the drift seen in the
real world.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ollama_turbo.core.errors import UsageError

from . import go_common, go_llm, go_routes, goproxy, ollama_compat, turbo_quant
from . import ollama_build_files as obf
from .gitrepo import Repo
from .llama_headers import Flavour, ggml_backend_h, ggml_h, gguf_h, llama_h
from .llama_loader import loader_files
from .llama_server import cmakelists, server_cpp
from .llama_sources import (
    GGML_BACKEND_C,
    METAL_SHADER,
    METAL_SHADER_TURBO,
    arg_cpp,
    arg_h,
    ggml_c,
    ggml_common_h,
    llama_c,
)
from .model import GQA6_GEOMETRY, HYBRID_GEOMETRY, write_model
from .perplexity import perplexity_cpp
from .turbo_quant import Faults

UPSTREAM_TAGS = ("b100", "b110", "b120")
FORK_BRANCH = "feature/turboquant-kv-cache"
# Era C releases of the sample Ollama and the llama.cpp tag each pins.
ERA_C_RELEASES = (("v0.30.0", "b100"), ("v0.31.0", "b110"), ("v0.32.0", "b120"))
ERA_B_RELEASE = "v0.24.0"
MODEL_NAME = "sample-model.gguf"


@dataclass(frozen=True)
class Scenario:
    """Which real-world situation the sample world reproduces."""

    name: str = "clean"
    fork_base: str = "b110"          # upstream tag the fork branches from
    ollama_c_pin: str = "b110"       # the era C Ollama's HEAD pins this tag
    ollama_b_pin: str = "b110"       # the era B Ollama vendors this tag (FETCH_HEAD)
    fork_drops: str | None = None    # a llama.h function the fork removed
    era_b_patch_conflict: bool = False  # an era B patch edits lines the fork changed
    fork_2026_06: bool = False       # the fork as it moved on: turbo4 66 bytes, renumbered type ids
    quantizer: Faults = Faults()     # faults in the fork's quantizer tables, for verify-fork
    compat_layer: bool = False       # Ollama v0.32.0 (pins b120) carries a compat layer: hooks, web UI, nova
    description: str = "fork based on the pinned tag: patches apply, flags present"


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario(),
        Scenario(name="fork-behind", fork_base="b100",
                 description="fork older than Ollama's pin: --kv-unified missing, compat "
                             "patch conflicts, llama_context_params grew"),
        Scenario(name="collision", ollama_c_pin="b120",
                 description="Ollama pins b120, whose new GGML_TYPE_Q2_0 = 42 collides "
                             "with the fork's GGML_TYPE_TURBO2_0 = 42"),
        Scenario(name="ollama-ahead", ollama_c_pin="b120", compat_layer=True,
                 description="Ollama pins b120, past the fork's base b110: its compat patches must be carried "
                             "onto the fork (upstream moved an include, a log line and a block beside its hooks), "
                             "one fixes a model architecture the fork lacks (nova), one the web UI"),
        Scenario(name="removed-function", fork_drops="llama_n_ctx",
                 description="the fork removed llama_n_ctx, which Ollama's cgo code calls"),
        Scenario(name="patch-conflict", era_b_patch_conflict=True,
                 description="an era B llama/patches patch edits lines the fork changed"),
        Scenario(name="fork-2026-06", fork_base="b120", ollama_c_pin="b120", ollama_b_pin="b120", fork_2026_06=True,
                 description="the fork rebased on b120 (Q2_0 = 42): TURBO2_0 renumbered 42 -> 43, turbo4 now "
                             "66 bytes per 128 values"),
        Scenario(name="quant-suboptimal", quantizer=Faults(suboptimal_4bit=True),
                 description="the fork's 4-bit centroid table is squeezed toward zero, far from Lloyd-Max"),
        Scenario(name="quant-backends-disagree", quantizer=Faults(metal_disagrees=True),
                 description="the Metal 3-bit centroid table is not the CPU's"),
        Scenario(name="quant-inverse-signs", quantizer=Faults(inverse_signs=True),
                 description="the CPU inverse rotation applies the sign arrays in the forward order"),
    )
}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UsageError(f"unknown sample scenario {name!r}; choose one of: "
                         + ", ".join(SCENARIOS)) from None


@dataclass
class World:
    root: Path
    scenario: Scenario
    upstream: Path
    fork: Path
    ollama_c: Path
    ollama_b: Path
    model: Path
    model_gqa6: Path  # 24 query heads per 4 KV heads: the fork's auto-asymmetric K applies
    model_hybrid: Path  # qwen35-like: KV cache in 2 of 8 layers, a recurrent state in the others
    goproxy: Path  # a file-based Go module proxy with the modules the Ollama trees require
    tags: dict[str, str] = field(default_factory=dict)  # upstream tag -> sha

    @property
    def goproxy_url(self) -> str:
        return goproxy.url(self.goproxy)

    def describe(self) -> str:
        return "\n".join([
            f"sample world ({self.scenario.name}: {self.scenario.description}) in {self.root}",
            f"  upstream/  miniature llama.cpp, tags {', '.join(UPSTREAM_TAGS)}",
            f"  fork/      TurboQuant fork, branch {FORK_BRANCH} from {self.scenario.fork_base}",
            f"  ollama-c/  Ollama era C (llama-server subprocess), HEAD pins "
            f"{self.scenario.ollama_c_pin}",
            f"  ollama-b/  Ollama era B (vendored + cgo) {ERA_B_RELEASE}, FETCH_HEAD = "
            f"{self.scenario.ollama_b_pin}",
            f"  models/    {self.model.name}, {self.model_gqa6.name} (24 query heads per 4 KV heads), "
            f"{self.model_hybrid.name} (hybrid: 2 of 8 layers with a KV cache)",
            f"  goproxy/   Go module proxy with {goproxy.MODULE} {goproxy.VERSION} (GOPROXY={self.goproxy_url})",
        ])


def llama_tree(fl: Flavour) -> dict[str, str]:
    metal = METAL_SHADER + (METAL_SHADER_TURBO + turbo_quant.metal_tables(fl.quantizer_faults) if fl.turbo else "")
    quantizer = {"ggml/src/ggml-quants.h": turbo_quant.QUANTS_H,
                 "ggml/src/ggml-turbo-quant.c": turbo_quant.quant_c(fl.quantizer_faults)} if fl.turbo else {}
    return {**quantizer,
        "CMakeLists.txt": cmakelists(fl),
        "LICENSE": "Sample world source, written for ollama-turbo's tests.\n",
        "README.md": f"# miniature llama.cpp ({fl.tag}{', TurboQuant fork' if fl.turbo else ''})\n",
        "include/llama.h": llama_h(fl),
        "src/llama.c": llama_c(fl),
        "ggml/include/ggml.h": ggml_h(fl),
        "ggml/include/gguf.h": gguf_h(fl),
        "ggml/include/ggml-backend.h": ggml_backend_h(fl),
        "ggml/src/ggml.c": ggml_c(fl),
        "ggml/src/ggml-backend.c": GGML_BACKEND_C,
        "ggml/src/ggml-common.h": ggml_common_h(fl),
        "ggml/src/ggml-metal/ggml-metal.metal": metal,
        "common/arg.h": arg_h(fl),
        "common/arg.cpp": arg_cpp(fl),
        "tools/server/server.cpp": server_cpp(fl),
        "tools/perplexity/perplexity.cpp": perplexity_cpp(),
        **loader_files(fl),
    }


def generate(dest: Path, sc: Scenario | None = None) -> World:
    """Write the four repositories (and a tiny model) into ``dest``, which must be empty."""
    sc = sc or Scenario()
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty; the sample world needs an empty directory",
                         hint="choose another --dest or remove it")
    dest.mkdir(parents=True, exist_ok=True)
    world = World(root=dest, scenario=sc, upstream=dest / "upstream", fork=dest / "fork",
                  ollama_c=dest / "ollama-c", ollama_b=dest / "ollama-b",
                  model=dest / "models" / MODEL_NAME, model_gqa6=dest / "models" / "sample-gqa6.gguf",
                  model_hybrid=dest / "models" / "sample-hybrid.gguf",
                  goproxy=dest / "goproxy")
    goproxy.write_proxy(world.goproxy)
    _upstream(world)
    _fork(world)
    with tempfile.TemporaryDirectory(prefix="turbo-sample-") as tmp:
        _ollama_c(world, Path(tmp))
        _ollama_b(world, Path(tmp))
    write_model(world.model)
    write_model(world.model_gqa6, GQA6_GEOMETRY)
    write_model(world.model_hybrid, HYBRID_GEOMETRY)
    return world


def _upstream(world: World) -> None:
    repo = Repo.init(world.upstream, branch="master")
    for tag in UPSTREAM_TAGS:
        fl = Flavour(tag)
        for stale in [p for p in repo.path.rglob("*") if p.is_file() and ".git" not in p.parts]:
            stale.unlink()
        repo.write(llama_tree(fl))
        world.tags[tag] = repo.commit(f"llama : release {tag}", tag=tag)


def _fork(world: World) -> None:
    sc = world.scenario
    proc_repo = Repo(world.root)
    proc_repo.git("clone", "-q", str(world.upstream), str(world.fork))
    repo = Repo(world.fork)
    repo.git("checkout", "-q", "-b", FORK_BRANCH, sc.fork_base)
    repo.git("branch", "-q", "-f", "master", "b100")
    fl = Flavour(sc.fork_base, turbo=True, drop_function=sc.fork_drops, turbo_2026_06=sc.fork_2026_06,
                 quantizer_faults=sc.quantizer)
    tree = llama_tree(fl)
    ggml_part = {k: v for k, v in tree.items() if k.startswith("ggml/")}
    repo.write(ggml_part)
    repo.commit("ggml : add TurboQuant KV cache types turbo2/3/4 and the WHT op")
    repo.write(tree)
    repo.commit("common : accept turbo2/turbo3/turbo4 as KV cache types")


def _scratch_clone(world: World, tmp: Path, tag: str, name: str) -> Repo:
    path = tmp / name
    Repo(world.root).git("clone", "-q", str(world.upstream), str(path))
    repo = Repo(path)
    repo.git("checkout", "-q", tag)
    return repo


def _compat_patch(world: World, tmp: Path, tag: str) -> str:
    """The era C compat patch for llama.cpp ``tag``: /health tells Ollama the patch is in."""
    repo = _scratch_clone(world, tmp, tag, f"compat-{tag}")
    server = repo.path / "tools/server/server.cpp"
    lines = server.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith('return "{\\"status'):
            head, _, rest = line.rpartition('}"')
            lines[i] = head + ',\\"ollama\\":true}"' + rest
    server.write_text("".join(lines))
    diff = repo.git("diff").stdout
    shutil.rmtree(repo.path)
    return ("Subject: [PATCH] server: report the ollama compat layer in /health\n\n"
            "Ollama checks for it before using the server.\n---\n" + diff)


def _compat_layer(world: World, tmp: Path, tag: str) -> dict[str, str]:
    """The compat layer of an Ollama that pins ``tag`` (from b120): its sources, and its patches made by editing
    the pinned tree and taking ``git diff``, one patch at a time."""
    if not world.scenario.compat_layer or int(tag[1:]) < 120:
        return {}
    repo = _scratch_clone(world, tmp, tag, f"compat-layer-{tag}")
    files = {"llama/compat/llama-ollama-compat.h": ollama_compat.COMPAT_H,
             "llama/compat/llama-ollama-compat.c": ollama_compat.COMPAT_C}
    for name, (rel, edits) in ollama_compat.compat_edits().items():
        ollama_compat.edit_file(repo.path, rel, edits)
        files[f"llama/compat/{name}"] = repo.git("diff").stdout
        repo.git("checkout", "-q", "--", ".")
    shutil.rmtree(repo.path)
    return files


def _ollama_common(world: World) -> dict[str, str]:
    return {
        "go.mod": go_common.GO_MOD,
        "go.sum": goproxy.go_sum(),
        "main.go": go_common.MAIN_GO,
        "version/version.go": go_common.VERSION_GO,
        "envconfig/config.go": go_common.ENVCONFIG_GO,
        "fs/ggml/gguf.go": go_common.GGUF_GO,
        "server/store.go": go_common.STORE_GO,
        "server/routes.go": go_routes.ROUTES_GO,
        "server/create.go": go_routes.CREATE_GO,
        "api/types.go": go_routes.API_TYPES_GO,
        "llm/types.go": go_llm.LLM_TYPES_GO,
    }


def _ollama_c(world: World, tmp: Path) -> None:
    repo = Repo.init(world.ollama_c)
    pin_order = [t for _, t in ERA_C_RELEASES]
    last = pin_order.index(world.scenario.ollama_c_pin)
    for version, tag in ERA_C_RELEASES[: last + 1]:
        files = _ollama_common(world)
        files.update({
            ".gitignore": "build/\ndist/\n",
            "README.md": f"# Ollama {version} (sample world, era C)\n\nllama.cpp {tag} runs as "
                         "a llama-server subprocess.\n",
            "LLAMA_CPP_VERSION": tag + "\n",
            "llama/server/CMakeLists.txt": obf.server_cmakelists(str(world.upstream)),
            "llama/server/CMakePresets.json": obf.server_presets(),
            "llama/compat/apply-patch.cmake": obf.APPLY_PATCH_CMAKE,
            "llama/compat/0001-server-report-ollama-compat.patch": _compat_patch(world, tmp, tag),
            **_compat_layer(world, tmp, tag),
            "llm/llama_server.go": go_llm.llama_server_go(int(tag[1:])),
            "llm/server.go": go_llm.LLM_SERVER_C_GO,
            "fs/ggml/ggml.go": go_llm.fs_ggml_go("c"),
        })
        repo.write(files)
        repo.commit(f"release {version}: llama.cpp {tag}", tag=version)


def _era_b_patches(world: World, tmp: Path, pin: str) -> tuple[Repo, list[Path]]:
    """Ollama's llama/patches: commits on a scratch clone, written with format-patch."""
    repo = _scratch_clone(world, tmp, pin, "era-b-vendor")
    repo.git("checkout", "-q", "-b", "ollama")

    def edit(rel: str, old: str, new: str, subject: str) -> None:
        path = repo.path / rel
        text = path.read_text()
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new, 1))
        repo.commit(subject)

    edit("src/llama.c", '"CPU : SAMPLE = 1 | BUILD = ', '"CPU : SAMPLE = 1 | OLLAMA = 1 | BUILD = ',
         "llama: report the ollama build in system info")
    edit("ggml/src/ggml-backend.c", '"Sample CPU backend"', '"Sample CPU backend (ollama)"',
         "ggml-backend: name the ollama CPU device")
    if world.scenario.era_b_patch_conflict:
        ggml_h_text = (repo.path / "ggml/include/ggml.h").read_text()
        count_line = next(ln for ln in ggml_h_text.splitlines() if "GGML_TYPE_COUNT" in ln)
        edit("ggml/include/ggml.h", count_line,
             count_line + " // ollama: keep in sync with fs/ggml type table",
             "ggml: note the type table Ollama mirrors")
    out = tmp / "patches"
    repo.git("format-patch", "-q", "--no-signature", "--no-numbered", "--zero-commit",
             "-o", str(out), pin)
    return repo, sorted(out.glob("*.patch"))


def _ollama_b(world: World, tmp: Path) -> None:
    sc = world.scenario
    vendor, patches = _era_b_patches(world, tmp, sc.ollama_b_pin)
    fetch_head = world.tags[sc.ollama_b_pin]
    files = _ollama_common(world)
    llama_files = [str(p.relative_to(vendor.path)) for p in vendor.path.rglob("*")
                   if p.is_file() and ".git" not in p.parts]
    for src, dst in obf.vendored_files(llama_files).items():
        files[dst] = (vendor.path / src).read_text()
    common_h = files["ml/backend/ggml/ggml/src/ggml-common.h"]
    metal = files["ml/backend/ggml/ggml/src/ggml-metal/ggml-metal.metal"]
    files.update({
        ".gitignore": "llama/vendor/\nllama/patches/.*.patched\nbuild/\ndist/\n",
        "README.md": f"# Ollama {ERA_B_RELEASE} (sample world, era B)\n\nllama.cpp is vendored "
                     "and linked in through cgo.\n",
        "Makefile.sync": obf.makefile_sync(str(world.upstream), fetch_head),
        "llama/llama.cpp/.rsync-filter": obf.LLAMA_RSYNC_FILTER,
        "ml/backend/ggml/ggml/.rsync-filter": obf.GGML_RSYNC_FILTER,
        "llama/build-info.cpp.in": obf.BUILD_INFO_IN,
        "llama/build-info.cpp": obf.BUILD_INFO_IN.replace("@FETCH_HEAD@", fetch_head),
        "llama/llama.go": go_llm.LLAMA_GO_B,
        "llama/llama.cpp/src/llama.go": go_llm.LLAMA_SRC_GO,
        "ml/backend/ggml/ggml/src/ggml.go": go_llm.GGML_SRC_GO,
        "ml/backend/ggml/ggml/src/ggml-metal/metal.go": go_llm.METAL_GO,
        "ml/backend/ggml/ggml/src/ggml-metal/ggml-metal-embed.metal": common_h + metal,
        "ml/backend/ggml/ggml.go": go_llm.ML_BACKEND_GO,
        "ml/backend.go": go_llm.ML_DTYPE_GO,
        "runner/ollamarunner/cache.go": go_llm.RUNNER_CACHE_GO,
        "llm/server.go": go_llm.LLM_SERVER_B_GO,
        "fs/ggml/ggml.go": go_llm.fs_ggml_go("b"),
    })
    for p in patches:
        files[f"llama/patches/{p.name}"] = p.read_text()
    repo = Repo.init(world.ollama_b)
    repo.write(files)
    repo.commit(f"release {ERA_B_RELEASE}: vendored llama.cpp {sc.ollama_b_pin}",
                tag=ERA_B_RELEASE)
