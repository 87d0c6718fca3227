"""Compare two C API models and classify every change.

Severity: ``incompatible`` (Ollama built against one side misbehaves with the other),
``review`` (a person should look), ``compatible`` (listed for the record, e.g. deprecations).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ollama_turbo.core.capi import HeaderModel

INCOMPATIBLE, REVIEW, COMPATIBLE = "incompatible", "review", "compatible"
SEVERITY_ORDER = {INCOMPATIBLE: 0, REVIEW: 1, COMPATIBLE: 2}


@dataclass
class Change:
    kind: str
    symbol: str
    header: str
    severity: str
    detail: str
    used_by_ollama: bool | None = None
    uses: list[str] = field(default_factory=list)
    related: list[str] = field(default_factory=list)  # other symbols this change touches
    suppressed: str | None = None  # the .apiignore reason
    counts_as: str = ""  # what it means for this Ollama (decides the verdict); severity by default

    def __post_init__(self) -> None:
        self.counts_as = self.counts_as or self.severity

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_count(name: str) -> bool:
    return name.endswith("_COUNT")


def diff(old: HeaderModel, new: HeaderModel, *, old_name: str = "pinned",
         new_name: str = "fork") -> list[Change]:
    out: list[Change] = []
    out += _functions(old, new)
    out += _records(old, new)
    out += _enums(old, new, old_name, new_name)
    out += _typedefs(old, new)
    out += _macros(old, new)
    out.sort(key=lambda c: (SEVERITY_ORDER[c.severity], c.header, c.kind, c.symbol))
    return out


def _functions(old: HeaderModel, new: HeaderModel) -> list[Change]:
    out = []
    for name, f in old.functions.items():
        g = new.functions.get(name)
        if g is None:
            out.append(Change("function_removed", name, f.header, INCOMPATIBLE,
                              f"{f.signature()} is gone"))
            continue
        if (f.result, [t for _, t in f.params], f.variadic) != (g.result, [t for _, t in g.params],
                                                               g.variadic):
            out.append(Change("function_signature", name, f.header, INCOMPATIBLE,
                              f"{f.signature()} -> {g.signature()}"))
        if g.deprecated and not f.deprecated:
            out.append(Change("function_deprecated", name, g.header, COMPATIBLE, "newly deprecated"))
    for name, g in new.functions.items():
        if name not in old.functions:
            out.append(Change("function_added", name, g.header, REVIEW, g.signature()))
    return out


def _records(old: HeaderModel, new: HeaderModel) -> list[Change]:
    out = []
    for name, r in old.records.items():
        s = new.records.get(name)
        if s is None:
            out.append(Change("record_removed", name, r.header, INCOMPATIBLE, f"{r.kind} {name} is gone"))
            continue
        details = []
        if (r.size, r.align) != (s.size, s.align):
            details.append(f"size {r.size} -> {s.size} bytes" + (
                f", alignment {r.align} -> {s.align}" if r.align != s.align else ""))
        old_f = {f.name: f for f in r.fields}
        new_f = {f.name: f for f in s.fields}
        for fname, f in old_f.items():
            g = new_f.get(fname)
            if g is None:
                details.append(f"field {fname} removed")
            elif g.offset != f.offset:
                details.append(f"field {fname} moved from offset {f.offset} to {g.offset}")
            elif g.type != f.type:
                details.append(f"field {fname} type {f.type} -> {g.type}")
        added = [f"{g.name} ({g.type}) at offset {g.offset}" for fname, g in new_f.items()
                 if fname not in old_f]
        if added:
            details.append("fields added: " + ", ".join(added))
        if details:
            severity = INCOMPATIBLE if (r.size, r.align) != (s.size, s.align) or any(
                not d.startswith("fields added") for d in details) else REVIEW
            out.append(Change("record_layout", name, r.header, severity, "; ".join(details)))
    for name, s in new.records.items():
        if name not in old.records:
            out.append(Change("record_added", name, s.header, REVIEW, f"{s.kind} {name}, {s.size} bytes"))
    return out


def _enums(old: HeaderModel, new: HeaderModel, old_name: str, new_name: str) -> list[Change]:
    out = []
    for ename, e in old.enums.items():
        f = new.enums.get(ename)
        if f is None:
            out.append(Change("enum_removed", ename, e.header, INCOMPATIBLE, f"enum {ename} is gone"))
            continue
        ov, nv = dict(e.constants), dict(f.constants)
        old_by_val: dict[int, list[str]] = {}
        for n, v in e.constants:
            if not _is_count(n):
                old_by_val.setdefault(v, []).append(n)
        old_max = max((v for n, v in e.constants if not _is_count(n)), default=-1)
        explained: set[str] = set()
        new_order = [n for n, _ in f.constants]
        # constants inserted before existing ones: every later constant shifts
        for n, v in f.constants:
            if n in ov or _is_count(n):
                continue
            later = [m for m in new_order[new_order.index(n) + 1:] if m in ov and not _is_count(m)]
            shifted = [m for m in later if nv[m] != ov[m]]
            if later and v <= old_max and shifted:
                explained.update(shifted)
                show = ", ".join(f"{m} {ov[m]}->{nv[m]}" for m in shifted[:6])
                more = f" and {len(shifted) - 6} more" if len(shifted) > 6 else ""
                out.append(Change("enum_insert", n, f.header, INCOMPATIBLE,
                                  f"{n} = {v} inserted in the middle of enum {ename}: {len(shifted)} "
                                  f"later constants shift by one or more ({show}{more}); ids stored in "
                                  f"files, KV state or sent over RPC change meaning", related=shifted))
        for n, v in f.constants:
            if n in ov or _is_count(n):
                continue
            others = [m for m in old_by_val.get(v, []) if m != n]
            if others and not any(c.kind == "enum_insert" and c.symbol == n for c in out):
                gone = others[0] not in nv
                out.append(Change(
                    "enum_collision", n, f.header, INCOMPATIBLE,
                    f"{n} = {v} in the {new_name}, but {v} is {others[0]} in the {old_name}"
                    + (f" (which the {new_name} lacks)" if gone else "")
                    + ": model files and KV state written by one are misread by the other",
                    related=others))
                explained.update(others)
            elif not any(c.symbol == n for c in out):
                where = f"appended at the end of enum {ename}" if v > old_max else \
                    f"added to enum {ename} (the value was unused)"
                out.append(Change("enum_constant_added", n, f.header, REVIEW, f"{n} = {v} {where}"))
        for n, v in e.constants:
            if n in explained:
                continue
            if n not in nv:
                out.append(Change("enum_constant_removed", n, e.header, INCOMPATIBLE,
                                  f"{n} (= {v}) is gone from enum {ename}"))
            elif nv[n] != v:
                if _is_count(n):
                    out.append(Change("enum_count_changed", n, e.header, REVIEW if nv[n] > v else INCOMPATIBLE,
                                      f"{n} {v} -> {nv[n]}"))
                else:
                    out.append(Change("enum_value_changed", n, e.header, INCOMPATIBLE,
                                      f"{n} {v} -> {nv[n]}"))
    for ename, f in new.enums.items():
        if ename not in old.enums:
            out.append(Change("enum_added", ename, f.header, REVIEW,
                              f"enum {ename} with {len(f.constants)} constants"))
    return out


def _typedefs(old: HeaderModel, new: HeaderModel) -> list[Change]:
    out = []
    for name, (t, h) in old.typedefs.items():
        if name not in new.typedefs:
            out.append(Change("typedef_removed", name, h, INCOMPATIBLE, f"typedef {name} ({t}) is gone"))
        elif new.typedefs[name][0] != t:
            out.append(Change("typedef_changed", name, h, INCOMPATIBLE, f"{t} -> {new.typedefs[name][0]}"))
    for name, (t, h) in new.typedefs.items():
        if name not in old.typedefs:
            out.append(Change("typedef_added", name, h, COMPATIBLE, t))
    return out


def _macros(old: HeaderModel, new: HeaderModel) -> list[Change]:
    out = []
    for name, (v, h) in old.macros.items():
        if name not in new.macros:
            out.append(Change("macro_removed", name, h, INCOMPATIBLE, f"{name} (= {v}) is gone"))
        elif new.macros[name][0] != v:
            out.append(Change("macro_changed", name, h, REVIEW, f"{v} -> {new.macros[name][0]}"))
    for name, (v, h) in new.macros.items():
        if name not in old.macros:
            out.append(Change("macro_added", name, h, REVIEW, f"{name} = {v}"))
    return out


def verdict(changes: list[Change]) -> str:
    live = [c for c in changes if not c.suppressed]
    if any(c.severity == INCOMPATIBLE for c in live):
        return INCOMPATIBLE
    if any(c.severity == REVIEW for c in live):
        return REVIEW
    return COMPATIBLE
