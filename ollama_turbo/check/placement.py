"""Where a hunk of Ollama's patch goes in the fork's file, decided on text alone (no fuzz, ever).

- :func:`by_context`: an insertion-only hunk goes where *all* of its context lines match, exactly and
  exactly once.
- :func:`after_merge`: what a 3-way merge did with one hunk, accepted only when the merged text differs from
  the fork's by exactly that hunk's change, between that hunk's own neighbouring lines.
- :func:`by_rule`: a placement rule names the hunk (by its patch's sha256) and an anchor in the fork's file.

Each returns the 0-based index of the first changed line and the new lines, or raises :class:`Unplaced`
saying why not, so the caller can try the next method or refuse naming every reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ollama_turbo.check.unidiff import Hunk
from ollama_turbo.core import rules as anchored


class Unplaced(Exception):
    """This method does not place the hunk; ``reason`` says why, for the refusal."""

    def __init__(self, reason: str, *, ambiguous: list[int] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ambiguous = ambiguous or []


class Placed(NamedTuple):
    at: int  # 0-based index of the hunk's first changed line in the new text
    lines: list[str]  # the file with the hunk placed
    note: str = ""  # how, where it matters ("indentation aside")


def occurrences(lines: list[str], needle: list[str]) -> list[int]:
    """Every index where ``needle`` starts in ``lines``, compared exactly."""
    n = len(needle)
    if n == 0:
        return []
    first = needle[0]
    return [i for i in range(len(lines) - n + 1) if lines[i] == first and lines[i:i + n] == needle]


def by_context(lines: list[str], hunk: Hunk) -> Placed:
    """An insertion-only hunk placed where all its context lines, in order and unchanged, occur once."""
    if not hunk.insertion_only:
        raise Unplaced("it changes lines, so its context alone cannot place it")
    pre = hunk.preimage
    if not pre:
        raise Unplaced("it has no context lines")
    found = occurrences(lines, pre)
    how = ""
    if not found:  # the same lines, indented otherwise (every line must still match, in order)
        found = occurrences([ln.strip() for ln in lines], [ln.strip() for ln in pre])
        how = " (indentation aside)"
    if not found:
        raise Unplaced(f"its {len(pre)} context lines do not occur together in the fork's file, even with "
                       "indentation aside")
    if len(found) > 1:
        where = ", ".join(f"line {i + hunk.lead + 1}" for i in found)
        raise Unplaced(f"its {len(pre)} context lines occur {len(found)} times in the fork's file{how} ({where})",
                       ambiguous=[i + hunk.lead + 1 for i in found])
    at = found[0] + hunk.lead
    return Placed(at, lines[:at] + hunk.added + lines[at:], how.strip(" ()"))


def _change(hunk: Hunk) -> tuple[list[str], list[str], list[str], list[str]]:
    """The hunk's lines before its first change, the old and new lines from its first to its last change,
    and the lines after its last change."""
    marks = [ln[0] for ln in hunk.lines]
    first = next(i for i, m in enumerate(marks) if m != " ")
    last = max(i for i, m in enumerate(marks) if m != " ")
    mid = hunk.lines[first:last + 1]
    before = [ln[1:] for ln in hunk.lines[:first]]
    after = [ln[1:] for ln in hunk.lines[last + 1:]]
    return before, [ln[1:] for ln in mid if ln[0] in " -"], [ln[1:] for ln in mid if ln[0] in " +"], after


def after_merge(ours: list[str], merged: list[str], hunk: Hunk) -> int:
    """The index where a clean 3-way merge put ``hunk``; :class:`Unplaced` unless the merged text is exactly
    ``ours`` with the hunk's change made once, between the hunk's own neighbouring lines."""
    before, want_old, want_new, after = _change(hunk)
    p = 0
    while p < min(len(ours), len(merged)) and ours[p] == merged[p]:
        p += 1
    # equal lines beside the change (an added blank line next to a blank line) let it start a little earlier
    for at in range(p, max(-1, p - len(want_new) - len(want_old) - 1), -1):
        if (ours[at:at + len(want_old)] == want_old
                and merged == ours[:at] + want_new + ours[at + len(want_old):]
                and (not before or ours[max(0, at - 1):at] == before[-1:])
                and (not after or ours[at + len(want_old):at + len(want_old) + 1] == after[:1])):
            return at
    raise Unplaced("the merged file differs from the fork's by more than this hunk's change, or the change "
                   "does not sit between the hunk's own neighbouring lines")


@dataclass(frozen=True)
class PlacementRule:
    """Which hunk of which Ollama patch goes where in the fork: the hunk's added lines (always read from the
    user's Ollama checkout), inserted before or after the one line of the fork's file that ``anchor`` (a
    regular expression) matches. ``sha256`` lists the versions of the patch (the sha256 of its file) the rule
    was checked against: a changed patch is noticed, never re-used."""

    patch: str  # its name in Ollama's llama/compat (a leading "001-" aside: Ollama renumbers them)
    sha256: tuple[str, ...]
    hunk: int
    file: str
    anchor: str
    where: str  # before | after
    why: str
    source: str = "ollama-turbo"  # who owns it: the project, or the user's placements file


def by_rule(lines: list[str], hunk: Hunk, rule: PlacementRule) -> Placed:
    if not hunk.insertion_only:
        raise Unplaced("it changes lines; a placement rule only places inserted lines")
    r = anchored.Rule(name=f"{rule.patch} hunk {rule.hunk}", file=rule.file, anchor=rule.anchor,
                      action="insert_before" if rule.where == "before" else "insert_after",
                      text="".join(a + "\n" for a in hunk.added), why=rule.why)
    try:
        new = anchored.apply_rule("".join(ln + "\n" for ln in lines), r).splitlines()
    except anchored.RuleError as exc:
        raise Unplaced(f"placement rule ({rule.source}): {exc.message}") from None
    at = next((i for i, (a, b) in enumerate(zip(lines, new, strict=False)) if a != b), len(lines))
    return Placed(at, new)
