"""The dynamic part of verify-fork: the fork's own CPU quantizer, compiled here, round-trips
Gaussian vectors, and the measured error is set beside what the centroid table predicts.

Nothing of the fork is copied: its ``ggml/src/ggml-turbo-quant.c`` is compiled in place with the
real compiler against its own headers, and linked with a small driver written here. Dequantize
leaves values in the rotated domain (the attention graph undoes the rotation), so the driver
applies the fork's ``turbo_cpu_fwht_inverse`` before comparing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ollama_turbo.core import proc
from ollama_turbo.core.errors import CommandError

QUANTIZER = "ggml/src/ggml-turbo-quant.c"
BLOCKS = 2000
TOLERANCE = 0.20  # measured relative MSE within 20 % of the table's prediction

DRIVER = r"""
/* ollama-turbo verify-fork driver: round-trips N(0,1) vectors through the fork's CPU quantizer. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "ggml-quants.h"

void turbo_cpu_fwht_inverse(float * x, int group_size);

static uint64_t state = 0x9e3779b97f4a7c15ull;
static double uniform(void) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return ((state >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }

#define D 128
typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*dequant_fn)(const void *, float *, int64_t);

static void run(const char * name, quant_fn q, dequant_fn dq, size_t block_bytes, int blocks) {
    float x[D], y[D], r[D];
    unsigned char * buf = malloc(block_bytes);
    double err = 0, energy = 0, ip_err = 0;
    state = 0x9e3779b97f4a7c15ull;
    for (int b = 0; b < blocks; b++) {
        double xr = 0, xx = 0, rr = 0, yr = 0;
        for (int i = 0; i < D; i++) { x[i] = (float) gauss(); r[i] = (float) gauss(); }
        q(x, buf, D);
        dq(buf, y, D);
        turbo_cpu_fwht_inverse(y, D);
        for (int i = 0; i < D; i++) {
            err += (x[i] - y[i]) * (double) (x[i] - y[i]);
            energy += x[i] * (double) x[i];
            xr += x[i] * (double) r[i]; yr += y[i] * (double) r[i];
            xx += x[i] * (double) x[i]; rr += r[i] * (double) r[i];
        }
        ip_err += fabs(xr - yr) / sqrt(xx * rr);
    }
    printf("{\"type\": \"%s\", \"relative_mse\": %.8f, \"inner_product_error\": %.8f, \"blocks\": %d}\n",
           name, err / energy, ip_err / blocks, blocks);
    free(buf);
}

int main(void) {
    run("turbo2", (quant_fn) quantize_row_turbo2_0_ref, (dequant_fn) dequantize_row_turbo2_0,
        sizeof(block_turbo2_0), BLOCKS);
    run("turbo3", (quant_fn) quantize_row_turbo3_0_ref, (dequant_fn) dequantize_row_turbo3_0,
        sizeof(block_turbo3_0), BLOCKS);
    run("turbo4", (quant_fn) quantize_row_turbo4_0_ref, (dequant_fn) dequantize_row_turbo4_0,
        sizeof(block_turbo4_0), BLOCKS);
    return 0;
}
"""


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def measure(fork_dir: Path, blocks: int = BLOCKS) -> dict[str, dict[str, Any]]:
    """Compile the fork's quantizer with the driver and run it; the measured errors per type."""
    cc = compiler()
    if cc is None:
        raise FileNotFoundError("cc")
    with tempfile.TemporaryDirectory(prefix="turbo-verify-") as tmp:
        t = Path(tmp)
        (t / "driver.c").write_text(DRIVER.replace("BLOCKS);", f"{blocks});"))
        inc = ["-I", str(fork_dir / "ggml/include"), "-I", str(fork_dir / "ggml/src")]
        proc.run([cc, "-O2", "-w", "-DNDEBUG", "-c", str(fork_dir / QUANTIZER), *inc, "-o", str(t / "q.o")])
        proc.run([cc, "-O2", "-w", *inc, str(t / "driver.c"), str(t / "q.o"), "-lm", "-o", str(t / "run")])
        out = proc.run([str(t / "run")], timeout=300).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["type"]: r for r in rows}


def check(fork_dir: Path, report: Any) -> None:
    """Add the dynamic checklist items to a verify-fork report."""
    from ollama_turbo.check.verify_fork import FAIL, PASS, REVIEW, SKIP

    item = "Dequantize matches quantize (the fork's CPU code, measured)"
    if not (fork_dir / QUANTIZER).is_file():
        report.add(item, REVIEW, f"no {QUANTIZER}: the dynamic check needs the fork's CPU quantizer")
        return
    try:
        measured = measure(fork_dir)
    except FileNotFoundError:
        report.add(item, SKIP, "no C compiler (cc): the dynamic check was skipped; the static checks ran")
        return
    except CommandError as exc:
        report.add(item, REVIEW, f"the fork's quantizer did not compile or run with the driver: "
                                 f"{exc.stderr_tail.strip().splitlines()[-1:] or exc}")
        return
    report.tables["measured"] = measured
    for name, row in measured.items():
        table = report.tables.get(name, {})
        predicted = table.get("predicted_relative_mse")
        best = table.get("optimum_mse", 0) * 128 if table else None
        got = row["relative_mse"]
        if predicted is None:
            report.add(f"{name}: {item}", REVIEW, f"measured relative MSE {got:.5f}; no table to compare with")
            continue
        off = (got - predicted) / predicted
        verdict = PASS if abs(off) <= TOLERANCE else FAIL
        report.add(f"{name}: {item}", verdict,
                   f"{row['blocks']} Gaussian blocks of 128: relative MSE {got:.5f} (the table predicts "
                   f"{predicted:.5f}, {off:+.0%}; the Lloyd-Max optimum {best:.5f}), inner-product error "
                   f"{row['inner_product_error']:.4f} of |x||q|")
