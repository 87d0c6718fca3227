"""Implementation files of the miniature llama.cpp (C, C++, CMake, Metal)."""

from __future__ import annotations

from .llama_headers import Flavour, ggml_ops, ggml_types
from .perplexity import PERPLEXITY_ARGS

# (ggml type suffix, name, block size, size expression) for every type the trees know.
_TRAITS: dict[str, tuple[str, str, str]] = {
    "F32": ("f32", "1", "sizeof(float)"),
    "F16": ("f16", "1", "sizeof(ggml_half)"),
    "Q4_0": ("q4_0", "QK4_0", "sizeof(block_q4_0)"),
    "Q4_1": ("q4_1", "QK4_1", "sizeof(block_q4_1)"),
    "Q5_0": ("q5_0", "QK5_0", "sizeof(block_q5_0)"),
    "Q5_1": ("q5_1", "QK5_1", "sizeof(block_q5_1)"),
    "Q8_0": ("q8_0", "QK8_0", "sizeof(block_q8_0)"),
    "Q8_1": ("q8_1", "QK8_1", "sizeof(block_q8_1)"),
    "Q2_K": ("q2_K", "QK_K", "84"),
    "Q3_K": ("q3_K", "QK_K", "110"),
    "Q4_K": ("q4_K", "QK_K", "144"),
    "Q5_K": ("q5_K", "QK_K", "176"),
    "Q6_K": ("q6_K", "QK_K", "210"),
    "Q8_K": ("q8_K", "QK_K", "292"),
    "IQ4_NL": ("iq4_nl", "QK4_NL", "sizeof(block_iq4_nl)"),
    "I8": ("i8", "1", "sizeof(int8_t)"),
    "I16": ("i16", "1", "sizeof(int16_t)"),
    "I32": ("i32", "1", "sizeof(int32_t)"),
    "BF16": ("bf16", "1", "sizeof(uint16_t)"),
    "TQ1_0": ("tq1_0", "QK_K", "54"),
    "TQ2_0": ("tq2_0", "QK_K", "66"),
    "MXFP4": ("mxfp4", "32", "17"),
    "NVFP4": ("nvfp4", "16", "9"),
    "Q1_0": ("q1_0", "32", "6"),
    "Q2_0": ("q2_0", "32", "10"),
    "TURBO2_0": ("turbo2", "QK_TURBO2", "sizeof(block_turbo2_0)"),
    "TURBO3_0": ("turbo3", "QK_TURBO3", "sizeof(block_turbo3_0)"),
    "TURBO4_0": ("turbo4", "QK_TURBO4", "sizeof(block_turbo4_0)"),
}

# Cache types llama-server accepts (order as in the flag help).
KV_CACHE_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1"]
FORK_KV_CACHE_TYPES = ["TURBO2_0", "TURBO3_0", "TURBO4_0"]


TURBO4_2026_05 = """typedef struct {
    ggml_half norm;
    ggml_half rnorm;             // residual norm
    uint8_t   qs[QK_TURBO4/2];   // 4-bit indices
} block_turbo4_0;
static_assert(sizeof(block_turbo4_0) == 2*sizeof(ggml_half) + QK_TURBO4/2, "wrong turbo4 block size");
"""
# June 2026: the unused residual norm is gone, 66 bytes per 128 values (4.125 bits).
TURBO4_2026_06 = """typedef struct {
    ggml_half norm;
    uint8_t   qs[QK_TURBO4/2];   // 4-bit indices
} block_turbo4_0;
static_assert(sizeof(block_turbo4_0) == sizeof(ggml_half) + QK_TURBO4/2, "wrong turbo4 block size");
"""


def ggml_common_h(fl: Flavour) -> str:
    turbo = ""
    if fl.turbo:
        turbo = """
// TurboQuant: WHT-rotated, Lloyd-Max codebook, one fp16 norm per 128 values.
#define QK_TURBO2 128
typedef struct {
    ggml_half norm;
    uint8_t   qs[QK_TURBO2/4];   // 2-bit indices
} block_turbo2_0;
static_assert(sizeof(block_turbo2_0) == sizeof(ggml_half) + QK_TURBO2/4, "wrong turbo2 block size");

#define QK_TURBO3 128
typedef struct {
    ggml_half norm;
    uint8_t   qs[QK_TURBO3*3/8]; // 3-bit indices
} block_turbo3_0;
static_assert(sizeof(block_turbo3_0) == sizeof(ggml_half) + QK_TURBO3*3/8, "wrong turbo3 block size");

#define QK_TURBO4 128
""" + (TURBO4_2026_06 if fl.turbo_2026_06 else TURBO4_2026_05)
    return f"""#pragma once

// Block formats of the quantized types (ollama-turbo sample world).

#include <assert.h>
#include <stdint.h>

#ifndef __cplusplus
#define static_assert _Static_assert
#endif

typedef uint16_t ggml_half;

#define QK_K 256

#define QK4_0 32
typedef struct {{
    ggml_half d;
    uint8_t qs[QK4_0 / 2];
}} block_q4_0;

#define QK4_1 32
typedef struct {{
    ggml_half d;
    ggml_half m;
    uint8_t qs[QK4_1 / 2];
}} block_q4_1;

#define QK5_0 32
typedef struct {{
    ggml_half d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
}} block_q5_0;

#define QK5_1 32
typedef struct {{
    ggml_half d;
    ggml_half m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
}} block_q5_1;

#define QK8_0 32
typedef struct {{
    ggml_half d;
    int8_t  qs[QK8_0];
}} block_q8_0;

#define QK8_1 32
typedef struct {{
    ggml_half d;
    ggml_half s;
    int8_t qs[QK8_1];
}} block_q8_1;

#define QK4_NL 32
typedef struct {{
    ggml_half d;
    uint8_t qs[QK4_NL/2];
}} block_iq4_nl;
{turbo}"""


