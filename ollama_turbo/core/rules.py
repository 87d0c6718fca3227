"""Anchored edits to Ollama's sources (never hand-written diffs).

A rule finds its anchor (a regular expression that must match exactly once, optionally
inside one Go function), then inserts after it, replaces it, or deletes the line. After
editing, its ``expect`` pattern must match exactly once. A rule whose anchor is gone or
ambiguous is an error naming the file, the rule and what was expected: Ollama has moved.
Pure text in, text out; :func:`apply_rules` does the file I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core.errors import TurboError


class RuleError(TurboError):
    pass


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    anchor: str            # regex, MULTILINE
    action: str            # insert_after | insert_before | replace | delete_line
    text: str = ""         # inserted text, or the replacement (may use \\1 groups)
    function: str | None = None  # restrict the search to this Go function's body
    expect: str | None = None    # regex that must match exactly once afterwards
    why: str = ""

    def describe(self) -> str:
        where = f"{self.file}" + (f" func {self.function}" if self.function else "")
        return f"{self.name} ({where}): {self.why}"


def function_span(text: str, name: str) -> tuple[int, int] | None:
    """Start and end of Go function ``name`` (its signature through the closing brace)."""
    m = re.search(rf"^func (?:\([^)]*\)\s*)?{re.escape(name)}\(", text, re.M)
    if not m:
        return None
    return m.start(), block_end(text, text.index("{", m.end()))


def block_end(text: str, start: int) -> int:
    """The index just past the brace that closes the one at ``start`` (the end of text if none does);
    for C and Go alike."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _anchor(text: str, rule: Rule) -> tuple[int, int, re.Match[str]]:
    """(region start, region end, the one anchor match in it) or a RuleError naming what moved."""
    lo, hi = 0, len(text)
    if rule.function:
        span = function_span(text, rule.function)
        if span is None:
            raise RuleError(f"{rule.file}: rule {rule.name}: function {rule.function} not found",
                            hint="Ollama has moved this code; update the rule in ollama_turbo/builder/go_rules.py")
        lo, hi = span
    region = text[lo:hi]
    matches = list(re.finditer(rule.anchor, region, re.M))
    if len(matches) != 1:
        what = "not found" if not matches else f"found {len(matches)} times"
        raise RuleError(
            f"{rule.file}: rule {rule.name}: anchor {rule.anchor!r} {what}"
            + (f" in func {rule.function}" if rule.function else "") + "; expected exactly one",
            hint="Ollama has moved this code; update the rule in ollama_turbo/builder/go_rules.py")
    return lo, hi, matches[0]


def anchor_line(text: str, rule: Rule) -> int:
    """The 1-based line of ``text`` where ``rule``'s anchor is (the evidence that it applies there)."""
    lo, _, m = _anchor(text, rule)
    lead = len(m.group(0)) - len(m.group(0).lstrip())  # an anchor may start with the line break before it
    return text.count("\n", 0, lo + m.start() + lead) + 1


def apply_rule(text: str, rule: Rule) -> str:
    lo, hi, m = _anchor(text, rule)
    region = text[lo:hi]
    if rule.action == "insert_after":
        end = region.find("\n", m.end())
        end = len(region) if end < 0 else end + 1
        region = region[:end] + rule.text + region[end:]
    elif rule.action == "insert_before":
        start = region.rfind("\n", 0, m.start()) + 1
        region = region[:start] + rule.text + region[start:]
    elif rule.action == "replace":
        region = region[: m.start()] + m.expand(rule.text) + region[m.end():]
    elif rule.action == "delete_line":
        start = region.rfind("\n", 0, m.start()) + 1
        end = region.find("\n", m.end())
        end = len(region) if end < 0 else end + 1
        region = region[:start] + region[end:]
    else:  # pragma: no cover - rules are written in code
        raise ValueError(rule.action)
    out = text[:lo] + region + text[hi:]
    if rule.expect is not None and len(re.findall(rule.expect, out, re.M)) != 1:
        raise RuleError(f"{rule.file}: rule {rule.name}: after editing, {rule.expect!r} should occur once")
    return out


@dataclass(frozen=True)
class Applied:
    rule: str
    file: str
    why: str


def apply_rules(root: Path, rules: list[Rule]) -> list[Applied]:
    """Apply ``rules`` to files under ``root``; all or nothing (files are written at the end)."""
    texts: dict[str, str] = {}
    for r in rules:
        if r.file not in texts:
            p = root / r.file
            if not p.is_file():
                raise RuleError(f"{r.file}: rule {r.name}: file not found in {root}",
                                hint="Ollama has moved this code; update the rule in ollama_turbo/builder/go_rules.py")
            texts[r.file] = p.read_text()
        texts[r.file] = apply_rule(texts[r.file], r)
    for rel, text in texts.items():
        (root / rel).write_text(text)
    return [Applied(r.name, r.file, r.why) for r in rules]
