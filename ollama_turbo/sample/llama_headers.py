"""Headers of the miniature llama.cpp: ggml.h, gguf.h, ggml-backend.h, llama.h.

Each function takes the "flavour" of the tree (an upstream tag or the fork) and returns the
file text. The contents are small, but keep the real file paths, enum shapes and naming so
that the header model, the cgo bindings and the build mechanics meet what they meet in the
real projects.
"""

from __future__ import annotations

from dataclasses import dataclass

from .turbo_quant import Faults


@dataclass(frozen=True)
class Flavour:
    """What one miniature llama.cpp tree contains."""

    tag: str                          # upstream build tag this tree is (or is based on)
    turbo: bool = False               # the TurboQuant fork's additions
    drop_function: str | None = None  # the fork removed this llama.h function
    turbo_2026_06: bool = False       # the fork after June 2026: turbo4 66 bytes, turbo ids after Q2_0 = 42
    quantizer_faults: Faults = Faults()  # faults in the fork's quantizer tables (verify-fork scenarios)

    @property
    def build(self) -> int:
        return int(self.tag.lstrip("b"))


# ggml types shared by every tree: (suffix, id). Gaps are ids that were retired.
BASE_TYPES: list[tuple[str, int]] = [
    ("F32", 0), ("F16", 1), ("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 6), ("Q5_1", 7),
    ("Q8_0", 8), ("Q8_1", 9), ("Q2_K", 10), ("Q3_K", 11), ("Q4_K", 12), ("Q5_K", 13),
    ("Q6_K", 14), ("Q8_K", 15), ("IQ4_NL", 20), ("I8", 24), ("I16", 25), ("I32", 26),
    ("BF16", 30), ("TQ1_0", 34), ("TQ2_0", 35), ("MXFP4", 39), ("NVFP4", 40), ("Q1_0", 41),
]
# b120 appends a type; the fork independently took the same id for TURBO2_0.
UPSTREAM_B120_TYPES: list[tuple[str, int]] = [("Q2_0", 42)]
FORK_TYPES: list[tuple[str, int]] = [("TURBO2_0", 42), ("TURBO3_0", 43), ("TURBO4_0", 44)]
# Rebased on an upstream with Q2_0 = 42, the fork renumbered its types.
FORK_TYPES_2026_06: list[tuple[str, int]] = [("TURBO2_0", 43), ("TURBO3_0", 44), ("TURBO4_0", 45)]

OPS = [
    "NONE", "DUP", "ADD", "ADD1", "ACC", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "SUM",
    "MEAN", "ARGMAX", "REPEAT", "CONCAT", "NORM", "RMS_NORM", "MUL_MAT", "SCALE", "CPY",
    "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "GET_ROWS", "SOFT_MAX", "ROPE",
    "FLASH_ATTN_EXT", "UNARY", "MAP_CUSTOM1", "CUSTOM",
]


def ggml_types(fl: Flavour) -> list[tuple[str, int]]:
    types = list(BASE_TYPES)
    if fl.build >= 120:
        types += UPSTREAM_B120_TYPES
    if fl.turbo:
        types += FORK_TYPES_2026_06 if fl.turbo_2026_06 else FORK_TYPES
    return types


def ggml_ops(fl: Flavour) -> list[str]:
    ops = list(OPS)
    if fl.turbo:
        ops.insert(ops.index("UNARY"), "TURBO_WHT")
    return ops


def ggml_h(fl: Flavour) -> str:
    types = ggml_types(fl)
    type_lines = "\n".join(f"        GGML_TYPE_{n:<9}= {v}," for n, v in types)
    count = max(v for _, v in types) + 1
    op_lines = "\n".join(f"        GGML_OP_{o}," for o in ggml_ops(fl))
    turbo_fn = ""
    if fl.turbo:
        turbo_fn = """
    // TurboQuant: Walsh-Hadamard rotation of 128-value groups (direction: 1 forward, -1 inverse)
    GGML_API struct ggml_tensor * ggml_turbo_wht(
            struct ggml_context * ctx,
            struct ggml_tensor  * a,
            int                   direction);
"""
    return f"""#pragma once

// Miniature ggml public API (ollama-turbo sample world).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGML_API
#define GGML_DEPRECATED(func, hint) func __attribute__((deprecated(hint)))

#define GGML_FILE_MAGIC   0x67676d6c
#define GGML_FILE_VERSION 2
#define GGML_MAX_DIMS     4
#define GGML_MAX_NAME     64
#define GGML_MAX_SRC      10
#define GGML_DEFAULT_N_THREADS 4

#ifdef  __cplusplus
extern "C" {{
#endif

    typedef uint16_t ggml_fp16_t;

    struct ggml_context;
    struct ggml_tensor;

    enum ggml_status {{
        GGML_STATUS_ALLOC_FAILED = -2,
        GGML_STATUS_FAILED = -1,
        GGML_STATUS_SUCCESS = 0,
        GGML_STATUS_ABORTED = 1,
    }};

    // NOTE: always add types at the end of the enum to keep backward compatibility
    enum ggml_type {{
{type_lines}
        GGML_TYPE_COUNT   = {count},
    }};

    enum ggml_op {{
{op_lines}

        GGML_OP_COUNT,
    }};

    struct ggml_init_params {{
        size_t mem_size;   // bytes
        void * mem_buffer; // if NULL, memory will be allocated internally
        bool   no_alloc;   // don't allocate memory for the tensor data
    }};

    struct ggml_type_traits {{
        const char * type_name;
        int64_t      blck_size;
        size_t       type_size;
        bool         is_quantized;
    }};

    GGML_API struct ggml_context * ggml_init(struct ggml_init_params params);
    GGML_API void                  ggml_free(struct ggml_context * ctx);

    GGML_API const struct ggml_type_traits * ggml_get_type_traits(enum ggml_type type);
    GGML_API const char * ggml_type_name(enum ggml_type type);
    GGML_API const char * ggml_op_name  (enum ggml_op   op);
    GGML_API int64_t      ggml_blck_size(enum ggml_type type);
    GGML_API size_t       ggml_type_size(enum ggml_type type);
    GGML_API size_t       ggml_row_size (enum ggml_type type, int64_t ne);
    GGML_API bool         ggml_is_quantized(enum ggml_type type);
{turbo_fn}
#ifdef  __cplusplus
}}
#endif
"""


def gguf_h(fl: Flavour) -> str:
    return """#pragma once

// Miniature GGUF API (ollama-turbo sample world).

#include "ggml.h"

#include <stdbool.h>
#include <stdint.h>

#define GGUF_MAGIC   "GGUF"
#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32

#ifdef  __cplusplus
extern "C" {
#endif

    enum gguf_type {
        GGUF_TYPE_UINT8   = 0,
        GGUF_TYPE_INT8    = 1,
        GGUF_TYPE_UINT16  = 2,
        GGUF_TYPE_INT16   = 3,
        GGUF_TYPE_UINT32  = 4,
        GGUF_TYPE_INT32   = 5,
        GGUF_TYPE_FLOAT32 = 6,
        GGUF_TYPE_BOOL    = 7,
        GGUF_TYPE_STRING  = 8,
        GGUF_TYPE_ARRAY   = 9,
        GGUF_TYPE_UINT64  = 10,
        GGUF_TYPE_INT64   = 11,
        GGUF_TYPE_FLOAT64 = 12,
        GGUF_TYPE_COUNT,
    };

    struct gguf_context;

    struct gguf_init_params {
        bool no_alloc;
        struct ggml_context ** ctx;
    };

    GGML_API struct gguf_context * gguf_init_from_file(const char * fname, struct gguf_init_params params);
    GGML_API void    gguf_free(struct gguf_context * ctx);
    GGML_API int64_t gguf_get_n_kv(const struct gguf_context * ctx);
    GGML_API int64_t gguf_find_key(const struct gguf_context * ctx, const char * key);

#ifdef  __cplusplus
}
#endif
"""


def ggml_backend_h(fl: Flavour) -> str:
    return """#pragma once

// Miniature ggml backend device API (ollama-turbo sample world).

#include "ggml.h"

#ifdef  __cplusplus
extern "C" {
#endif

    typedef struct ggml_backend_device * ggml_backend_dev_t;

    enum ggml_backend_dev_type {
        GGML_BACKEND_DEVICE_TYPE_CPU,
        GGML_BACKEND_DEVICE_TYPE_GPU,
        GGML_BACKEND_DEVICE_TYPE_ACCEL,
    };

    struct ggml_backend_dev_props {
        const char * name;
        const char * description;
        size_t memory_free;
        size_t memory_total;
        enum ggml_backend_dev_type type;
    };

    GGML_API size_t             ggml_backend_dev_count(void);
    GGML_API ggml_backend_dev_t ggml_backend_dev_get(size_t index);
    GGML_API void               ggml_backend_dev_get_props(ggml_backend_dev_t device, struct ggml_backend_dev_props * props);

#ifdef  __cplusplus
}
#endif
"""


def llama_h(fl: Flavour) -> str:
    turbo_ftypes = ""
    if fl.turbo:
        turbo_ftypes = """        LLAMA_FTYPE_MOSTLY_TURBO3_0      = 40, // KV-cache experiments only
        LLAMA_FTYPE_MOSTLY_TURBO4_0      = 41, // KV-cache experiments only
"""
    kv_unified = "        bool kv_unified;  // use a unified buffer across the input sequences\n" \
        if fl.build >= 110 else ""
    n_ctx_decl = "    LLAMA_API uint32_t llama_n_ctx(const struct llama_context * ctx);\n"
    extra = ""
    if fl.build >= 110:
        n_ctx_decl = ("    DEPRECATED(LLAMA_API uint32_t llama_n_ctx(const struct llama_context * ctx),\n"
                      "            \"use llama_n_ctx_seq instead\");\n")
        extra = "    LLAMA_API uint32_t llama_n_ctx_seq(const struct llama_context * ctx);\n"
    functions = {
        "llama_backend_init": "    LLAMA_API void llama_backend_init(void);\n",
        "llama_backend_free": "    LLAMA_API void llama_backend_free(void);\n",
        "llama_model_default_params":
            "    LLAMA_API struct llama_model_params   llama_model_default_params(void);\n",
        "llama_context_default_params":
            "    LLAMA_API struct llama_context_params llama_context_default_params(void);\n",
        "llama_model_load_from_file":
            "    LLAMA_API struct llama_model * llama_model_load_from_file(\n"
            "                             const char * path_model,\n"
            "              struct llama_model_params   params);\n",
        "llama_model_free": "    LLAMA_API void llama_model_free(struct llama_model * model);\n",
        "llama_init_from_model":
            "    LLAMA_API struct llama_context * llama_init_from_model(\n"
            "                     struct llama_model * model,\n"
            "            struct llama_context_params   params);\n",
        "llama_free": "    LLAMA_API void llama_free(struct llama_context * ctx);\n",
        "llama_n_ctx": n_ctx_decl,
        "llama_model_n_layer":
            "    LLAMA_API int32_t llama_model_n_layer(const struct llama_model * model);\n",
        "llama_tokenize":
            "    LLAMA_API int32_t llama_tokenize(\n"
            "        const struct llama_context * ctx,\n"
            "                      const char * text,\n"
            "                     llama_token * tokens,\n"
            "                         int32_t   n_tokens_max);\n",
        "llama_generate":
            "    // Generate up to n_predict tokens after prompt; writes text into buf.\n"
            "    LLAMA_API int32_t llama_generate(\n"
            "              struct llama_context * ctx,\n"
            "                        const char * prompt,\n"
            "                           int32_t   n_predict,\n"
            "                              char * buf,\n"
            "                           int32_t   buf_size,\n"
            "              llama_piece_callback   callback,\n"
            "                              void * user_data,\n"
            "        struct llama_perf_context_data * perf);\n",
        "llama_state_get_size":
            "    LLAMA_API size_t llama_state_get_size(struct llama_context * ctx);\n",
        "llama_print_system_info": "    LLAMA_API const char * llama_print_system_info(void);\n",
    }
    if fl.drop_function:
        functions.pop(fl.drop_function, None)
    fn_text = "".join(functions.values()) + extra
    return f"""#pragma once

// Miniature llama.cpp public API (ollama-turbo sample world).

#include "ggml.h"
#include "ggml-backend.h"

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define LLAMA_API
#define DEPRECATED(func, hint) func __attribute__((deprecated(hint)))

#define LLAMA_DEFAULT_SEED 0xFFFFFFFF
#define LLAMA_TOKEN_NULL -1
#define LLAMA_FILE_MAGIC_GGSN 0x6767736eu // 'ggsn'
#define LLAMA_SESSION_MAGIC   LLAMA_FILE_MAGIC_GGSN
#define LLAMA_SESSION_VERSION 9
#define LLAMA_BUILD_TAG "{fl.tag}"

#ifdef __cplusplus
extern "C" {{
#endif

    struct llama_model;
    struct llama_context;

    typedef int32_t llama_pos;
    typedef int32_t llama_token;
    typedef int32_t llama_seq_id;

    // model file types
    enum llama_ftype {{
        LLAMA_FTYPE_ALL_F32              = 0,
        LLAMA_FTYPE_MOSTLY_F16           = 1,
        LLAMA_FTYPE_MOSTLY_Q4_0          = 2,
        LLAMA_FTYPE_MOSTLY_Q4_1          = 3,
        LLAMA_FTYPE_MOSTLY_Q8_0          = 7,
        LLAMA_FTYPE_MOSTLY_Q5_0          = 8,
        LLAMA_FTYPE_MOSTLY_Q5_1          = 9,
        LLAMA_FTYPE_MOSTLY_BF16          = 32,
{turbo_ftypes}
        LLAMA_FTYPE_GUESSED = 1024, // not specified in the model file
    }};

    enum llama_flash_attn_type {{
        LLAMA_FLASH_ATTN_TYPE_AUTO     = -1,
        LLAMA_FLASH_ATTN_TYPE_DISABLED = 0,
        LLAMA_FLASH_ATTN_TYPE_ENABLED  = 1,
    }};

    struct llama_model_params {{
        int32_t n_gpu_layers; // number of layers to store in VRAM
        bool use_mmap;        // use mmap if possible
        bool use_mlock;       // force system to keep model in RAM
        bool vocab_only;      // only load the vocabulary, no weights
    }};

    struct llama_context_params {{
        uint32_t n_ctx;             // text context, 0 = from model
        uint32_t n_batch;           // logical maximum batch size
        uint32_t n_ubatch;          // physical maximum batch size
        uint32_t n_seq_max;         // max number of sequences
        int32_t  n_threads;         // number of threads to use for generation
        enum llama_flash_attn_type flash_attn_type;
        enum ggml_type type_k;      // data type for K cache
        enum ggml_type type_v;      // data type for V cache
        bool embeddings;            // extract embeddings
        bool offload_kqv;           // offload the KQV ops (including the KV cache) to GPU
{kv_unified}    }};

    // called with each generated piece of text; return false to stop
    typedef bool (*llama_piece_callback)(const char * piece, void * user_data);

    struct llama_perf_context_data {{
        double t_p_eval_ms;
        double t_eval_ms;
        int32_t n_p_eval;
        int32_t n_eval;
    }};

{fn_text}
#ifdef __cplusplus
}}
#endif
"""
