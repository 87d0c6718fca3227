"""Build machinery of the miniature Ollama trees: era C CMake, era B Makefile.sync."""

from __future__ import annotations

import json


def server_cmakelists(upstream_url: str) -> str:
    return f"""cmake_minimum_required(VERSION 3.24)
project(ollama_llama_server C CXX)

# Builds llama.cpp's llama-server for Ollama (sample world).
# The llama.cpp tag comes from LLAMA_CPP_VERSION; -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP=<dir>
# builds from a local tree instead. Ollama's compat patches are applied either way.

file(READ "${{CMAKE_CURRENT_SOURCE_DIR}}/../../LLAMA_CPP_VERSION" LLAMA_CPP_VERSION)
string(STRIP "${{LLAMA_CPP_VERSION}}" LLAMA_CPP_VERSION)
set(LLAMA_CPP_GIT_REPOSITORY "{upstream_url}" CACHE STRING "where to fetch llama.cpp from")

include(FetchContent)
FetchContent_Declare(llama_cpp
    GIT_REPOSITORY "${{LLAMA_CPP_GIT_REPOSITORY}}"
    GIT_TAG        "${{LLAMA_CPP_VERSION}}"
    SOURCE_SUBDIR  do-not-add)
FetchContent_MakeAvailable(llama_cpp)
message(STATUS "llama.cpp ${{LLAMA_CPP_VERSION}} sources: ${{llama_cpp_SOURCE_DIR}}")

include(${{CMAKE_CURRENT_SOURCE_DIR}}/../compat/apply-patch.cmake)
file(GLOB_RECURSE OLLAMA_COMPAT_PATCHES "${{CMAKE_CURRENT_SOURCE_DIR}}/../compat/*.patch")
list(SORT OLLAMA_COMPAT_PATCHES)
foreach(patch IN LISTS OLLAMA_COMPAT_PATCHES)
    ollama_apply_patch("${{patch}}" "${{llama_cpp_SOURCE_DIR}}")
endforeach()

set(LLAMA_BUILD_COMMON ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_TOOLS ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_SERVER ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
add_subdirectory(${{llama_cpp_SOURCE_DIR}} ${{llama_cpp_BINARY_DIR}})

# Ollama's own compat sources, linked into llama.cpp's llama library (the patches add their call sites).
file(GLOB OLLAMA_COMPAT_SOURCES "${{CMAKE_CURRENT_SOURCE_DIR}}/../compat/*.c")
if(OLLAMA_COMPAT_SOURCES)
    target_sources(llama PRIVATE ${{OLLAMA_COMPAT_SOURCES}})
    target_include_directories(llama PRIVATE "${{CMAKE_CURRENT_SOURCE_DIR}}/../compat")
endif()

install(TARGETS llama-server RUNTIME DESTINATION lib/ollama COMPONENT llama-server)
"""


APPLY_PATCH_CMAKE = """# ollama_apply_patch(PATCH SOURCE_DIR): apply one compat patch to the llama.cpp sources.
# A patch that is already applied (its reverse applies) is skipped, so configuring twice
# is harmless; a patch that does not apply stops the configure.

find_package(Git REQUIRED)

function(ollama_apply_patch patch source_dir)
    get_filename_component(name "${patch}" NAME)
    execute_process(
        COMMAND "${GIT_EXECUTABLE}" apply --reverse --check "${patch}"
        WORKING_DIRECTORY "${source_dir}"
        RESULT_VARIABLE already OUTPUT_QUIET ERROR_QUIET)
    if(already EQUAL 0)
        message(STATUS "compat patch already applied: ${name}")
        return()
    endif()
    execute_process(
        COMMAND "${GIT_EXECUTABLE}" apply --whitespace=nowarn "${patch}"
        WORKING_DIRECTORY "${source_dir}"
        RESULT_VARIABLE rc ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "compat patch ${name} does not apply to ${source_dir}:\\n${err}")
    endif()
    message(STATUS "applied compat patch: ${name}")
endfunction()
"""


def server_presets() -> str:
    base = {"CMAKE_BUILD_TYPE": "Release", "GGML_NATIVE": "OFF", "LLAMA_CURL": "OFF",
            "LLAMA_OPENSSL": "OFF", "LLAMA_USE_PREBUILT_UI": "OFF", "LLAMA_BUILD_TESTS": "OFF",
            "LLAMA_BUILD_EXAMPLES": "OFF", "BUILD_SHARED_LIBS": "OFF"}
    presets = [
        {"name": "base", "hidden": True, "cacheVariables": base},
        {"name": "cpu", "inherits": "base", "displayName": "CPU"},
        {"name": "darwin", "inherits": "base", "displayName": "macOS (Metal, embedded library)",
         "cacheVariables": {"GGML_METAL": "ON", "GGML_METAL_EMBED_LIBRARY": "ON",
                            "BUILD_SHARED_LIBS": "OFF"}},
        {"name": "llama_cuda_v12_linux", "inherits": "base", "displayName": "CUDA 12",
         "cacheVariables": {"GGML_CUDA": "ON", "CMAKE_CUDA_ARCHITECTURES": "50;60;70;75;80;86;89;90"}},
        {"name": "llama_cuda_v13_linux", "inherits": "base", "displayName": "CUDA 13",
         "cacheVariables": {"GGML_CUDA": "ON", "CMAKE_CUDA_ARCHITECTURES": "75;80;86;89;90;100;120"}},
        {"name": "rocm_v7_2_linux", "inherits": "base", "displayName": "ROCm 7.2",
         "cacheVariables": {"GGML_HIP": "ON"}},
        {"name": "vulkan", "inherits": "base", "displayName": "Vulkan",
         "cacheVariables": {"GGML_VULKAN": "ON"}},
    ]
    return json.dumps({"version": 3, "configurePresets": presets}, indent=2) + "\n"