def ggml_c(fl: Flavour) -> str:
    rows = []
    for suffix, _ in ggml_types(fl):
        name, blck, size = _TRAITS[suffix]
        quant = "false" if blck == "1" else "true"
        rows.append(
            f"    [GGML_TYPE_{suffix}] = {{\n"
            f"        .type_name    = \"{name}\",\n"
            f"        .blck_size    = {blck},\n"
            f"        .type_size    = {size},\n"
            f"        .is_quantized = {quant},\n"
            f"    }},"
        )
    ops = "\n".join(f'    "{o}",' for o in ggml_ops(fl))
    turbo_fn = ""
    if fl.turbo:
        turbo_fn = """
struct ggml_tensor * ggml_turbo_wht(struct ggml_context * ctx, struct ggml_tensor * a, int direction) {
    (void) ctx; (void) direction;
    return a;
}
"""
    return f"""// Miniature ggml core (ollama-turbo sample world).

#include "ggml.h"
#include "ggml-common.h"

#include <stdlib.h>

struct ggml_context {{
    size_t mem_size;
    void * mem_buffer;
}};

static const struct ggml_type_traits type_traits[GGML_TYPE_COUNT] = {{
{chr(10).join(rows)}
}};

static const char * GGML_OP_NAME[GGML_OP_COUNT] = {{
{ops}
}};

struct ggml_context * ggml_init(struct ggml_init_params params) {{
    struct ggml_context * ctx = calloc(1, sizeof(struct ggml_context));
    ctx->mem_size = params.mem_size;
    ctx->mem_buffer = params.mem_buffer;
    return ctx;
}}

void ggml_free(struct ggml_context * ctx) {{
    free(ctx);
}}

const struct ggml_type_traits * ggml_get_type_traits(enum ggml_type type) {{
    return &type_traits[type];
}}

const char * ggml_type_name(enum ggml_type type) {{
    return type < GGML_TYPE_COUNT && type_traits[type].type_name ? type_traits[type].type_name : "NONE";
}}

const char * ggml_op_name(enum ggml_op op) {{
    return GGML_OP_NAME[op];
}}

int64_t ggml_blck_size(enum ggml_type type) {{
    return type_traits[type].blck_size;
}}

size_t ggml_type_size(enum ggml_type type) {{
    return type_traits[type].type_size;
}}

size_t ggml_row_size(enum ggml_type type, int64_t ne) {{
    return ggml_type_size(type)*ne/ggml_blck_size(type);
}}

bool ggml_is_quantized(enum ggml_type type) {{
    return type_traits[type].is_quantized;
}}
{turbo_fn}"""


GGML_BACKEND_C = """// Miniature ggml backend registry: one CPU device (ollama-turbo sample world).

#include "ggml-backend.h"

#include <stddef.h>

struct ggml_backend_device {
    const char * name;
    const char * description;
};

static struct ggml_backend_device cpu_device = { "CPU", "Sample CPU backend" };

size_t ggml_backend_dev_count(void) {
    return 1;
}

ggml_backend_dev_t ggml_backend_dev_get(size_t index) {
    return index == 0 ? &cpu_device : NULL;
}

void ggml_backend_dev_get_props(ggml_backend_dev_t device, struct ggml_backend_dev_props * props) {
    props->name = device->name;
    props->description = device->description;
    props->memory_total = (size_t) 16384 * 1024 * 1024;
    props->memory_free = props->memory_total;
    props->type = GGML_BACKEND_DEVICE_TYPE_CPU;
}
"""

METAL_SHADER = """// Miniature Metal kernels (ollama-turbo sample world).
#include <metal_stdlib>
using namespace metal;

kernel void kernel_scale(device const float * src, device float * dst, constant float & s,
                         uint i [[thread_position_in_grid]]) {
    dst[i] = src[i] * s;
}
"""

METAL_SHADER_TURBO = """
kernel void kernel_turbo_fwht_128(device float * x, uint i [[thread_position_in_grid]]) {
    // rotation of one 128-value group
    x[i] = x[i];
}
"""


