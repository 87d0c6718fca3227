"""The NVIDIA GPU of a machine, as CUDA builds name it: its compute capability (``90`` for an H100/H200).

One reader of ``nvidia-smi``'s answer, used where a build picks its architecture and where a deploy checks
that a CUDA build was made for the host's GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess

QUERY = "nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader"


def parse_query(text: str) -> list[tuple[str, str]]:
    """``(name, arch)`` per GPU from :data:`QUERY`'s output: ``NVIDIA H200, 9.0`` -> ``("NVIDIA H200", "90")``."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(.+?)\s*,\s*(\d+)\.(\d+)\s*", line)
        if m:
            out.append((m.group(1), m.group(2) + m.group(3)))
    return out


def local_gpus() -> list[tuple[str, str]]:
    """This machine's NVIDIA GPUs (name, arch); none where nvidia-smi is missing or finds no GPU."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        r = subprocess.run(QUERY.split(), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_query(r.stdout) if r.returncode == 0 else []


def base_arch(arch: str) -> str:
    """The compute capability of an arch name: ``90a`` runs on a ``90`` GPU and nowhere else."""
    return arch.rstrip("af")


def describe(gpus: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} (sm_{arch})" for name, arch in gpus) or "no NVIDIA GPU"
