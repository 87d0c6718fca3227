"""The sample Ollama's llama.cpp compat layer (era C, from v0.32.0): sources of its own, and patches that add
call sites to the llama.cpp it pins, made the way Ollama makes them (edit the pinned tree, ``git diff``).

- ``0002-llama-cpp-hooks.patch``: five call sites in ``src/llama-model-loader.c``, insertions only.
- ``0003-llama-cpp-ui-empty-assets.patch``: an empty asset table for the web UI's ``tools/ui/embed.cpp``.
- ``models/0004-llama-cpp-nova-tokens.patch``: a fix to the ``nova`` architecture's graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

COMPAT_H = """// Ollama's llama.cpp compat hooks (sample world): called from the call sites its patch adds.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

int  llama_ollama_compat_skip(const char * tensor_name);
void llama_ollama_compat_loaded(int found);
void llama_ollama_compat_report(const char * model_file);

#ifdef __cplusplus
}
#endif
"""

COMPAT_C = """// Ollama's llama.cpp compat layer (sample world): hides Ollama-only tensors from the loader and says so.
#include "llama-ollama-compat.h"

#include <stdio.h>
#include <string.h>

static int hidden = 0;

int llama_ollama_compat_skip(const char * tensor_name) {
    if (tensor_name && strncmp(tensor_name, "ollama.", 7) == 0) {
        hidden++;
        return 1;
    }
    return 0;
}

void llama_ollama_compat_loaded(int found) {
    fprintf(stderr, "ollama compat: loader hooks ran: %d tensors kept, %d hidden\\n", found, hidden);
}

void llama_ollama_compat_report(const char * model_file) {
    fprintf(stderr, "ollama compat: translated the metadata of %s\\n", model_file);
}
"""

Edit = Callable[[str], str]


def _after(anchor: str, new: str, nth: int = 1) -> Edit:
    """Insert ``new`` (whole lines) after the ``nth`` line equal to ``anchor``."""
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        seen = 0
        for i, line in enumerate(lines):
            if line.rstrip("\n") == anchor:
                seen += 1
                if seen == nth:
                    return "".join(lines[:i + 1]) + new + "".join(lines[i + 1:])
        raise AssertionError(f"sample world: no line {anchor!r} (#{nth})")
    return edit


def _before(anchor: str, new: str) -> Edit:
    def edit(text: str) -> str:
        assert text.count(anchor) == 1, anchor
        return text.replace(anchor, new + anchor)
    return edit


HOOK_EDITS: list[Edit] = [
    _after('#include "llama-arch.h"', '#include "llama-ollama-compat.h"\n'),
    _after("        const char * name = names[i];",
           "        if (llama_ollama_compat_skip(name)) {\n            continue;\n        }\n", nth=1),
    _after("        const char * name = names[i];",
           "        if (llama_ollama_compat_skip(name)) {\n            continue;\n        }\n", nth=2),
    _before("    return found;\n", "    llama_ollama_compat_loaded(found);\n"),
    _after("        size_t len = strlen(base);", "        llama_ollama_compat_report(base);\n"),
]

UI_EDIT: Edit = _after("extern const size_t ui_assets_count;",
                       "\n#ifdef LLAMA_UI_EMPTY_ASSETS\nconst ui_asset ui_assets[] = {{nullptr, nullptr, 0}};\n"
                       "const size_t ui_assets_count = 0;\n#endif\n")

NOVA_EDIT: Edit = _after("    if (n_tokens >= 32) {",
                         "        // long prompts overflow the fused tiles: scale down first\n")


def edit_file(root: Path, rel: str, edits: list[Edit]) -> None:
    path = root / rel
    text = path.read_text()
    for e in edits:
        text = e(text)
    path.write_text(text)


def compat_edits() -> dict[str, tuple[str, list[Edit]]]:
    """Patch name -> (the file it changes, the edits), for an Ollama that pins b120."""
    return {"0002-llama-cpp-hooks.patch": ("src/llama-model-loader.c", HOOK_EDITS),
            "0003-llama-cpp-ui-empty-assets.patch": ("tools/ui/embed.cpp", [UI_EDIT]),
            "models/0004-llama-cpp-nova-tokens.patch": ("src/models/nova.cpp", [NOVA_EDIT])}