def llama_c(fl: Flavour) -> str:
    n_ctx_seq = ""
    if fl.build >= 110:
        n_ctx_seq = """
uint32_t llama_n_ctx_seq(const struct llama_context * ctx) {
    return ctx->cparams.n_ctx / (ctx->cparams.n_seq_max ? ctx->cparams.n_seq_max : 1);
}
"""
    drop = fl.drop_function
    n_ctx_fn = "" if drop == "llama_n_ctx" else """
uint32_t llama_n_ctx(const struct llama_context * ctx) {
    return ctx->cparams.n_ctx;
}
"""
    if fl.turbo:
        head_size = """// TurboQuant: each head is zero-padded up to whole 128-value WHT groups.
static int64_t head_size(enum ggml_type type, int64_t n) {
    const int turbo = type == GGML_TYPE_TURBO2_0 || type == GGML_TYPE_TURBO3_0 || type == GGML_TYPE_TURBO4_0;
    return turbo && n % 128 ? (n + 127) / 128 * 128 : n;
}
"""
        # Like the fork: symmetric turbo K/V on a model with >= 6 query heads per KV head gets q8_0 K.
        auto_asym = """
    const int k_turbo = params.type_k == GGML_TYPE_TURBO2_0 || params.type_k == GGML_TYPE_TURBO3_0
                     || params.type_k == GGML_TYPE_TURBO4_0;
    const char * asym_env = getenv("TURBO_AUTO_ASYMMETRIC");
    const uint32_t gqa = model->n_head_kv ? model->n_head / model->n_head_kv : 1;
    if (k_turbo && params.type_k == params.type_v && gqa >= 6 && !(asym_env && asym_env[0] == '0')) {
        fprintf(stderr, "llama_kv_cache: auto-asymmetric: %u query heads share each KV head; K goes from %s "
                        "to q8_0, V stays %s (TURBO_AUTO_ASYMMETRIC=0 keeps K as asked)\\n",
                gqa, ggml_type_name(params.type_k), ggml_type_name(params.type_v));
        params.type_k = GGML_TYPE_Q8_0;
    }
"""
    else:
        auto_asym = ""
        head_size = """static int64_t head_size(enum ggml_type type, int64_t n) {
    (void) type;
    return n;
}
"""
    return f"""// Miniature llama.cpp runtime (ollama-turbo sample world).
//
// Reads the model geometry from the GGUF metadata, sizes the KV cache from the ggml type
// traits exactly as llama.cpp does, logs llama.cpp's KV cache lines, and "generates"
// deterministic text at a steady pace.

#define _POSIX_C_SOURCE 200809L
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// the loader pass over the tensor index (src/llama-model-loader.c)
int  llama_model_loader_count(const char * const * names, int n, int verbose);
void llama_model_loader_report(const char * fname, int found);

struct llama_model {{
    char     arch[64];
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t n_embd;
    uint32_t n_ctx_train;
    // hybrid models (qwen35): every full_attn_interval-th layer has attention, the rest a recurrent state
    uint32_t full_attn_interval;
    uint32_t ssm_conv, ssm_inner, ssm_state, ssm_group;
}};

struct llama_context {{
    struct llama_model * model;
    struct llama_context_params cparams;
    size_t kv_k_bytes;
    size_t kv_v_bytes;
}};

static double now_ms(void) {{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}}

static void sleep_us(long us) {{
    struct timespec ts = {{ us / 1000000, (us % 1000000) * 1000 }};
    nanosleep(&ts, NULL);
}}

static long env_long(const char * name, long def) {{
    const char * v = getenv(name);
    return v && *v ? atol(v) : def;
}}

void llama_backend_init(void) {{}}
void llama_backend_free(void) {{}}

const char * llama_print_system_info(void) {{
    return "CPU : SAMPLE = 1 | BUILD = {fl.tag}";
}}

struct llama_model_params llama_model_default_params(void) {{
    struct llama_model_params p = {{ 999, true, false, false }};
    return p;
}}

struct llama_context_params llama_context_default_params(void) {{
    struct llama_context_params p;
    memset(&p, 0, sizeof(p));
    p.n_ctx = 4096;
    p.n_batch = 2048;
    p.n_ubatch = 512;
    p.n_seq_max = 1;
    p.n_threads = 4;
    p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    p.type_k = GGML_TYPE_F16;
    p.type_v = GGML_TYPE_F16;
    p.offload_kqv = true;
    return p;
}}

// --- GGUF metadata reader: just enough to find the geometry -------------------------------

static int rd(FILE * f, void * dst, size_t n) {{ return fread(dst, 1, n, f) == n; }}

static size_t gguf_scalar_size(uint32_t t) {{
    switch (t) {{
        case 0: case 1: case 7: return 1;
        case 2: case 3: return 2;
        case 4: case 5: case 6: return 4;
        case 10: case 11: case 12: return 8;
        default: return 0;
    }}
}}

static int skip_value(FILE * f, uint32_t t) {{
    if (t == 8) {{
        uint64_t n; if (!rd(f, &n, 8)) return 0;
        return fseek(f, (long) n, SEEK_CUR) == 0;
    }}
    if (t == 9) {{
        uint32_t et; uint64_t n;
        if (!rd(f, &et, 4) || !rd(f, &n, 8)) return 0;
        for (uint64_t i = 0; i < n; i++) if (!skip_value(f, et)) return 0;
        return 1;
    }}
    size_t sz = gguf_scalar_size(t);
    return sz && fseek(f, (long) sz, SEEK_CUR) == 0;
}}

static int read_int(FILE * f, uint32_t t, uint64_t * out) {{
    uint8_t buf[8] = {{0}};
    size_t sz = gguf_scalar_size(t);
    if (!sz || t == 6 || t == 12 || !rd(f, buf, sz)) return 0;
    uint64_t v = 0;
    memcpy(&v, buf, sz);
    *out = v;
    return 1;
}}

static int ends_with(const char * s, const char * suffix) {{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}}

struct llama_model * llama_model_load_from_file(const char * path, struct llama_model_params params) {{
    (void) params;
    FILE * f = fopen(path, "rb");
    if (!f) {{
        fprintf(stderr, "llama_model_load: error loading model: failed to open %s\\n", path);
        return NULL;
    }}
    char magic[4];
    uint32_t version; uint64_t n_tensors, n_kv;
    if (!rd(f, magic, 4) || memcmp(magic, "GGUF", 4) != 0 || !rd(f, &version, 4)
        || !rd(f, &n_tensors, 8) || !rd(f, &n_kv, 8)) {{
        fprintf(stderr, "llama_model_load: error loading model: %s is not a GGUF file\\n", path);
        fclose(f);
        return NULL;
    }}
    struct llama_model * m = calloc(1, sizeof(*m));
    for (uint64_t i = 0; i < n_kv; i++) {{
        uint64_t klen; char key[256]; uint32_t t;
        if (!rd(f, &klen, 8) || klen >= sizeof(key) || !rd(f, key, klen) || !rd(f, &t, 4)) break;
        key[klen] = 0;
        uint64_t v = 0;
        if (strcmp(key, "general.architecture") == 0 && t == 8) {{
            uint64_t n; if (!rd(f, &n, 8) || n >= sizeof(m->arch) || !rd(f, m->arch, n)) break;
            m->arch[n] = 0;
        }} else if (ends_with(key, ".block_count") && read_int(f, t, &v)) {{
            m->n_layer = (uint32_t) v;
        }} else if (ends_with(key, ".attention.head_count_kv") && read_int(f, t, &v)) {{
            m->n_head_kv = (uint32_t) v;
        }} else if (ends_with(key, ".attention.head_count") && read_int(f, t, &v)) {{
            m->n_head = (uint32_t) v;
        }} else if (ends_with(key, ".full_attention_interval") && read_int(f, t, &v)) {{
            m->full_attn_interval = (uint32_t) v;
        }} else if (ends_with(key, ".ssm.conv_kernel") && read_int(f, t, &v)) {{
            m->ssm_conv = (uint32_t) v;
        }} else if (ends_with(key, ".ssm.inner_size") && read_int(f, t, &v)) {{
            m->ssm_inner = (uint32_t) v;
        }} else if (ends_with(key, ".ssm.state_size") && read_int(f, t, &v)) {{
            m->ssm_state = (uint32_t) v;
        }} else if (ends_with(key, ".ssm.group_count") && read_int(f, t, &v)) {{
            m->ssm_group = (uint32_t) v;
        }} else if (ends_with(key, ".embedding_length") && read_int(f, t, &v)) {{
            m->n_embd = (uint32_t) v;
        }} else if (ends_with(key, ".context_length") && read_int(f, t, &v)) {{
            m->n_ctx_train = (uint32_t) v;
        }} else if (!skip_value(f, t)) {{
            break;
        }}
    }}
    // the tensor index: each tensor's name, read for the loader pass
    char names_buf[16][96];
    const char * names[16];
    int n_names = 0;
    for (uint64_t i = 0; i < n_tensors && n_names < 16; i++) {{
        uint64_t nlen; uint32_t n_dims, type; uint64_t dim, offset;
        if (!rd(f, &nlen, 8) || nlen >= sizeof(names_buf[0]) || !rd(f, names_buf[n_names], nlen)) break;
        names_buf[n_names][nlen] = 0;
        if (!rd(f, &n_dims, 4)) break;
        for (uint32_t d = 0; d < n_dims; d++) if (!rd(f, &dim, 8)) break;
        if (!rd(f, &type, 4) || !rd(f, &offset, 8)) break;
        names[n_names] = names_buf[n_names];
        n_names++;
    }}
    fclose(f);
    llama_model_loader_report(path, llama_model_loader_count(names, n_names, 1));
    if (!m->n_layer || !m->n_head || !m->n_embd) {{
        fprintf(stderr, "llama_model_load: error loading model: %s lacks attention metadata\\n", path);
        free(m);
        return NULL;
    }}
    if (!m->n_head_kv) m->n_head_kv = m->n_head;
    if (strcmp(m->arch, "qwen35") == 0 && !m->full_attn_interval) m->full_attn_interval = 4;
    fprintf(stderr, "print_info: arch             = %s\\n", m->arch);
    fprintf(stderr, "print_info: n_layer          = %u\\n", m->n_layer);
    fprintf(stderr, "print_info: n_head           = %u\\n", m->n_head);
    fprintf(stderr, "print_info: n_head_kv        = %u\\n", m->n_head_kv);
    fprintf(stderr, "print_info: n_embd           = %u\\n", m->n_embd);
    return m;
}}

void llama_model_free(struct llama_model * model) {{
    free(model);
}}

int32_t llama_model_n_layer(const struct llama_model * model) {{
    return (int32_t) model->n_layer;
}}

{head_size}
struct llama_context * llama_init_from_model(struct llama_model * model, struct llama_context_params params) {{
    if (params.n_ctx == 0) params.n_ctx = model->n_ctx_train ? model->n_ctx_train : 4096;
    int fa = params.flash_attn_type != LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (ggml_is_quantized(params.type_v) && !fa) {{
        fprintf(stderr, "llama_init_from_model: V cache quantization requires flash_attn\\n");
        return NULL;
    }}
{auto_asym}
    struct llama_context * ctx = calloc(1, sizeof(*ctx));
    ctx->model = model;
    ctx->cparams = params;
    const int64_t n_embd_head = model->n_embd / model->n_head;
    const int64_t cells = params.n_ctx;
    // a hybrid model keeps a KV cache only in its full-attention layers
    uint32_t n_attn = model->n_layer;
    if (model->full_attn_interval) {{
        n_attn = 0;
        for (uint32_t il = 0; il < model->n_layer; il++) n_attn += (il + 1) % model->full_attn_interval == 0;
    }}
    ctx->kv_k_bytes = ggml_row_size(params.type_k, head_size(params.type_k, n_embd_head) * model->n_head_kv) * cells * n_attn;
    ctx->kv_v_bytes = ggml_row_size(params.type_v, head_size(params.type_v, n_embd_head) * model->n_head_kv) * cells * n_attn;
    const double mib = 1024.0 * 1024.0;
    fprintf(stderr, "llama_context: n_ctx         = %u\\n", params.n_ctx);
    fprintf(stderr, "llama_context: n_batch       = %u\\n", params.n_batch);
    fprintf(stderr, "llama_context: flash_attn    = %s\\n", fa ? "enabled" : "disabled");
    fprintf(stderr, "llama_kv_cache: %10s KV buffer size = %8.2f MiB\\n", "CPU",
            (ctx->kv_k_bytes + ctx->kv_v_bytes) / mib);
    fprintf(stderr, "llama_kv_cache: size = %7.2f MiB (%6u cells, %3u layers, %2u/%u seqs), "
                    "K (%s): %7.2f MiB, V (%s): %7.2f MiB\\n",
            (ctx->kv_k_bytes + ctx->kv_v_bytes) / mib, params.n_ctx, n_attn,
            params.n_seq_max, params.n_seq_max,
            ggml_type_name(params.type_k), ctx->kv_k_bytes / mib,
            ggml_type_name(params.type_v), ctx->kv_v_bytes / mib);
    if (model->full_attn_interval) {{
        // the recurrent state: f32, one cell per sequence, whatever the context or cache type
        const uint32_t seqs = params.n_seq_max ? params.n_seq_max : 1;
        const uint32_t n_rec = model->n_layer - n_attn;
        const size_t r = (size_t) (model->ssm_conv ? model->ssm_conv - 1 : 0)
                       * (model->ssm_inner + 2 * model->ssm_group * model->ssm_state);
        const size_t s = (size_t) model->ssm_state * model->ssm_inner;
        const double r_mib = 4.0 * r * seqs * n_rec / mib, s_mib = 4.0 * s * seqs * n_rec / mib;
        fprintf(stderr, "llama_memory_recurrent: size = %7.2f MiB (%6u cells, %3u layers, %2u seqs), "
                        "R (f32): %7.2f MiB, S (f32): %7.2f MiB\\n",
                r_mib + s_mib, seqs, model->n_layer, seqs, r_mib, s_mib);
    }}
    return ctx;
}}

void llama_free(struct llama_context * ctx) {{
    free(ctx);
}}
{n_ctx_fn}{n_ctx_seq}
size_t llama_state_get_size(struct llama_context * ctx) {{
    return ctx->kv_k_bytes + ctx->kv_v_bytes;
}}

int32_t llama_tokenize(const struct llama_context * ctx, const char * text, llama_token * tokens, int32_t n_tokens_max) {{
    (void) ctx;
    int32_t n = 0;
    int in_word = 0;
    for (const char * p = text; *p; p++) {{
        int space = (*p == ' ' || *p == '\\n' || *p == '\\t');
        if (!space && !in_word) {{
            if (tokens && n < n_tokens_max) tokens[n] = (llama_token) (unsigned char) *p;
            n++;
        }}
        in_word = !space;
    }}
    return n;
}}

static const char * WORDS[] = {{
    "the", "cache", "holds", "keys", "and", "values", "for", "every", "layer", "so",
    "attention", "can", "look", "back", "over", "context", "without", "recomputing", "them", "again",
}};

int32_t llama_generate(struct llama_context * ctx, const char * prompt, int32_t n_predict,
                       char * buf, int32_t buf_size, llama_piece_callback callback, void * user_data,
                       struct llama_perf_context_data * perf) {{
    const long prompt_us = env_long("SAMPLE_LLAMA_PROMPT_US", 100);
    const long token_us = env_long("SAMPLE_LLAMA_TOKEN_US", 2000);
    int32_t n_prompt = llama_tokenize(ctx, prompt, NULL, 0);
    if (n_prompt < 1) n_prompt = 1;
    double t0 = now_ms();
    sleep_us(prompt_us * n_prompt);
    double t1 = now_ms();
    unsigned h = 2166136261u;
    for (const char * p = prompt; *p; p++) h = (h ^ (unsigned char) *p) * 16777619u;
    int32_t len = 0;
    buf[0] = 0;
    int32_t i;
    for (i = 0; i < n_predict; i++) {{
        sleep_us(token_us);
        const char * w = WORDS[(h + (unsigned) i * 7u) % (sizeof(WORDS) / sizeof(WORDS[0]))];
        int written = snprintf(buf + len, (size_t) (buf_size - len), "%s%s", i ? " " : "", w);
        if (written < 0 || len + written >= buf_size) break;
        if (callback && !callback(buf + len, user_data)) {{ len += written; i++; break; }}
        len += written;
    }}
    double t2 = now_ms();
    if (perf) {{
        perf->t_p_eval_ms = t1 - t0;
        perf->t_eval_ms = t2 - t1;
        perf->n_p_eval = n_prompt;
        perf->n_eval = i;
    }}
    return len;
}}
"""


