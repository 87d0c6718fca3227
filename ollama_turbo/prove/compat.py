"""The compatibility record: which Ollama ref builds with which fork commit on which backend, and what the
build then proved (rules, smoke, KV memory, quality), from field runs on the real projects.

One JSON file (``docs/compatibility.json``) holds the rows; :func:`render` writes the Markdown beside it.
A row is keyed by (Ollama ref, fork commit, backend); a later run of the same key replaces its facts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import UsageError

KEY = ("ollama", "fork", "backend")


def load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a compatibility record: {exc}",
                         hint="restore it from version control, or remove it to start a new record") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{path}: not a compatibility record (expected a JSON list of rows)")
    return rows


def merge(rows: list[dict[str, Any]], facts: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with ``facts`` added to the row of the same key (created if new); nested dicts are merged, unless
    their ``status`` changed (a release refused before and built now keeps nothing of the refusal)."""
    missing = [k for k in KEY if not facts.get(k)]
    if missing:
        raise UsageError(f"a compatibility fact needs {', '.join(KEY)}; missing: {', '.join(missing)}")
    out = [dict(r) for r in rows]
    row = next((r for r in out if all(r.get(k) == facts[k] for k in KEY)), None)
    if row is None:
        row = {k: facts[k] for k in KEY}
        out.append(row)
    for k, v in facts.items():
        old = row.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and v.get("status", old.get("status")) == old.get("status"):
            row[k] = {**old, **v}  # more facts about the same outcome; a new outcome replaces the old one's
        else:
            row[k] = v
    row.setdefault("date", dt.date.today().isoformat())
    out.sort(key=lambda r: (str(r.get("backend")), _ref_order(str(r.get("ollama"))), str(r.get("fork"))))
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The record as JSON at ``path`` and as Markdown beside it (``.md``); returns the Markdown's path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        path.with_suffix(".md").write_text(render(rows), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the record {path}: {exc}", hint="pick a writable --record") from None
    return path.with_suffix(".md")


def record(path: Path, facts: dict[str, Any]) -> None:
    """Add ``facts`` to the record at ``path`` and rewrite its Markdown beside it (``.md``)."""
    write(path, merge(load(path), {**facts, "date": dt.date.today().isoformat()}))


def _ref_order(ref: str) -> tuple[int, ...]:
    nums = [int(x) for x in ref.lstrip("v").replace("-rc", ".").split(".") if x.isdigit()]
    return tuple(nums) if nums else (999,)


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "–"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _patches(v: Any) -> str:
    """How the compat patches went onto the fork: per patch its status and how its hunks were placed, and what
    was left out ("models of architecture laguna are not supported by this build")."""
    if isinstance(v, str) or not v:
        return str(v or "")
    cells = []
    for p in v:
        name = str(p.get("patch", "")).rsplit("/", 1)[-1]
        methods: dict[str, int] = {}
        for h in p.get("hunks") or []:
            methods[h.get("method", "?")] = methods.get(h.get("method", "?"), 0) + 1
        how = ", ".join(f"{n} {m}" for m, n in methods.items())
        if p.get("status") == "left-out":
            feature = str(p.get("feature") or "").replace("model architecture", "architecture")
            cells.append(f"{name}: left out: models of {feature} are not supported by this build")
        elif p.get("status") in ("carried", "applied"):
            cells.append(f"{name}: {p['status']} ({how})")
        else:
            cells.append(f"{name}: {p.get('status')}")
    return "; ".join(cells)


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Compatibility record",
        "",
        "Field runs of ollama-turbo on the real projects: which Ollama release builds with which commit of the "
        "TurboQuant fork, on which backend, and what that build then proved. Written by the field tier "
        "(`tests/field/`, see docs/testing.md) from what it measured; regenerate with "
        "`invoke compat-record`. A dash is a fact not measured for that row.",
        "",
        "| Ollama | fork | backend | build | compat patches | Go rules | smoke | KV MiB planner / log | "
        "quality on SmolLM2 | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r.get("build") or {}
        build = b.get("status", "")
        times = [f"{b['seconds']:.0f} s cold" if b.get("seconds") is not None else "",
                 f"last run {b['run_seconds']:.0f} s" if b.get("run_seconds") is not None else "",
                 f"no-op {b['noop_seconds']:.1f} s" if b.get("noop_seconds") is not None else ""]
        if any(times):
            build += " (" + ", ".join(t for t in times if t) + ")"
        if b.get("conflict"):
            build += f": {b['conflict']}"
        rules = b.get("rules") or {}
        rule_text = ", ".join(f"{n} {k}" for k, n in rules.items()) if rules else ""
        smoke = "; ".join(f"{k}: {v}" for k, v in (r.get("smoke") or {}).items())
        kv = "; ".join(f"{k}: {v}" for k, v in (r.get("kv_mib") or {}).items())
        quality = "; ".join(f"{k} {v}" for k, v in (r.get("quality") or {}).items())
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.get("ollama"), r.get("fork"), str(r.get("backend") or "") + (f" ({r['gpu']})" if r.get("gpu") else ""),
            build, _patches(r.get("patches")), rule_text, smoke, kv, quality,
            r.get("date"))) + " |")
    notes = [r for r in rows if r.get("notes")]
    if notes:
        lines += ["", "## Notes", ""]
        for r in notes:
            for n in r["notes"]:
                lines.append(f"- {r['ollama']} × {r['fork']} ({r['backend']}): {n}")
    return "\n".join(lines) + "\n"
