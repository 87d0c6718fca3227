"""The edits a build makes to Ollama's Go sources, per era, as anchored rules.

Era C: ``kvCacheBytesPerElement`` learns the fork's cache types (bytes per element from the
fork's block formats) so Ollama's memory estimate is right; flags Ollama always passes but
the fork lacks are dropped from the llama-server argv (loudly).
Era B: additionally the three allowlists (``SupportsKVCacheType``, ``llama/llama.go``
``kvCacheTypeFromStr`` mapping names to the fork's ``GGML_TYPE_*`` constants, and the Go
engine's ``kvCacheTypeFromStr``), so Ollama stops silently falling back to f16.
"""

from __future__ import annotations

import re

from ollama_turbo.core.rules import Rule
from ollama_turbo.fork.blocks import Block

MARK = "added by ollama-turbo"


def _num(x: float) -> str:
    return repr(float(x)).rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def kv_bytes_rules(blocks: list[Block]) -> list[Rule]:
    return [Rule(
        name=f"kv-bytes-{b.name}", file="fs/ggml/ggml.go", function="kvCacheBytesPerElement",
        anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
        text=f'\tcase "{b.name}":\n\t\treturn {_num(b.bytes_per_element)} // {b.size} bytes per {b.block} '
             f"values ({MARK})\n",
        expect=rf'^\s*case "{re.escape(b.name)}":', why=f"memory estimate for {b.name}: "
        f"{b.size} B / {b.block} values = {_num(b.bytes_per_element)} bytes per element")
        for b in blocks]


def drop_flag_rules(flags: list[str]) -> list[Rule]:
    return [Rule(
        name=f"drop-flag{f}", file="llm/llama_server.go", anchor=rf'^\s*"{re.escape(f)}",[^\n]*$',
        action="delete_line", expect=None,
        why=f"the fork's llama-server does not define {f}, which Ollama always passes") for f in flags]


def era_b_rules(blocks: list[Block]) -> list[Rule]:
    names = ", ".join(f'"{b.name}"' for b in blocks)
    rules = [Rule(
        name="supports-kv-cache-type", file="fs/ggml/ggml.go", function="SupportsKVCacheType",
        anchor=r"\[\]string\{([^}]*)\}", action="replace", text=rf"[]string{{\1, {names}}}",
        why=f"accept {', '.join(b.name for b in blocks)} in OLLAMA_KV_CACHE_TYPE")]
    for b in blocks:
        rules.append(Rule(
            name=f"llama-kv-type-{b.name}", file="llama/llama.go", function="kvCacheTypeFromStr",
            anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
            text=f'\tcase "{b.name}":\n\t\treturn C.{b.ggml_type} // {MARK}\n',
            expect=rf"return C\.{b.ggml_type}\b", why=f"map {b.name} to the fork's {b.ggml_type}"))
    const_names = [f"DType{b.name.capitalize()}" for b in blocks]
    rules.append(Rule(
        name="ml-dtypes", file="ml/backend.go", anchor=r"^(\s*)DTypeQ40\s*$", action="insert_after",
        text="".join(f"\t{n} // {MARK}\n" for n in const_names),
        why="cache types for the Go engine"))
    for b, n in zip(blocks, const_names, strict=True):
        rules.append(Rule(
            name=f"engine-kv-type-{b.name}", file="runner/ollamarunner/cache.go", function="kvCacheTypeFromStr",
            anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
            text=f'\tcase "{b.name}":\n\t\treturn ml.{n} // {MARK}\n',
            expect=rf"return ml\.{n}\b", why=f"the Go engine's cache type for {b.name}"))
    return rules