def arg_h(fl: Flavour) -> str:
    return """#pragma once

// Command-line argument table (ollama-turbo sample world).

#include "ggml.h"

#include <functional>
#include <string>
#include <vector>

struct common_params {
    std::string model;
    std::string mmproj;
    std::string alias;
    std::string hostname = "127.0.0.1";
    int32_t port = 8080;
    int32_t n_ctx = 4096;
    int32_t n_batch = 2048;
    int32_t n_ubatch = 512;
    int32_t n_gpu_layers = -1;
    int32_t n_threads = 4;
    int32_t n_parallel = 1;
    int32_t verbosity = 3;
    std::string flash_attn = "auto";
    ggml_type cache_type_k = GGML_TYPE_F16;
    ggml_type cache_type_v = GGML_TYPE_F16;
    bool use_mmap = true;
    bool use_mlock = false;
    bool embedding = false;
    bool jinja = false;
    bool webui = true;
    bool kv_unified = false;
    bool list_devices = false;
    bool usage = false;
    bool version = false;
    // llama-perplexity
    std::string prompt_file;
    std::string logits_file;
    bool kl_divergence = false;
    int32_t n_chunks = -1;
};

struct common_arg {
    std::vector<const char *> args;
    const char * value_hint = nullptr;
    std::string help;
    const char * env = nullptr;
    std::function<void(common_params &)> handler_void = nullptr;
    std::function<void(common_params &, const std::string &)> handler_string = nullptr;
    std::function<void(common_params &, int)> handler_int = nullptr;

    common_arg(const std::initializer_list<const char *> & args, const std::string & help,
               void (*handler)(common_params & params))
        : args(args), help(help), handler_void(handler) {}

    common_arg(const std::initializer_list<const char *> & args, const char * value_hint,
               const std::string & help, void (*handler)(common_params & params, const std::string &))
        : args(args), value_hint(value_hint), help(help), handler_string(handler) {}

    common_arg(const std::initializer_list<const char *> & args, const char * value_hint,
               const std::string & help, void (*handler)(common_params & params, int))
        : args(args), value_hint(value_hint), help(help), handler_int(handler) {}

    common_arg & set_env(const char * e) { env = e; return *this; }
};

// Parses argv (and LLAMA_ARG_* environment variables); prints the error and returns false
// on bad input.
bool common_params_parse(int argc, char ** argv, common_params & params);
void common_params_print_usage(const std::vector<common_arg> & options);
std::vector<common_arg> common_params_parser_init();
"""


