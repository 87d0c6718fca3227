"""Reading a server's log: llama.cpp's KV cache lines, whichever server wrote them.

Logs are bytes: at ``-lv 4`` llama-server echoes token text, which need not be valid UTF-8.
Every reader decodes with replacement, so a broken byte never hides the lines we need.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LogReader = Callable[[], str]


def decode(data: bytes) -> str:
    """Log bytes as text: invalid UTF-8 (token text cut mid-character) becomes U+FFFD, never an error."""
    return data.decode("utf-8", errors="replace")


def file_reader(path: Path) -> LogReader:
    """A reader of the log file at ``path``; a missing file reads as empty."""

    def read() -> str:
        try:
            return decode(path.read_bytes())
        except FileNotFoundError:
            return ""

    return read

KV_LINE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells,[^)]*?(?:\d+/(\d+) seqs)?\), "
                     r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")


@dataclass(frozen=True)
class KVLine:
    """One ``llama_kv_cache: size = ...`` line: the cache the server really allocated."""

    mib: float
    cells: int  # per sequence: a server with a cache per sequence (-np N, not unified) holds N of them
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float
    seqs: int = 1  # the caches the line counts: ``n_seq_max/n_stream seqs``, ``4/4``: four of ``cells`` each
    #                (a cache per sequence); ``4/1``: one, shared (unified)


def kv_lines(log: str) -> list[KVLine]:
    """Every KV cache size line in ``log``, oldest first."""
    return [KVLine(float(m), int(c), k, float(km), v, float(vm), int(n or 1))
            for m, c, n, k, km, v, vm in KV_LINE.findall(log)]


def rotation(log: str) -> dict[str, bool] | None:
    """Whether llama.cpp rotated K and V (its Hadamard transform of a quantized cache), as its own
    ``attn_rot_k = N`` / ``attn_rot_v = N`` lines say (the last of each); None where it does not say."""
    k = re.findall(r"attn_rot_k = (\d)", log)
    v = re.findall(r"attn_rot_v = (\d)", log)
    return {"k": k[-1] == "1", "v": v[-1] == "1"} if k and v else None


def _numbers(log: str, key: str) -> list[int] | None:
    """The last ``print_info: <key> = N`` (or ``= [a, b, ...]`` when layers differ) of a llama.cpp log."""
    found = re.findall(rf"print_info: {key} += +(\[[\d, ]*\]|\d+)", log)
    if not found:
        return None
    return [int(x) for x in re.findall(r"\d+", found[-1])]


def model_shape(log: str) -> tuple[int, float] | None:
    """(layers, query heads per KV head) of the model the server loaded, from llama.cpp's model print-out."""
    layers, heads, heads_kv = _numbers(log, "n_layer"), _numbers(log, "n_head"), _numbers(log, "n_head_kv")
    if not (layers and heads and heads_kv):
        return None
    if len(heads) == 1:
        heads = heads * len(heads_kv)
    if len(heads_kv) == 1:
        heads_kv = heads_kv * len(heads)
    ratios = [h / k for h, k in zip(heads, heads_kv, strict=False) if k]
    return layers[0], max(ratios) if ratios else 1.0
