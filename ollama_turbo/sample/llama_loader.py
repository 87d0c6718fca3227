"""The miniature llama.cpp's model loader pass, model architectures and web-UI helper, as they drift by tag.

b120 moved on from b110 the way upstream moves under Ollama's compat patches: it added an include beside
where Ollama's hook include goes, reworded a log line near a hook, indented a block that holds a hook (the
block now sits under an ``if``), registered a new model architecture (``nova``, with ``src/models/nova.cpp``)
and added the web UI's asset helper (``tools/ui/embed.cpp``). The two tensor loops are alike on every tag,
as llama.cpp's loader loops are.
"""

from __future__ import annotations

from .llama_headers import Flavour

ARCHS = ("LLAMA", "QWEN35", "GEMMA")


def llama_arch_h(fl: Flavour) -> str:
    archs = [*ARCHS, "NOVA"] if fl.build >= 120 else list(ARCHS)
    body = "\n".join(f"    LLM_ARCH_{a}," for a in archs)
    return f"""// Model architectures the miniature llama.cpp knows (ollama-turbo sample world).
#pragma once

enum llm_arch {{
{body}
    LLM_ARCH_UNKNOWN,
}};
"""


def model_loader_c(fl: Flavour) -> str:
    new = fl.build >= 120
    arch_include = '#include "llama-arch.h"\n' if new else ""
    count_line = ('fprintf(stderr, "llama_model_loader: indexed %d tensors\\n", found);' if new
                  else 'fprintf(stderr, "llama_model_loader: %d tensors\\n", found);')
    report = """    const char * base = strrchr(fname, '/');
    base = base ? base + 1 : fname;
    size_t len = strlen(base);
    fprintf(stderr, "llama_model_loader: loaded %s (%zu chars)\\n", base, len);
    fprintf(stderr, "llama_model_loader: %d tensors\\n", found);
    fflush(stderr);
"""
    if new:  # the same lines, one level deeper, under a check b120 added
        report = "    if (fname != NULL) {\n" + "".join("    " + ln + "\n" for ln in report.splitlines()) + "    }\n"
    return f"""// Miniature llama.cpp model loader pass (ollama-turbo sample world): indexes the tensors a model
// file names, as llama.cpp's loader does for the main file and then for its split files.

#include "ggml.h"
#include "llama.h"
{arch_include}
#include <stdio.h>
#include <string.h>

static int tensor_wanted(const char * name) {{
    return name != NULL && name[0] != '\\0';
}}

int llama_model_loader_count(const char * const * names, int n, int verbose) {{
    int found = 0;

    for (int i = 0; i < n; i++) {{
        const char * name = names[i];
        if (!tensor_wanted(name)) {{
            continue;
        }}
        found++;
    }}

    for (int i = 0; i < n; i++) {{
        const char * name = names[i];
        if (!tensor_wanted(name)) {{
            continue;
        }}
        found++;
    }}

    if (verbose) {{
        {count_line}
    }}
    return found;
}}

void llama_model_loader_report(const char * fname, int found) {{
{report}}}
"""


NOVA_CPP = """// The nova model architecture's graph (ollama-turbo sample world): not built by the miniature CMake.

#include "llama-arch.h"

static float nova_scale(int n_tokens) {
    float scale = 1.0f;
    if (n_tokens >= 32) {
        scale = 0.5f;
    }
    return scale;
}

int nova_graph_tokens(int n_tokens) {
    return (int) (n_tokens * nova_scale(n_tokens));
}
"""

UI_EMBED_CPP = """// The web UI's embedded assets (ollama-turbo sample world): llama-server serves them when the UI is on.

#include <cstddef>

struct ui_asset {
    const char * path;
    const unsigned char * data;
    size_t size;
};

extern const ui_asset ui_assets[];
extern const size_t ui_assets_count;

const ui_asset * ui_find(const char * path) {
    for (size_t i = 0; i < ui_assets_count; i++) {
        if (ui_assets[i].path == path) {
            return &ui_assets[i];
        }
    }
    return nullptr;
}
"""


def loader_files(fl: Flavour) -> dict[str, str]:
    """The files of this section of the tree (b120 adds the nova architecture and the web UI's helper)."""
    files = {"src/llama-arch.h": llama_arch_h(fl), "src/llama-model-loader.c": model_loader_c(fl)}
    if fl.build >= 120:
        files.update({"src/models/nova.cpp": NOVA_CPP, "tools/ui/embed.cpp": UI_EMBED_CPP})
    return files