def arg_cpp(fl: Flavour) -> str:
    kv = list(KV_CACHE_TYPES) + (FORK_KV_CACHE_TYPES if fl.turbo else [])
    kv_lines = "\n".join(f"    GGML_TYPE_{t}," for t in kv)
    kv_unified = ""
    if fl.build >= 110:
        kv_unified = """    add_opt(common_arg(
        {"-kvu", "--kv-unified"},
        "use single unified KV buffer for the KV cache of all sequences",
        [](common_params & params) {
            params.kv_unified = true;
        }
    ).set_env("LLAMA_ARG_KV_UNIFIED"));
"""
    return f"""// Command-line argument table (ollama-turbo sample world).

#include "arg.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

const std::vector<ggml_type> kv_cache_types = {{
{kv_lines}
}};

static ggml_type kv_cache_type_from_str(const std::string & s) {{
    for (const auto & type : kv_cache_types) {{
        if (ggml_type_name(type) == s) {{
            return type;
        }}
    }}
    throw std::runtime_error("Unsupported cache type: " + s);
}}

static std::string get_all_kv_cache_types() {{
    std::string out;
    for (const auto & type : kv_cache_types) {{
        out += std::string(ggml_type_name(type)) + (&type == &kv_cache_types.back() ? "" : ", ");
    }}
    return out;
}}

std::vector<common_arg> common_params_parser_init() {{
    std::vector<common_arg> options;
    auto add_opt = [&](common_arg arg) {{ options.push_back(arg); }};

    add_opt(common_arg(
        {{"-h", "--help", "--usage"}},
        "print usage and exit",
        [](common_params & params) {{
            params.usage = true;
        }}
    ));
    add_opt(common_arg(
        {{"--version"}},
        "show version and build info",
        [](common_params & params) {{
            params.version = true;
        }}
    ));
    add_opt(common_arg(
        {{"--list-devices"}},
        "print list of available devices and exit",
        [](common_params & params) {{
            params.list_devices = true;
        }}
    ));
    add_opt(common_arg(
        {{"-m", "--model"}}, "FNAME",
        "model path to load",
        [](common_params & params, const std::string & value) {{
            params.model = value;
        }}
    ).set_env("LLAMA_ARG_MODEL"));
    add_opt(common_arg(
        {{"-a", "--alias"}}, "STRING",
        "set alias for model name",
        [](common_params & params, const std::string & value) {{
            params.alias = value;
        }}
    ).set_env("LLAMA_ARG_ALIAS"));
    add_opt(common_arg(
        {{"-c", "--ctx-size"}}, "N",
        "size of the prompt context (default: 4096, 0 = loaded from model)",
        [](common_params & params, int value) {{
            params.n_ctx = value;
        }}
    ).set_env("LLAMA_ARG_CTX_SIZE"));
    add_opt(common_arg(
        {{"-b", "--batch-size"}}, "N",
        "logical maximum batch size (default: 2048)",
        [](common_params & params, int value) {{
            params.n_batch = value;
        }}
    ).set_env("LLAMA_ARG_BATCH"));
    add_opt(common_arg(
        {{"-ub", "--ubatch-size"}}, "N",
        "physical maximum batch size (default: 512)",
        [](common_params & params, int value) {{
            params.n_ubatch = value;
        }}
    ).set_env("LLAMA_ARG_UBATCH"));
    add_opt(common_arg(
        {{"-ngl", "--gpu-layers", "--n-gpu-layers"}}, "N",
        "max. number of layers to store in VRAM",
        [](common_params & params, int value) {{
            params.n_gpu_layers = value;
        }}
    ).set_env("LLAMA_ARG_N_GPU_LAYERS"));
    add_opt(common_arg(
        {{"-t", "--threads"}}, "N",
        "number of CPU threads to use during generation",
        [](common_params & params, int value) {{
            params.n_threads = value;
        }}
    ).set_env("LLAMA_ARG_THREADS"));
    add_opt(common_arg(
        {{"-np", "--parallel"}}, "N",
        "number of server slots (default: 1)",
        [](common_params & params, int value) {{
            params.n_parallel = value;
        }}
    ).set_env("LLAMA_ARG_N_PARALLEL"));
    add_opt(common_arg(
        {{"-lv", "--verbosity", "--log-verbosity"}}, "N",
        "log verbosity: messages up to this level are printed (default: 3)",
        [](common_params & params, int value) {{
            params.verbosity = value;
        }}
    ).set_env("LLAMA_ARG_LOG_VERBOSITY"));
    add_opt(common_arg(
        {{"-fa", "--flash-attn"}}, "[on|off|auto]",
        "set Flash Attention use ('on', 'off', or 'auto', default: 'auto')",
        [](common_params & params, const std::string & value) {{
            if (value != "on" && value != "off" && value != "auto") {{
                throw std::invalid_argument("unknown value for --flash-attn: '" + value + "'");
            }}
            params.flash_attn = value;
        }}
    ).set_env("LLAMA_ARG_FLASH_ATTN"));
    add_opt(common_arg(
        {{"-ctk", "--cache-type-k"}}, "TYPE",
        "KV cache data type for K\\nallowed values: " + get_all_kv_cache_types() + "\\n(default: f16)",
        [](common_params & params, const std::string & value) {{
            params.cache_type_k = kv_cache_type_from_str(value);
        }}
    ).set_env("LLAMA_ARG_CACHE_TYPE_K"));
    add_opt(common_arg(
        {{"-ctv", "--cache-type-v"}}, "TYPE",
        "KV cache data type for V\\nallowed values: " + get_all_kv_cache_types() + "\\n(default: f16)",
        [](common_params & params, const std::string & value) {{
            params.cache_type_v = kv_cache_type_from_str(value);
        }}
    ).set_env("LLAMA_ARG_CACHE_TYPE_V"));
{kv_unified}{PERPLEXITY_ARGS}    add_opt(common_arg(
        {{"--no-mmap"}},
        "do not memory-map model",
        [](common_params & params) {{
            params.use_mmap = false;
        }}
    ).set_env("LLAMA_ARG_NO_MMAP"));
    add_opt(common_arg(
        {{"--mlock"}},
        "force system to keep model in RAM rather than swapping or compressing",
        [](common_params & params) {{
            params.use_mlock = true;
        }}
    ).set_env("LLAMA_ARG_MLOCK"));
    add_opt(common_arg(
        {{"-mm", "--mmproj"}}, "FILE",
        "path to a multimodal projector file",
        [](common_params & params, const std::string & value) {{
            params.mmproj = value;
        }}
    ).set_env("LLAMA_ARG_MMPROJ"));
    add_opt(common_arg(
        {{"--embedding", "--embeddings"}},
        "restrict to only support embedding use case",
        [](common_params & params) {{
            params.embedding = true;
        }}
    ).set_env("LLAMA_ARG_EMBEDDINGS"));
    add_opt(common_arg(
        {{"--jinja"}},
        "use jinja template for chat",
        [](common_params & params) {{
            params.jinja = true;
        }}
    ).set_env("LLAMA_ARG_JINJA"));
    add_opt(common_arg(
        {{"--no-webui"}},
        "disable the Web UI",
        [](common_params & params) {{
            params.webui = false;
        }}
    ).set_env("LLAMA_ARG_NO_WEBUI"));
    add_opt(common_arg(
        {{"--host"}}, "HOST",
        "ip address to listen (default: 127.0.0.1)",
        [](common_params & params, const std::string & value) {{
            params.hostname = value;
        }}
    ).set_env("LLAMA_ARG_HOST"));
    add_opt(common_arg(
        {{"--port"}}, "PORT",
        "port to listen (default: 8080)",
        [](common_params & params, int value) {{
            params.port = value;
        }}
    ).set_env("LLAMA_ARG_PORT"));
    return options;
}}

void common_params_print_usage(const std::vector<common_arg> & options) {{
    fprintf(stderr, "usage: llama-server [options]\\n\\n");
    for (const auto & opt : options) {{
        std::string names;
        for (const char * a : opt.args) {{
            names += (names.empty() ? "" : ", ") + std::string(a);
        }}
        fprintf(stderr, "%-32s %s %s\\n", names.c_str(), opt.value_hint ? opt.value_hint : "",
                opt.help.c_str());
    }}
}}

static void apply(const common_arg & opt, common_params & params, const char * value) {{
    if (opt.handler_void) {{
        opt.handler_void(params);
    }} else if (opt.handler_string) {{
        opt.handler_string(params, value);
    }} else {{
        char * end = nullptr;
        long v = std::strtol(value, &end, 10);
        if (!*value || *end) {{
            throw std::invalid_argument(std::string("expected an integer, got '") + value + "'");
        }}
        opt.handler_int(params, (int) v);
    }}
}}

bool common_params_parse(int argc, char ** argv, common_params & params) {{
    const auto options = common_params_parser_init();
    for (const auto & opt : options) {{
        const char * value = opt.env ? std::getenv(opt.env) : nullptr;
        if (!value) {{
            continue;
        }}
        try {{
            apply(opt, params, value);
        }} catch (const std::exception & e) {{
            fprintf(stderr, "error while handling environment variable \\"%s\\": %s\\n\\n", opt.env, e.what());
            return false;
        }}
    }}
    for (int i = 1; i < argc; i++) {{
        const std::string arg = argv[i];
        const common_arg * found = nullptr;
        for (const auto & opt : options) {{
            for (const char * a : opt.args) {{
                if (arg == a) {{
                    found = &opt;
                }}
            }}
        }}
        if (!found) {{
            fprintf(stderr, "error: invalid argument: %s\\n", arg.c_str());
            return false;
        }}
        const char * value = nullptr;
        if (!found->handler_void) {{
            if (i + 1 >= argc) {{
                fprintf(stderr, "error while handling argument \\"%s\\": expected value for argument\\n\\n", arg.c_str());
                return false;
            }}
            value = argv[++i];
        }}
        try {{
            apply(*found, params, value);
        }} catch (const std::exception & e) {{
            fprintf(stderr, "error while handling argument \\"%s\\": %s\\n\\n", arg.c_str(), e.what());
            common_params_print_usage(options);
            return false;
        }}
    }}
    return true;
}}
"""
