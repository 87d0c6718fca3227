"""A model of llama.cpp's C API built with libclang: functions, records, enums, typedefs, macros.

Records are laid out for a chosen target (``arm64-apple-macos`` by default) so sizes and
offsets are those of the machine that will run the build. The C library headers a public
header pulls in are replaced by small freestanding stand-ins (see :data:`LIBC_STUBS`), so a
macOS layout can be computed on Linux and the other way round. Any clang diagnostic of
severity error is a failed parse: libclang would otherwise report wrong types silently.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core import proc
from ollama_turbo.core.errors import TurboError

DEFAULT_TARGET = "arm64-apple-macos"
TARGETS = {"arm64-apple-macos": "arm64-apple-macosx14.0", "x86_64-linux-gnu": "x86_64-linux-gnu",
           "aarch64-linux-gnu": "aarch64-linux-gnu", "x86_64-apple-macos": "x86_64-apple-macosx14.0"}
HEADERS = ("llama.h", "ggml.h", "gguf.h", "ggml-backend.h")
MACRO_PREFIXES = ("LLAMA_", "GGML_", "GGUF_")

# Freestanding stand-ins for the hosted C headers public llama.cpp headers include.
LIBC_STUBS = {
    "stdio.h": "#pragma once\n#include <stddef.h>\ntypedef struct __turbo_FILE FILE;\n",
    "stdlib.h": "#pragma once\n#include <stddef.h>\n",
    "string.h": "#pragma once\n#include <stddef.h>\n",
    "assert.h": "#pragma once\n#define assert(x) ((void)0)\n",
    "math.h": "#pragma once\n",
    "limits.h": "#pragma once\n#include_next <limits.h>\n",
}


class HeaderParseError(TurboError):
    pass


@dataclass
class Function:
    name: str
    result: str
    params: list[tuple[str, str]]
    variadic: bool
    deprecated: bool
    header: str

    def signature(self) -> str:
        ps = ", ".join(t for _, t in self.params) + (", ..." if self.variadic else "")
        return f"{self.result} {self.name}({ps or 'void'})"


@dataclass
class Field:
    name: str
    type: str
    offset: int


@dataclass
class Record:
    name: str
    kind: str
    size: int
    align: int
    fields: list[Field]
    header: str


@dataclass
class Enum:
    name: str
    constants: list[tuple[str, int]]
    header: str


@dataclass
class HeaderModel:
    target: str
    functions: dict[str, Function] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    typedefs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, header)
    macros: dict[str, tuple[str, str]] = field(default_factory=dict)    # name -> (value, header)
    parse_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "functions": {k: {"result": f.result, "params": [list(p) for p in f.params],
                              "variadic": f.variadic, "deprecated": f.deprecated, "header": f.header}
                          for k, f in sorted(self.functions.items())},
            "records": {k: {"kind": r.kind, "size": r.size, "align": r.align, "header": r.header,
                            "fields": [[f.name, f.type, f.offset] for f in r.fields]}
                        for k, r in sorted(self.records.items())},
            "enums": {k: {"header": e.header, "constants": [list(c) for c in e.constants]}
                      for k, e in sorted(self.enums.items())},
            "typedefs": {k: {"type": t, "header": h} for k, (t, h) in sorted(self.typedefs.items())},
            "macros": {k: {"value": v, "header": h} for k, (v, h) in sorted(self.macros.items())},
        }

    def all_names(self) -> set[str]:
        names = set(self.functions) | set(self.records) | set(self.enums) | set(self.typedefs)
        names |= set(self.macros)
        for e in self.enums.values():
            names |= {n for n, _ in e.constants}
        return names


@functools.cache
def _compiler_include_dir() -> str | None:
    """The C compiler's own header directory (stddef.h, stdbool.h, stdint.h)."""
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            r = proc.run([cc, "-print-file-name=include"], check=False)
            path = r.stdout.strip()
            if r.ok and Path(path, "stddef.h").is_file():
                return path
    return None


def _index() -> Any:
    try:
        from clang import cindex
    except ImportError as exc:  # pragma: no cover - a dependency
        raise TurboError("libclang is not installed", hint="pip install libclang") from exc
    return cindex.Index.create()


def _literal(tokens: list[str]) -> str | None:
    """The value of an object-like macro, when it is a literal (number, string, char)."""
    text = "".join(tokens)
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+(\.\d*)?([eE][-+]?\d+)?)[uUlLfF]*", text):
        return text
    if re.fullmatch(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)+\'', text):
        return text
    return None


def parse(include_dirs: list[Path], *, target: str = DEFAULT_TARGET,
          headers: tuple[str, ...] = HEADERS) -> HeaderModel:
    """Parse ``headers`` found in ``include_dirs`` into a :class:`HeaderModel`."""
    from clang import cindex

    found: dict[str, Path] = {}
    for h in headers:
        for d in include_dirs:
            if (d / h).is_file():
                found[h] = (d / h).resolve()
                break
    if "llama.h" not in found and "ggml.h" not in found:
        raise HeaderParseError(f"no llama.h or ggml.h in {', '.join(map(str, include_dirs))}")
    t0 = time.perf_counter()
    code = "".join(f'#include "{p}"\n' for p in found.values())
    model = HeaderModel(target=target)
    with parsed(code, include_dirs, target=target) as tu:
        wanted = {str(p): name for name, p in found.items()}
        _collect(tu.cursor, wanted, model, cindex)
    model.parse_seconds = time.perf_counter() - t0
    return model