LLAMA_RSYNC_FILTER = """protect .rsync-filter
protect *.go
include /include/
include /include/llama.h
include /src/
include /src/llama.c
include /src/llama-model-loader.c
include /src/llama-arch.h
include /common/
include /common/arg.h
include /common/arg.cpp
include /LICENSE
exclude *
"""

GGML_RSYNC_FILTER = """protect .rsync-filter
protect *.go
protect /src/ggml-metal/ggml-metal-embed.metal
include /include/
include /include/ggml.h
include /include/gguf.h
include /include/ggml-backend.h
include /src/
include /src/ggml.c
include /src/ggml-backend.c
include /src/ggml-common.h
include /src/ggml-metal/
include /src/ggml-metal/ggml-metal.metal
exclude *
"""

# (source path in llama.cpp, destination in the Ollama tree), as the filters select them.
def vendored_files(llama_files: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    llama_sel = {"include/llama.h", "src/llama.c", "src/llama-model-loader.c", "src/llama-arch.h", "common/arg.h",
                 "common/arg.cpp", "LICENSE"}
    ggml_sel = {"include/ggml.h", "include/gguf.h", "include/ggml-backend.h", "src/ggml.c",
                "src/ggml-backend.c", "src/ggml-common.h", "src/ggml-metal/ggml-metal.metal"}
    for f in llama_files:
        if f in llama_sel:
            out[f] = f"llama/llama.cpp/{f}"
        if f.startswith("ggml/") and f[len("ggml/"):] in ggml_sel:
            out[f] = f"ml/backend/ggml/ggml/{f[len('ggml/'):]}"
    return out


def makefile_sync(upstream_url: str, fetch_head: str) -> str:
    return f"""# Keeps the vendored llama.cpp in llama/llama.cpp and ml/backend/ggml/ggml in step with
# upstream (sample world).
#
#   make -f Makefile.sync clean apply-patches sync    re-vendor FETCH_HEAD plus llama/patches
#   make -f Makefile.sync format-patches              write WORKDIR's commits back as patches

UPSTREAM={upstream_url}
WORKDIR=llama/vendor
FETCH_HEAD={fetch_head}

.PHONY: help
help:
\t@echo "targets: sync apply-patches format-patches clean"

.PHONY: sync
sync: llama/build-info.cpp ml/backend/ggml/ggml/src/ggml-metal/ggml-metal-embed.metal

llama/build-info.cpp: llama/build-info.cpp.in llama/llama.cpp
\tsed -e 's|@FETCH_HEAD@|$(FETCH_HEAD)|' <$< >$@

ml/backend/ggml/ggml/src/ggml-metal/ggml-metal-embed.metal: ml/backend/ggml/ggml
\tgo generate ./$(@D)

.PHONY: llama/llama.cpp
llama/llama.cpp: $(WORKDIR)
\trsync -arc --delete -f "merge $@/.rsync-filter" $(WORKDIR)/ $@

.PHONY: ml/backend/ggml/ggml
ml/backend/ggml/ggml: $(WORKDIR)
\trsync -arc --delete -f "merge $@/.rsync-filter" $(WORKDIR)/ggml/ $@

PATCHES=$(wildcard llama/patches/*.patch)
PATCHED=$(join $(dir $(PATCHES)), $(addsuffix ed, $(addprefix ., $(notdir $(PATCHES)))))

.PHONY: apply-patches
.NOTPARALLEL:
apply-patches: $(PATCHED)

llama/patches/.%.patched: llama/patches/%.patch
\t@if git -c user.name=ollama -c user.email=ollama@localhost -C $(WORKDIR) am -3 $(realpath $<); then \\
\t\ttouch $@; \\
\telse \\
\t\techo "patch $< does not apply; resolve in $(WORKDIR), then git -C $(WORKDIR) am --continue" >&2; \\
\t\texit 1; \\
\tfi

.PHONY: checkout
checkout: $(WORKDIR)
\tgit -C $(WORKDIR) fetch -q
\tgit -C $(WORKDIR) checkout -q -f $(FETCH_HEAD)

$(WORKDIR):
\tgit clone -q $(UPSTREAM) $(WORKDIR)

.PHONY: format-patches
format-patches: llama/patches
\tgit -C $(WORKDIR) format-patch --no-signature --no-numbered --zero-commit -o $(realpath $<) $(FETCH_HEAD)

.PHONY: clean
clean: checkout
\t@git -C $(WORKDIR) am --abort 2>/dev/null || true
\t$(RM) llama/patches/.*.patched
"""


BUILD_INFO_IN = """int LLAMA_BUILD_NUMBER = 0;
char const * LLAMA_COMMIT = "@FETCH_HEAD@";
char const * LLAMA_COMPILER = "";
char const * LLAMA_BUILD_TARGET = "";
"""
