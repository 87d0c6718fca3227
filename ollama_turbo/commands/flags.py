"""Checks of a task's flags made before any work: output paths this run can really write, local source paths
that exist, and numbers that are finite and in range. Each failure is a usage error naming the flag."""

from __future__ import annotations

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ollama_turbo.core import sources
from ollama_turbo.core.errors import ConfigError, UsageError
from ollama_turbo.core.settings import Settings

OUTPUT_FLAGS = {"json": "file", "markdown": "file", "out": "dir", "dest": "dir"}

SOURCE_FLAGS = {"ollama": "Ollama", "fork": "the fork", "upstream": "upstream llama.cpp"}


def check_flags(kwargs: dict[str, Any]) -> None:
    """The flags every task shares the meaning of: sources first (a bad path is named before a network fetch),
    then outputs (a result that cannot be written is no result)."""
    for flag in SOURCE_FLAGS:
        if isinstance(kwargs.get(flag), str) and kwargs[flag]:
            check_source(kwargs[flag], flag)
    for flag, kind in OUTPUT_FLAGS.items():
        if isinstance(kwargs.get(flag), str) and kwargs[flag]:
            check_output(kwargs[flag], flag, kind)


def check_source(value: str, flag: str) -> None:
    problem = sources.local_problem(value)
    if problem:
        raise UsageError(f"--{flag} {value}: {problem}",
                         hint=f"give --{flag} a git checkout of {SOURCE_FLAGS[flag]} or a git URL (https://...)")


def check_configured_sources(s: Settings, flags: dict[str, str]) -> None:
    """The sources a task opens from the settings (no flag given), checked before any is opened or fetched."""
    for name, given in flags.items():
        url = getattr(s.sources, name).url
        problem = None if given else sources.local_problem(url)
        if problem:
            raise ConfigError(f"{url}: {problem}", key=f"sources.{name}.url",
                              hint=f"set it to a git checkout of {SOURCE_FLAGS[name]} or a git URL, or give "
                                   f"--{name} (settings-show prints where it came from)")


def check_output(value: str, flag: str, kind: str) -> None:
    """``--flag value`` names a file or folder this run can write: its folder exists (or is made), and a file
    can be created there (tried, then removed: /proc, /sys and read-only filesystems refuse it, root or not)."""
    path = Path(value).expanduser()
    folder = path if kind == "dir" else path.parent
    name = "--" + flag.replace("_", "-")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{name} {value}: is a folder, not a file", hint=f"give {name} a file name")
    blocker = next((a for a in [folder, *folder.parents] if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{name} {value}: {blocker} is a file, not a folder",
                         hint=f"give {name} a path in a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{name} {value}: cannot make the folder {folder}: {exc.strerror or exc}",
                         hint=f"give {name} a path in a writable folder") from None
    problem = _probe_file(path) if kind == "file" else _probe_folder(folder)
    if problem:
        where = "the file" if kind == "file" else "a file in the folder"
        raise UsageError(f"{name} {value}: cannot write {where}: {problem}",
                         hint=f"give {name} a path in a writable folder")


def _probe_file(path: Path) -> str | None:
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        return None if exc.errno == errno.ENXIO else exc.strerror or str(exc)  # ENXIO: a FIFO nobody reads yet
    os.close(fd)
    if not existed:
        path.unlink(missing_ok=True)
    return None


def _probe_folder(folder: Path) -> str | None:
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ollama-turbo-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def number(value: float, flag: str, *, minimum: float = 0.0, why: str = "", example: str = "4") -> float:
    """A float flag: finite, and at least ``minimum``."""
    name = "--" + flag.replace("_", "-")
    if not math.isfinite(value):
        raise UsageError(f"{name} {value}: not a finite number", hint=f"give {name} a number, e.g. {name} {example}")
    if value < minimum:
        raise UsageError(f"{name} {value:g}: must be {minimum:g} or more" + (f" ({why})" if why else ""),
                         hint=f"give {name} {minimum:g} or more")
    return float(value)


def whole(value: int, flag: str, *, maximum: int, minimum: int = 0, what: str = "") -> int:
    """An int flag between ``minimum`` and ``maximum``."""
    name = "--" + flag.replace("_", "-")
    if not minimum <= value <= maximum:
        raise UsageError(f"{name} {value}: must be from {minimum:,} to {maximum:,}" + (f" ({what})" if what else ""),
                         hint=f"give {name} a number from {minimum:,} to {maximum:,}")
    return int(value)
