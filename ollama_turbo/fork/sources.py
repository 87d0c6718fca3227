"""What the fork's own sources say: its flags, its cache-type names (read, never assumed)."""

from __future__ import annotations

import re
from pathlib import Path

# The parts of a llama.cpp tree that api-check and build-ollama read.
FORK_PATHS = ["include", "ggml/include", "common/arg.cpp", "ggml/src/ggml.c"]


def read_fork_sources(fork_dir: Path) -> tuple[str, str]:
    """The fork's ``common/arg.cpp`` and ``ggml/src/ggml.c`` ("" for a file it lacks)."""
    texts = []
    for rel in ("common/arg.cpp", "ggml/src/ggml.c"):
        p = fork_dir / rel
        texts.append(p.read_text(errors="replace") if p.exists() else "")
    return texts[0], texts[1]


def fork_flags(arg_cpp: str) -> set[str]:
    """Every flag name in llama.cpp's ``common/arg.cpp`` option table: each option's names, and its negated
    names where it has them (``common_arg({"--webui"}, {"--no-webui"}, ...)``)."""
    names: set[str] = set()
    for m in re.finditer(r"common_arg\(\s*\{([^}]*)\}(?:\s*,\s*\{([^}]*)\})?", arg_cpp):
        names.update(re.findall(r'"(-[^"]+)"', m.group(1)))
        negated = re.findall(r'"([^"]*)"', m.group(2) or "")
        if negated and all(n.startswith("-") for n in negated):
            names.update(negated)
    return names


def fork_cache_types(arg_cpp: str, ggml_c: str) -> list[str]:
    """The names ``--cache-type-k`` accepts: the kv_cache_types list, named by ggml's type table."""
    m = re.search(r"kv_cache_types\s*=\s*\{([^}]*)\}", arg_cpp)
    if not m:
        return []
    names = dict(re.findall(r"\[GGML_TYPE_(\w+)\]\s*=\s*\{[^}]*?\.type_name\s*=\s*\"([^\"]+)\"", ggml_c,
                            re.S))
    return [names.get(t, t.lower()) for t in re.findall(r"GGML_TYPE_(\w+)", m.group(1))]
