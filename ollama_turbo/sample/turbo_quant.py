"""The sample fork's TurboQuant quantizer: CPU C code and Metal tables in the file shapes of the
real fork (``ggml/src/ggml-turbo-quant.c``, ``ggml/src/ggml-quants.h``, tables in
``ggml-metal.metal``), written for ollama-turbo.

The centroid tables are the Lloyd-Max optimum for N(0, 1/128) as constants of the sample's own
(:data:`CENTROIDS`); the rotation signs come from a small PRNG of ours.
Scenario switches reproduce the faults verify-fork must catch.
"""

from __future__ import annotations

from dataclasses import dataclass

D = 128


@dataclass(frozen=True)
class Faults:
    suboptimal_4bit: bool = False   # the 4-bit table squeezed toward zero (as the fork's once was)
    metal_disagrees: bool = False   # Metal's 3-bit table is not the CPU's
    inverse_signs: bool = False     # the inverse rotation applies the signs in the forward order


def _signs(seed: int) -> list[int]:
    state = seed
    out = []
    for _ in range(D):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(1 if (state >> 33) & 1 else -1)
    return out


# The sample fork's own centroids for N(0, 1/128): Max's (1960) optimum levels for a unit Gaussian
# (±0.4528, ±1.510 for 4 levels; ±0.2451 ... ±2.152 for 8; ±0.1284 ... ±2.733 for 16), divided by
# sqrt(128), to 6 decimals. Typed in here, so the world does not borrow verify-fork's oracle: a table
# that drifts from the optimum must be found by verify-fork, not agree with it by construction.
CENTROIDS = {
    2: [0.04002, 0.133503],
    3: [0.021663, 0.066822, 0.118786, 0.190207],
    4: [0.011349, 0.034299, 0.05805, 0.083292, 0.111036, 0.143016, 0.182877, 0.241529],
}


def tables(faults: Faults) -> dict[int, list[float]]:
    out = {bits: [-x for x in reversed(half)] + half for bits, half in CENTROIDS.items()}
    if faults.suboptimal_4bit:
        out[4] = [round(x * 0.7, 6) for x in out[4]]
    return out


def _c_array(qualifier: str, name: str, values: list[float] | list[int], per_line: int = 8) -> str:
    items = [f"{v:.6f}f" if isinstance(v, float) else str(v) for v in values]
    rows = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return f"{qualifier} {name}[{len(values)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


QUANTS_H = """#pragma once
// TurboQuant CPU reference quantizers (ollama-turbo sample world).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include <stdint.h>

void quantize_row_turbo2_0_ref(const float * x, block_turbo2_0 * y, int64_t k);
void quantize_row_turbo3_0_ref(const float * x, block_turbo3_0 * y, int64_t k);
void quantize_row_turbo4_0_ref(const float * x, block_turbo4_0 * y, int64_t k);
void dequantize_row_turbo2_0(const block_turbo2_0 * x, float * y, int64_t k);
void dequantize_row_turbo3_0(const block_turbo3_0 * x, float * y, int64_t k);
void dequantize_row_turbo4_0(const block_turbo4_0 * x, float * y, int64_t k);
"""


