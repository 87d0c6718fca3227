"""The quantizer tables a fork carries in its sources: centroid tables and rotation sign arrays,
per backend (CPU C, CUDA, Metal, Vulkan), with the file and line each was found at.

Pure text reading: C-like array initialisers (``static const float NAME[N] = {...}``, CUDA's
``__constant__``, Metal's ``constant``) and the rotation functions that use the sign arrays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.rules import block_end

# Where a fork keeps its own copies (globs under the tree); the backend follows from the path.
SOURCES = ("ggml/src/*turbo*.c", "ggml/src/ggml-cpu/ops.cpp", "ggml/src/ggml-cuda/*turbo*",
           "ggml/src/ggml-metal/*.metal", "ggml/src/ggml-metal/*turbo*.h", "ggml/src/ggml-vulkan/vulkan-shaders/*.comp")
ARRAY = re.compile(r"\b(?:float|half|double)\s+(\w+)\s*\[\s*(\w*)\s*\]\s*=\s*\{([^{}]*)\}", re.S)
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fFhH]?$")
FUNCTION = re.compile(r"\b(\w*(?:fwht|wht|rotate)\w*)\s*\(([^;{}]*)\)\s*\{")


class TableError(TurboError):
    pass


def backend_of(rel: str) -> str:
    for key, name in (("ggml-cuda", "CUDA"), ("ggml-metal", "Metal"), ("ggml-vulkan", "Vulkan")):
        if key in rel:
            return name
    return "CPU"


@dataclass(frozen=True)
class Table:
    name: str
    file: str   # relative to the fork
    line: int
    backend: str
    values: tuple[float, ...]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def half(self) -> bool:
        """A reduced-precision copy (Metal's ``*_h`` half tables)."""
        return self.name.endswith("_h")


@dataclass
class Rotation:
    """A rotation function and the sign arrays it applies, in order."""

    name: str
    file: str
    line: int
    backend: str
    signs: list[str] = field(default_factory=list)

    @property
    def inverse(self) -> bool:
        return "inv" in self.name.lower()


@dataclass
class Found:
    centroids: dict[int, list[Table]] = field(default_factory=dict)  # bits -> every copy
    signs: list[Table] = field(default_factory=list)
    rotations: list[Rotation] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _parse_values(text: str, where: str) -> tuple[float, ...]:
    body = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)
    parts = [p.strip() for p in body.split(",") if p.strip()]
    bad = [p for p in parts if not NUMBER.match(p)]
    if bad:
        raise TableError(f"{where}: cannot read the table: {bad[0]!r} is not a number",
                         hint="the table is written as an expression; verify-fork reads literal initialisers")
    return tuple(float(p.rstrip("fFhH")) for p in parts)


def _is_centroid(name: str) -> bool:
    n = name.lower()
    return ("centroid" in n or re.fullmatch(r"tc\d", n) is not None) and not re.search(r"tq\d|weight|mag", n)


def _is_signs(name: str, values: tuple[float, ...]) -> bool:
    n = name.lower()
    return (("sign" in n or re.search(r"_s\d$", n) is not None) and not re.search(r"qjl|tq\d|weight|_h4$", n)
            and bool(values) and all(v in (-1.0, 1.0) for v in values))


def _rotations(text: str, rel: str, backend: str, sign_names: set[str]) -> list[Rotation]:
    out = []
    for m in FUNCTION.finditer(text):
        body = text[m.end() - 1:block_end(text, m.end() - 1)]
        aliases = dict(re.findall(r"\*\s*(\w+)\s*=\s*(\w+)\s*;", body))
        params = {p.split()[-1].strip("*") for p in m.group(2).split(",") if p.strip()}
        used = []
        for name in re.findall(r"\*=?\s*(\w+)\s*\[\s*\w+\s*\]", body):
            real = aliases.get(name, name)
            if real in sign_names or (name in params and re.search(r"s\d|sign", name)):
                used.append(real)
        if used:
            out.append(Rotation(m.group(1), rel, text.count("\n", 0, m.start()) + 1, backend, used))
    return out


def scan(fork_dir: Path) -> Found:
    """Every centroid table, sign array and rotation function in the fork's quantizer sources."""
    found = Found()
    paths = sorted({p for pattern in SOURCES for p in fork_dir.glob(pattern) if p.is_file()})
    texts = {}
    for p in paths:
        rel = str(p.relative_to(fork_dir))
        text = p.read_text(errors="replace")
        texts[rel] = text
        hits = False
        for m in ARRAY.finditer(text):
            name = m.group(1)
            if not (_is_centroid(name) or "sign" in name.lower() or re.search(r"_s\d$", name)):
                continue
            line = text.count("\n", 0, m.start()) + 1
            values = _parse_values(m.group(3), f"{rel}:{line} ({name})")
            table = Table(name, rel, line, backend_of(rel), values)
            if _is_centroid(name) and len(values) in (4, 8, 16):
                found.centroids.setdefault(int(math.log2(len(values))), []).append(table)
                hits = True
            elif _is_signs(name, values):
                found.signs.append(table)
                hits = True
        if hits:
            found.files.append(rel)
    names = {t.name for t in found.signs}
    for rel, text in texts.items():
        found.rotations += _rotations(text, rel, backend_of(rel), names)
    return found