@contextlib.contextmanager
def parsed(code: str, include_dirs: list[Path], *, target: str = DEFAULT_TARGET) -> Iterator[Any]:
    """A libclang translation unit of ``code``; any error diagnostic raises HeaderParseError."""
    from clang import cindex

    triple = TARGETS.get(target, target)
    with tempfile.TemporaryDirectory(prefix="turbo-capi-") as tmp:
        stubs = Path(tmp) / "libc"
        stubs.mkdir()
        for name, text in LIBC_STUBS.items():
            (stubs / name).write_text(text)
        tu_file = Path(tmp) / "api.c"
        tu_file.write_text(code)
        args = ["-x", "c", "-std=c11", f"--target={triple}", "-ffreestanding", "-nostdinc",
                "-I", str(stubs)]
        builtin = _compiler_include_dir()
        if builtin:
            args += ["-isystem", builtin]
        for d in include_dirs:
            args += ["-I", str(d)]
        tu = _index().parse(str(tu_file), args=args,
                            options=cindex.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD
                            | cindex.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES)
        errors = [d for d in tu.diagnostics if d.severity >= cindex.Diagnostic.Error]
        if errors:
            d = errors[0]
            where = f"{d.location.file}:{d.location.line}" if d.location.file else "(command line)"
            raise HeaderParseError(f"{where}: {d.spelling}" + (f" (and {len(errors) - 1} more errors)"
                                                             if len(errors) > 1 else ""),
                                   hint="is this a llama.cpp tree? are its headers complete?")
        yield tu


def _header_of(cursor: Any, wanted: dict[str, str]) -> str | None:
    f = cursor.location.file
    if f is None:
        return None
    return wanted.get(str(Path(f.name).resolve()))


def _collect(root: Any, wanted: dict[str, str], model: HeaderModel, cindex: Any) -> None:
    K = cindex.CursorKind
    for c in root.get_children():
        header = _header_of(c, wanted)
        if header is None:
            continue
        if c.kind == K.FUNCTION_DECL:
            model.functions[c.spelling] = Function(
                name=c.spelling, result=c.result_type.get_canonical().spelling,
                params=[(a.spelling, a.type.get_canonical().spelling) for a in c.get_arguments()],
                variadic=c.type.kind == cindex.TypeKind.FUNCTIONPROTO and c.type.is_function_variadic(),
                deprecated=c.availability == cindex.AvailabilityKind.DEPRECATED, header=header)
        elif c.kind in (K.STRUCT_DECL, K.UNION_DECL) and c.is_definition() and c.spelling \
                and not c.spelling.startswith(("struct (", "union (")):
            _record(c, c.spelling, header, model)
        elif c.kind == K.ENUM_DECL and c.is_definition():
            name = c.spelling if c.spelling and not c.spelling.startswith("enum (") else None
            consts = [(e.spelling, e.enum_value) for e in c.get_children()
                      if e.kind == K.ENUM_CONSTANT_DECL]
            name = name or (f"anonymous enum ({consts[0][0]})" if consts else None)
            if name:
                model.enums[name] = Enum(name, consts, header)
        elif c.kind == K.TYPEDEF_DECL:
            under = c.underlying_typedef_type
            decl = under.get_declaration()
            if decl.kind in (K.STRUCT_DECL, K.UNION_DECL) and decl.is_definition() and (
                    not decl.spelling or decl.spelling.startswith(("struct (", "union ("))):
                _record(decl, c.spelling, header, model)
            model.typedefs[c.spelling] = (under.get_canonical().spelling, header)
        elif c.kind == K.MACRO_DEFINITION and c.spelling.startswith(MACRO_PREFIXES):
            if _function_like(c, cindex):
                continue
            toks = [t.spelling for t in c.get_tokens()][1:]
            value = _literal(toks)
            if value is not None:
                model.macros[c.spelling] = (value, header)


def _function_like(c: Any, cindex: Any) -> bool:
    fn = getattr(c, "is_macro_function_like", None)
    if fn is not None:
        return bool(fn())
    try:
        return bool(cindex.conf.lib.clang_Cursor_isMacroFunctionLike(c))
    except AttributeError:  # very old libclang: look at the tokens instead
        toks = list(c.get_tokens())
        return len(toks) > 1 and toks[1].spelling == "(" and toks[1].extent.start.offset == \
            toks[0].extent.end.offset


def _record(c: Any, name: str, header: str, model: HeaderModel) -> None:
    t = c.type
    size, align = t.get_size(), t.get_align()
    if size < 0:
        return
    fields = []
    for f in t.get_fields():
        off = t.get_offset(f.spelling) if f.spelling else -1
        fields.append(Field(f.spelling, f.type.get_canonical().spelling, off // 8 if off >= 0 else -1))
    kind = "union" if c.kind.name == "UNION_DECL" else "struct"
    model.records[name] = Record(name, kind, size, align, fields, header)