def quant_c(faults: Faults) -> str:
    t = tables(faults)
    inverse_first, inverse_last = ("s1", "s2") if faults.inverse_signs else ("s2", "s1")
    return f"""// TurboQuant CPU reference (ollama-turbo sample world): each block of 128 values is divided by
// its L2 norm, rotated (random signs, Walsh-Hadamard, signs), and every coordinate stored as the
// index of its nearest centroid. Dequantize stays in the rotated domain, as the fork's does.
#include "ggml-quants.h"

#include <math.h>
#include <string.h>

/* ---------- centroids: Lloyd-Max for N(0, 1/128) ---------- */

{_c_array("static const float", "CENTROIDS_2BIT", t[2])}
{_c_array("static const float", "CENTROIDS_3BIT", t[3])}
{_c_array("static const float", "CENTROIDS_4BIT", t[4])}
/* ---------- rotation sign arrays ---------- */

{_c_array("static const float", "turbo_cpu_s1", [float(v) for v in _signs(42)], 16)}
{_c_array("static const float", "turbo_cpu_s2", [float(v) for v in _signs(43)], 16)}
static void turbo_butterfly(float * x, int n) {{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {{
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }}
}}

static void turbo_cpu_fwht(float * x, int n) {{
    const float * s1 = turbo_cpu_s1;
    const float * s2 = turbo_cpu_s2;
    const float scale = 1.0f / sqrtf((float) n);
    for (int i = 0; i < n; i++) x[i] *= s1[i];
    turbo_butterfly(x, n);
    for (int i = 0; i < n; i++) x[i] *= scale * s2[i];
}}

void turbo_cpu_fwht_inverse(float * x, int n) {{
    const float * s1 = turbo_cpu_s1;
    const float * s2 = turbo_cpu_s2;
    const float scale = 1.0f / sqrtf((float) n);
    for (int i = 0; i < n; i++) x[i] *= {inverse_first}[i];
    turbo_butterfly(x, n);
    for (int i = 0; i < n; i++) x[i] *= scale * {inverse_last}[i];
}}

static uint16_t to_half(float f) {{
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu, man = u & 0x7fffffu;
    if (exp < 113) return (uint16_t) sign;
    if (exp > 142) return (uint16_t) (sign | 0x7c00u);
    return (uint16_t) (sign | ((exp - 112) << 10) | (man >> 13));
}}

static float from_half(uint16_t h) {{
    uint32_t sign = (uint32_t) (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u = exp ? sign | ((exp + 112) << 23) | (man << 13) : sign;
    float f; memcpy(&f, &u, 4);
    return f;
}}

static int nearest(const float * c, int levels, float v) {{
    int best = 0;
    for (int i = 1; i < levels; i++) if (fabsf(v - c[i]) < fabsf(v - c[best])) best = i;
    return best;
}}

static void put(uint8_t * qs, int i, int bits, int v) {{
    for (int b = 0; b < bits; b++) {{
        int at = i * bits + b;
        if (v >> b & 1) qs[at / 8] |= (uint8_t) (1u << (at % 8));
    }}
}}

static int get(const uint8_t * qs, int i, int bits) {{
    int v = 0;
    for (int b = 0; b < bits; b++) {{
        int at = i * bits + b;
        v |= (qs[at / 8] >> (at % 8) & 1) << b;
    }}
    return v;
}}

static void quantize_block(const float * x, uint16_t * norm, uint8_t * qs, const float * c, int bits) {{
    float r[{D}];
    double ss = 0;
    for (int i = 0; i < {D}; i++) ss += (double) x[i] * x[i];
    const float n = (float) sqrt(ss);
    for (int i = 0; i < {D}; i++) r[i] = n > 0 ? x[i] / n : 0.0f;
    turbo_cpu_fwht(r, {D});
    memset(qs, 0, {D} * bits / 8);
    for (int i = 0; i < {D}; i++) put(qs, i, bits, nearest(c, 1 << bits, r[i]));
    *norm = to_half(n);
}}

static void dequantize_block(uint16_t norm, const uint8_t * qs, float * y, const float * c, int bits) {{
    const float n = from_half(norm);
    for (int i = 0; i < {D}; i++) y[i] = c[get(qs, i, bits)] * n;
}}

void quantize_row_turbo2_0_ref(const float * x, block_turbo2_0 * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) quantize_block(x + b * {D}, &y[b].norm, y[b].qs, CENTROIDS_2BIT, 2);
}}

void quantize_row_turbo3_0_ref(const float * x, block_turbo3_0 * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) quantize_block(x + b * {D}, &y[b].norm, y[b].qs, CENTROIDS_3BIT, 3);
}}

void quantize_row_turbo4_0_ref(const float * x, block_turbo4_0 * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) quantize_block(x + b * {D}, &y[b].norm, y[b].qs, CENTROIDS_4BIT, 4);
}}

void dequantize_row_turbo2_0(const block_turbo2_0 * x, float * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) dequantize_block(x[b].norm, x[b].qs, y + b * {D}, CENTROIDS_2BIT, 2);
}}

void dequantize_row_turbo3_0(const block_turbo3_0 * x, float * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) dequantize_block(x[b].norm, x[b].qs, y + b * {D}, CENTROIDS_3BIT, 3);
}}

void dequantize_row_turbo4_0(const block_turbo4_0 * x, float * y, int64_t k) {{
    for (int64_t b = 0; b < k / {D}; b++) dequantize_block(x[b].norm, x[b].qs, y + b * {D}, CENTROIDS_4BIT, 4);
}}
"""


def metal_tables(faults: Faults) -> str:
    t = tables(faults)
    three = [round(x * 1.08, 6) for x in t[3]] if faults.metal_disagrees else t[3]
    return f"""
// TurboQuant tables and rotation (ollama-turbo sample world): the same as the CPU's.
{_c_array("constant float", "turbo_centroids_2bit", t[2])}
{_c_array("constant float", "turbo_centroids_3bit", three)}
{_c_array("constant float", "turbo_centroids_4bit", t[4])}
{_c_array("constant float", "turbo_wht_signs1", [float(v) for v in _signs(42)], 16)}
{_c_array("constant float", "turbo_wht_signs2", [float(v) for v in _signs(43)], 16)}
static void turbo_fwht_128(thread float * x) {{
    for (int h = 1; h < 128; h *= 2)
        for (int i = 0; i < 128; i += 2 * h)
            for (int j = i; j < i + h; j++) {{
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }}
}}

static void turbo_rotate_forward(thread float * x, constant float * s1, constant float * s2) {{
    for (int i = 0; i < 128; i++) x[i] *= s1[i];
    turbo_fwht_128(x);
    for (int i = 0; i < 128; i++) x[i] *= s2[i] * 0.08838834764831845f;
}}

static void turbo_rotate_inverse(thread float * x, constant float * s1, constant float * s2) {{
    for (int i = 0; i < 128; i++) x[i] *= s2[i];
    turbo_fwht_128(x);
    for (int i = 0; i < 128; i++) x[i] *= s1[i] * 0.08838834764831845f;
}}
"""
