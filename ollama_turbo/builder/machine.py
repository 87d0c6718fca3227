"""The machine a build (or half of one) ran on, told apart from another that happens to share its hostname: the
hostname, a digest of the OS's machine id, the CPU and its cores, and the GPUs it sees."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

from ollama_turbo.core import gpu


def _machine_id() -> str:
    for p in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(text.encode()).hexdigest()[:12]  # a digest: the id itself is not published
    return ""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """This machine, as a build records it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 0
    gpus = gpu.local_gpus()
    return {"hostname": platform.node(), "machine_id": _machine_id(), "cpu": _cpu(), "cores": cores,
            "os": platform.system().lower(), "arch": platform.machine(),
            "gpus": [f"{name} (sm_{arch})" for name, arch in gpus]}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two descriptions of one machine (by its machine id where both have one)."""
    if a.get("machine_id") and b.get("machine_id"):
        return bool(a["machine_id"] == b["machine_id"])
    return all(a.get(k) == b.get(k) for k in ("hostname", "cpu", "cores"))
