"""Block formats of a fork's cache types, read from its own sources.

``ggml/src/ggml.c`` names each type and gives ``.blck_size`` and ``.type_size`` (usually a
macro and ``sizeof(block_x)``); clang evaluates both against ``ggml-common.h``. Nothing is
hard-coded, so a fork that changes a block layout is followed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core import capi
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.sources import Checkout
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable

TRAIT = re.compile(r"^[ \t]*\[GGML_TYPE_(\w+)\]\s*=\s*\{(.*?)\n\s*\}", re.S | re.M)


@dataclass(frozen=True)
class Block:
    name: str        # cache type name, e.g. turbo4
    ggml_type: str   # GGML_TYPE_TURBO4_0
    block: int       # values per block
    size: int        # bytes per block

    @property
    def bytes_per_element(self) -> float:
        return self.size / self.block


def traits(ggml_c: str) -> dict[str, tuple[str, str, str]]:
    """type name -> (GGML_TYPE_ suffix, blck_size expression, type_size expression)."""
    out = {}
    for m in TRAIT.finditer(ggml_c):
        body = m.group(2)
        name = re.search(r'\.type_name\s*=\s*"([^"]+)"', body)
        blck = re.search(r"\.blck_size\s*=\s*([^,\n]+)", body)
        size = re.search(r"\.type_size\s*=\s*([^,\n]+)", body)
        if name and blck and size:
            out[name.group(1)] = (m.group(1), blck.group(1).strip(), size.group(1).strip())
    return out


def derive(fork_dir: Path, names: list[str]) -> dict[str, Block]:
    """Block size and bytes of each cache type in ``names``, evaluated by clang."""
    ggml_c = fork_dir / "ggml/src/ggml.c"
    if not ggml_c.is_file():
        raise TurboError(f"{ggml_c} not found: cannot read the fork's type table")
    table = traits(ggml_c.read_text(errors="replace"))
    missing = [n for n in names if n not in table]
    if missing:
        raise TurboError(f"{ggml_c}: no type named {', '.join(missing)} in its type table (type_traits: "
                         "[GGML_TYPE_X] = { .type_name, .blck_size, .type_size }); cannot read the block formats",
                         hint="is this llama.cpp's ggml.c? the fork may have moved its type table")
    enum = "".join(f"    __turbo_blck_{i} = ({table[n][1]}),\n    __turbo_size_{i} = ({table[n][2]}),\n"
                   for i, n in enumerate(names))
    code = (
        "#define GGML_COMMON_DECL_C\n#define GGML_COMMON_IMPL_C\n"
        '#include "ggml.h"\n#include "ggml-common.h"\n'
        f"enum __turbo_blocks {{\n{enum}}};\n")
    values: dict[str, int] = {}
    from clang import cindex

    with capi.parsed(code, [fork_dir / "ggml/include", fork_dir / "ggml/src"]) as tu:
        for c in tu.cursor.walk_preorder():
            if c.kind == cindex.CursorKind.ENUM_CONSTANT_DECL and c.spelling.startswith("__turbo_"):
                values[c.spelling] = c.enum_value
    return {n: Block(n, "GGML_TYPE_" + table[n][0], values[f"__turbo_blck_{i}"], values[f"__turbo_size_{i}"])
            for i, n in enumerate(names)}


def block_table(fork_dir: Path, names: list[str], source: str) -> BlockTable:
    """A block table with the formats of ``names`` as the fork at ``fork_dir`` defines them."""
    if not names:
        raise TurboError(f"{source}: common/arg.cpp has no KV cache type list (kv_cache_types)",
                         hint="is this a llama.cpp tree?")
    found = derive(fork_dir, names)
    return BUILTIN.with_blocks({b.name: (b.block, b.size) for b in found.values()}, source)


def table_for_checkout(fork: Checkout) -> BlockTable:
    """The block formats of every cache type a fork checkout accepts, read from its sources at its ref."""
    import tempfile

    from ollama_turbo.fork import sources as fork_sources

    with tempfile.TemporaryDirectory(prefix="turbo-blocks-") as tmp:
        d = fork.export(Path(tmp), [*fork_sources.FORK_PATHS, "ggml/src"])
        arg_cpp, ggml_c = fork_sources.read_fork_sources(d)
        names = fork_sources.fork_cache_types(arg_cpp, ggml_c)
        return block_table(d, names, f"the fork {fork.url} @ {fork.ref} ({fork.short})")
