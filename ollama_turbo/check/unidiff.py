"""Unified diffs as data: a patch's files and hunks, read from Ollama's checkout, and a diff written back.

Pure text in, text out. Only what ``git diff`` / ``git format-patch`` write is read (``diff --git`` headers,
``---``/``+++``, ``@@ -a,b +c,d @@`` hunks, ``\\ No newline at end of file``); anything else before the first
``diff --git`` is the patch's preamble (a mail header, a message).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ollama_turbo.core.errors import TurboError

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
NO_NEWLINE = "\\ No newline at end of file"


class DiffError(TurboError):
    """A patch file that is not a unified diff this module can read."""


@dataclass(frozen=True)
class Hunk:
    """One ``@@`` hunk: its position in the file the patch was made for, and its lines with their marks."""

    file: str
    index: int        # 1-based, counted over the whole patch (the way a person counts hunks in it)
    old_start: int
    new_start: int
    section: str      # what follows the second ``@@`` (git's function context), for people
    lines: tuple[str, ...]  # each with its mark: " " context, "-" removed, "+" added

    @property
    def header(self) -> str:
        old = sum(1 for ln in self.lines if ln[0] in " -")
        new = sum(1 for ln in self.lines if ln[0] in " +")
        return f"@@ -{self.old_start},{old} +{self.new_start},{new} @@{self.section}"

    @property
    def preimage(self) -> list[str]:
        """The lines the hunk expects in the file (context and removed), without marks."""
        return [ln[1:] for ln in self.lines if ln[0] in " -"]

    @property
    def postimage(self) -> list[str]:
        return [ln[1:] for ln in self.lines if ln[0] in " +"]

    @property
    def added(self) -> list[str]:
        return [ln[1:] for ln in self.lines if ln[0] == "+"]

    @property
    def insertion_only(self) -> bool:
        """Only adds lines, in one run: its preimage is context alone."""
        marks = "".join(ln[0] for ln in self.lines)
        return "-" not in marks and bool(re.fullmatch(r" *\++ *", marks))

    @property
    def lead(self) -> int:
        """Context lines before the first change."""
        n = 0
        for ln in self.lines:
            if ln[0] != " ":
                break
            n += 1
        return n

    def first_added(self) -> str:
        return next((a.strip() for a in self.added if a.strip()), "")

    def describe(self) -> str:
        """How an error names this hunk: its number, file, header and first added line."""
        first = self.first_added()
        return (f"hunk {self.index} ({self.file} {self.header.split(' @@')[0]} @@"
                + (f", adding '{first[:70]}'" if first else "") + ")")


@dataclass(frozen=True)
class FilePatch:
    path: str                 # the file the patch changes (its b/ side)
    new_file: bool
    deleted: bool
    hunks: tuple[Hunk, ...]
    no_newline: bool = False  # the new file ends without a newline


@dataclass(frozen=True)
class Patch:
    name: str                 # where it is in Ollama's tree (llama/compat/...), as reports name it
    sha256: str               # of the file's bytes: a changed patch is a different patch
    preamble: str
    files: tuple[FilePatch, ...]

    @property
    def hunks(self) -> list[Hunk]:
        return [h for f in self.files for h in f.hunks]

    @property
    def targets(self) -> list[str]:
        return [f.path for f in self.files]


def parse(name: str, text: str) -> Patch:
    """A patch file's text as a :class:`Patch`; :class:`DiffError` naming the line where it is not a diff."""
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.startswith("diff --git ")), None)
    if first is None:
        raise DiffError(f"{name}: no 'diff --git' header: not a patch git writes",
                        hint="is this one of Ollama's compat patches?")
    preamble = "\n".join(lines[:first])
    files: list[FilePatch] = []
    i = first
    counter = 0
    while i < len(lines):
        m = re.match(r"^diff --git a/(\S+) b/(\S+)$", lines[i])
        if not m:
            raise DiffError(f"{name}:{i + 1}: expected 'diff --git a/... b/...', found {lines[i][:60]!r}")
        path, new_file, deleted = m.group(2), False, False
        i += 1
        while i < len(lines) and not lines[i].startswith(("@@", "diff --git ")):
            new_file = new_file or lines[i].startswith("new file mode")
            deleted = deleted or lines[i].startswith("deleted file mode")
            i += 1
        hunks: list[Hunk] = []
        no_newline = False
        while i < len(lines) and lines[i].startswith("@@"):
            h = HUNK_HEADER.match(lines[i])
            if not h:
                raise DiffError(f"{name}:{i + 1}: malformed hunk header {lines[i][:60]!r}")
            old_n = int(h.group(2) if h.group(2) is not None else 1)
            new_n = int(h.group(4) if h.group(4) is not None else 1)
            body: list[str] = []
            i += 1
            while (old_n > 0 or new_n > 0) and i < len(lines):
                ln = lines[i]
                if ln == NO_NEWLINE:
                    i += 1
                    continue
                mark = ln[:1] or " "  # git writes an empty context line as " ", some editors strip it
                if mark not in " +-":
                    raise DiffError(f"{name}:{i + 1}: hunk line starts with {mark!r}, expected ' ', '+' or '-'")
                body.append(mark + ln[1:])
                old_n -= mark in " -"
                new_n -= mark in " +"
                i += 1
            if old_n or new_n:
                raise DiffError(f"{name}: the hunk of {path} at {lines[i - 1][:40]!r} ends early")
            if i < len(lines) and lines[i] == NO_NEWLINE:
                no_newline = body[-1][0] in " +"
                i += 1
            counter += 1
            hunks.append(Hunk(path, counter, int(h.group(1)), int(h.group(3)), h.group(5), tuple(body)))
        files.append(FilePatch(path, new_file, deleted, tuple(hunks), no_newline))
        while i < len(lines) and not lines[i].startswith("diff --git "):
            i += 1  # what follows the last hunk: format-patch's signature ("-- ", git's version)
    return Patch(name, hashlib.sha256(text.encode()).hexdigest(), preamble, tuple(files))


def render_file(path: str, old: list[str], new: list[str], *, context: int = 3) -> str:
    """A ``git apply``-able diff of one file from ``old`` to ``new`` (lines without their newlines; a file
    that does not end with a newline is out of scope: C and C++ sources here all do)."""
    import difflib

    body = list(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}", n=context, lineterm=""))
    if not body:
        return ""
    return f"diff --git a/{path} b/{path}\n" + "\n".join(body) + "\n"
