"""Reading a server's log: llama.cpp's KV cache lines, whichever server wrote them.

Logs are bytes: at ``-lv 4`` llama-server echoes token text, which need not be valid UTF-8.
Every reader decodes with replacement, so a broken byte never hides the lines we need.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

LogReader = Callable[[], str]

KV_LINE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells.*?K \((\w+)\): +([\d.]+) MiB, "
                     r"V \((\w+)\): +([\d.]+) MiB")


@dataclass(frozen=True)
class KVLine:
    """One ``llama_kv_cache: size = ...`` line: the cache the server really allocated."""

    mib: float
    cells: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float


def kv_lines(log: str) -> list[KVLine]:
    """Every KV cache size line in ``log``, oldest first."""
    return [KVLine(float(m), int(c), k, float(km), v, float(vm)) for m, c, k, km, v, vm in KV_LINE.findall(log)]
