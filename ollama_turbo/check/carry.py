"""Carry Ollama's compat patches (``llama/compat/**/*.patch``) onto the fork, safely, hunk by hunk.

Ollama makes its patches for the llama.cpp it pins; the fork is another llama.cpp. For each patch, in the
order Ollama's ``apply-patch.cmake`` applies them:

1. **plain**: ``git apply`` takes the whole patch as it is (what Ollama's own CMake would do).
2. else each hunk in turn:
   a. **3-way**: a merge of that hunk with the pinned upstream as the base (``git merge-file``), accepted only
      when the result is the fork's file with exactly the hunk's change, between the hunk's own neighbours;
   b. **context**: an insertion-only hunk goes where all of its context lines occur exactly once;
   c. **rule**: a placement rule names the hunk, by its patch's sha256, and an anchor in the fork.
   A hunk nothing places is refused, naming it and every reason (both sides where the fork changed its
   lines, every line where its context is ambiguous). Nothing is ever placed by fuzz.
3. A patch that concerns a model architecture the fork lacks is left out only when the user names it
   (``--leave-out laguna``); files of the web UI the fork lacks are not needed (the build turns the UI off).

The lines inserted always come from the user's Ollama checkout. What was carried becomes a patch that applies
plainly to the fork (``Carried.text``), which the build gives Ollama's CMake in place of the original, so
Ollama's own mechanism still applies it (and its compat sources stay linked).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.check import placement, unidiff
from ollama_turbo.check.placement import PlacementRule, Unplaced
from ollama_turbo.check.unidiff import Hunk, Patch
from ollama_turbo.core import proc
from ollama_turbo.core.errors import SourceError, TurboError

PLAIN, THREE_WAY, CONTEXT, RULE, LEFT_OUT, NOT_NEEDED = "plain", "3-way", "context", "rule", "left-out", "not-needed"
# a patch as a whole: applied as it is, carried hunk by hunk, left out by the user, not needed, or refused
APPLIED, CARRIED, REFUSED = "applied", "carried", "refused"

# llama-server's web UI (upstream's tools/ui/): Ollama builds llama-server without it
WEB_UI_PATHS = ("tools/ui/", "tools/server/webui/", "tools/server/public/")
ARCH_ENUM = re.compile(r"\bLLM_ARCH_([A-Z0-9_]+)\b")


class CarryError(TurboError):
    """A patch (or one of its hunks) that cannot be carried onto the fork; nothing was built. ``feature``
    names what the patch adds that the fork lacks (a model architecture), where that is why."""

    def __init__(self, message: str, *, hint: str | None = None, feature: str = "") -> None:
        super().__init__(message, hint=hint)
        self.feature = feature


class NoUpstream(Exception):  # noqa: N818 - a reason, not a failure: the 3-way method is then not tried
    """The pinned upstream cannot be had (no such tag, no source): no 3-way merges."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Placement:
    hunk: int
    file: str
    header: str
    method: str
    line: int | None  # where the hunk's change starts in the fork's file, once placed (1-based)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"hunk": self.hunk, "file": self.file, "header": self.header, "method": self.method,
                "line": self.line, "detail": self.detail}

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Carried:
    """One of Ollama's patches as carried onto the fork."""

    patch: str
    sha256: str
    status: str  # applied | carried | left-out | not-needed | refused
    placements: list[Placement] = field(default_factory=list)
    text: str = ""  # what Ollama's CMake is given in its place ("" for a patch left out or not needed)
    feature: str = ""  # e.g. "model architecture laguna", when the patch concerns one the fork lacks
    why: str = ""
    sources_left_out: list[str] = field(default_factory=list)  # Ollama's compat sources of a left-out feature
    hint: str = ""  # a refused patch: the way out

    @property
    def methods(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.placements:
            out[p.method] = out.get(p.method, 0) + 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {m}" for m, n in self.methods.items())
        if self.status in (LEFT_OUT, NOT_NEEDED, REFUSED):
            return f"{self.status}: {self.why}"
        return f"{self.status} ({counts})" if counts else self.status

    def to_json(self) -> dict[str, Any]:
        return {"patch": self.patch, "sha256": self.sha256, "status": self.status,
                "hunks": [p.to_json() for p in self.placements], "feature": self.feature, "why": self.why,
                "sources_left_out": self.sources_left_out}


@dataclass
class Upstream:
    """The llama.cpp Ollama pins, as the base of 3-way merges: ``read`` gives a file at the pin (None where
    the tree lacks it; :class:`NoUpstream` where the source cannot be had); ``label`` names it in reports."""

    label: str
    read: Callable[[str], str | None] | None = None
    absent: str = ""  # why there is none
    used: bool = False

    def file(self, path: str) -> str | None:
        if self.read is None or self.absent:
            raise NoUpstream(self.absent or "none configured")
        try:
            text = self.read(path)
        except NoUpstream as exc:
            self.absent = str(exc)
            raise
        self.used = True
        return text

    def describe(self) -> str:
        if self.absent or self.read is None:
            return f"none ({self.absent or 'none configured'})"
        return self.label if self.used else f"{self.label}: not needed (no 3-way merge)"


def architectures(patch: Patch) -> set[str]:
    """The model architectures a patch concerns: one it adds to ``enum llm_arch``, or whose
    ``src/models/<arch>.cpp`` it changes."""
    out: set[str] = set()
    for f in patch.files:
        if f.path == "src/llama-arch.h":
            out |= {m.lower() for h in f.hunks for a in h.added for m in ARCH_ENUM.findall(a)}
        m = re.fullmatch(r"src/models/([a-z0-9_-]+)\.cpp", f.path)
        if m:
            out.add(m.group(1))
    return {a for a in out if a not in ("unknown",)}


def fork_architectures(arch_h: str) -> set[str]:
    return {m.lower() for m in ARCH_ENUM.findall(arch_h)}


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _nearest(lines: list[str], needle: list[str], near: int) -> int | None:
    found = placement.occurrences(lines, needle)
    return min(found, key=lambda i: abs(i - near)) if found else None


def _merge3(ours: list[str], base: list[str], theirs: list[str]) -> tuple[list[str] | None, tuple[str, str]]:
    """``git merge-file`` of one hunk: the merged lines when clean, else None and the fork's and the pinned
    upstream's sides of the first conflict."""
    with tempfile.TemporaryDirectory(prefix="turbo-merge-") as tmp:
        paths = []
        for name, lines in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = Path(tmp) / name
            p.write_text("".join(ln + "\n" for ln in lines))
            paths.append(str(p))
        r = proc.run(["git", "merge-file", "-p", "--diff3", *paths], check=False)
    if r.returncode == 0:
        return _lines(r.stdout), ("", "")
    if r.returncode < 0 or r.returncode > 127:
        raise CarryError(f"git merge-file failed: {proc.tail(r.stderr, 3)}")
    m = re.search(r"^<<<<<<<[^\n]*\n(.*?)^\|\|\|\|\|\|\|[^\n]*\n(.*?)^=======", r.stdout, re.S | re.M)
    return None, ((m.group(1), m.group(2)) if m else ("", ""))


def _brief(text: str) -> str:
    return " / ".join(ln.strip() for ln in text.splitlines() if ln.strip())[:200] or "nothing"


def _three_way(lines: list[str], hunk: Hunk, base: list[str], upstream: Upstream) -> placement.Placed:
    pre = hunk.preimage
    s = _nearest(base, pre, hunk.old_start - 1)  # where git apply puts it in the pinned tree, as Ollama's CMake
    if s is None:
        raise SourceError(
            f"{upstream.label} is not the llama.cpp this Ollama pins: {hunk.describe()} does not apply to its "
            f"{hunk.file}, as it does to the pin Ollama builds with",
            hint="point turbo.sources.upstream (or --upstream) at llama.cpp with the exact tag Ollama's "
                 "LLAMA_CPP_VERSION names (a clone of llama.cpp, or invoke upstream-tree); nothing was built")
    theirs = base[:s] + hunk.postimage + base[s + len(pre):]
    merged, (fork_side, base_side) = _merge3(lines, base, theirs)
    if merged is None:
        raise Unplaced(f"a 3-way merge with {upstream.label} conflicts: beside the hunk the fork has "
                       f"'{_brief(fork_side)}' where {upstream.label} has '{_brief(base_side)}'")
    return placement.Placed(placement.after_merge(lines, merged, hunk), merged)


def patch_stem(name: str) -> str:
    """A patch's name without its folder and its order number: Ollama renumbers and moves them."""
    return re.sub(r"^\d+-", "", name.rsplit("/", 1)[-1])


def _rule_for(rules: Iterable[PlacementRule], patch: Patch, hunk: Hunk) -> tuple[PlacementRule | None,
                                                                                   CarryError | None]:
    """The placement rule for this hunk of this version of the patch; or the error that a rule exists for
    this hunk of another version of it (raised only if nothing else places the hunk)."""
    stale = None
    for r in rules:
        if patch_stem(r.patch) == patch_stem(patch.name) and r.hunk == hunk.index and r.file == hunk.file:
            if patch.sha256 in r.sha256:
                return r, None
            stale = CarryError(
                f"the placement rule for {hunk.describe()} of {patch.name} ({r.source}) was checked against other "
                f"versions of that patch (sha256 {', '.join(s[:12] for s in r.sha256)}); this one is "
                f"{patch.sha256[:12]}",
                hint="the patch changed: check where the hunk belongs in the fork, then add this sha256 to the rule "
                     "(or write one for it); nothing was built")
    return None, stale


def _feature_refusal(patch: Patch, missing: set[str], reasons: list[str]) -> CarryError:
    archs = ", ".join(sorted(missing))
    flag = ",".join(sorted(missing))
    return CarryError(
        feature=f"model architecture {archs}",
        message=f"{patch.name} concerns model architecture {archs}, which the fork's llama.cpp lacks (no "
        f"LLM_ARCH_{'/'.join(a.upper() for a in sorted(missing))} in src/llama-arch.h), and it cannot be carried "
        f"onto the fork: {'; '.join(reasons)[:600]}",
        hint=f"leave it out with --leave-out {flag} (or turbo.build.leave_out: [{flag}]): the build then does not "
             f"run models of architecture {archs}, which its manifest, status and the compatibility record say; "
             "or use an Ollama release without it (invoke api-check --scan-ollama). Nothing was built")


class Carrier:
    """Carries one Ollama release's compat patches onto a scratch copy of the fork's files, in order."""

    def __init__(self, tree: Path, *, upstream: Upstream, rules: Iterable[PlacementRule] = (),
                 leave_out: Iterable[str] = (), fork_archs: set[str] | None = None,
                 compat_sources: Iterable[str] = ()) -> None:
        self.tree = tree
        self.upstream = upstream
        self.rules = list(rules)
        self.leave_out = {a.strip().lower() for a in leave_out if a.strip()}
        self.fork_archs = fork_archs if fork_archs is not None else set()
        self.compat_sources = list(compat_sources)  # Ollama's llama/compat files that are not patches
        if not (tree / ".git").exists():  # inside another repository, git apply skips paths outside the cwd
            proc.run(["git", "init", "--quiet", str(tree)])

    def carry(self, patch: Patch, text: str) -> Carried:
        missing_archs = architectures(patch) - self.fork_archs
        left = missing_archs & self.leave_out
        if left:
            return self._left_out(patch, left)
        path = self.tree / ".turbo-patch"
        path.write_text(text)
        if proc.run(["git", "apply", "--check", str(path)], cwd=self.tree, check=False).ok:
            before = {f.path: self._read(f.path) or [] for f in patch.files}
            proc.run(["git", "apply", "--whitespace=nowarn", str(path)], cwd=self.tree)
            path.unlink()
            return Carried(patch.name, patch.sha256, APPLIED, self._plain_lines(patch, before), text)
        path.unlink()
        placements: list[Placement] = []
        out: list[str] = []
        for f in patch.files:
            original = self._read(f.path)
            if original is None:
                placements += self._absent(patch, f, missing_archs)
                continue
            lines = original
            for hunk in f.hunks:
                lines, placed = self._place(patch, hunk, lines, missing_archs)
                placements.append(placed)
            (self.tree / f.path).write_text("".join(ln + "\n" for ln in lines))
            out.append(unidiff.render_file(f.path, original, lines))
        methods = {p.method for p in placements}
        status = NOT_NEEDED if methods == {NOT_NEEDED} else CARRIED
        carried = Carried(patch.name, patch.sha256, status, placements)
        if status == NOT_NEEDED:
            carried.why = placements[0].detail
            return carried
        carried.text = (f"ollama-turbo: {patch.name} (sha256 {patch.sha256[:12]}) carried onto the fork, hunk by hunk: "
                        + "; ".join(f"hunk {p.hunk} {p.method} at {p.where()}" for p in placements)
                        + "\n---\n" + "".join(out))
        return carried

    def _read(self, rel: str) -> list[str] | None:
        p = self.tree / rel
        return _lines(p.read_text(errors="surrogateescape")) if p.is_file() else None

    def _plain_lines(self, patch: Patch, before: dict[str, list[str]]) -> list[Placement]:
        out = []
        for f in patch.files:
            after = self._read(f.path) or []
            for h in f.hunks:
                at = _nearest(after, h.postimage, h.new_start - 1) if h.postimage else None
                line = None if at is None else at + h.lead + 1
                out.append(Placement(h.index, f.path, h.header, PLAIN, line, "git apply, as Ollama's CMake does"))
        return out

    def _left_out(self, patch: Patch, archs: set[str]) -> Carried:
        names = ", ".join(sorted(archs))
        folder = patch.name.rsplit("/", 1)[0] + "/"
        sources = sorted(s for s in self.compat_sources
                         if s.startswith(folder) and any(Path(s).stem.startswith(a) for a in archs))
        why = (f"model architecture {names}: left out as asked (--leave-out); models of architecture {names} are "
               "not supported by this build")
        return Carried(patch.name, patch.sha256, LEFT_OUT,
                       [Placement(h.index, h.file, h.header, LEFT_OUT, None, why) for h in patch.hunks],
                       feature=f"model architecture {names}", why=why, sources_left_out=sources)

    def _absent(self, patch: Patch, f: unidiff.FilePatch, missing_archs: set[str]) -> list[Placement]:
        """A file of the patch the fork does not have."""
        if f.new_file:
            (self.tree / f.path).parent.mkdir(parents=True, exist_ok=True)
            new = [ln[1:] for h in f.hunks for ln in h.lines if ln[0] == "+"]
            (self.tree / f.path).write_text("".join(ln + "\n" for ln in new))
            return [Placement(h.index, f.path, h.header, PLAIN, h.new_start, "a new file") for h in f.hunks]
        if f.path.startswith(WEB_UI_PATHS):
            why = (f"the fork has no {f.path}: it is llama-server's web UI, which Ollama's build turns off "
                   "(--no-webui, the UI's CMake switch OFF)")
            return [Placement(h.index, f.path, h.header, NOT_NEEDED, None, why) for h in f.hunks]
        reason = f"the fork has no {f.path}"
        if missing_archs:
            raise _feature_refusal(patch, missing_archs, [reason])
        raise CarryError(f"{patch.name}: {reason}, which {f.hunks[0].describe() if f.hunks else 'the patch'} "
                         "changes", hint="use an Ollama release whose patches the fork can take (invoke api-check "
                                         "--scan-ollama), or a fork that has the file; nothing was built")

    def _place(self, patch: Patch, hunk: Hunk, lines: list[str],
               missing_archs: set[str]) -> tuple[list[str], Placement]:
        reasons: list[str] = []
        ambiguous: list[int] = []
        attempts: list[tuple[str, Callable[[], placement.Placed], str]] = []
        try:
            base = self.upstream.file(hunk.file)
        except NoUpstream as exc:
            reasons.append(f"3-way merge: no pinned upstream ({exc})")
        else:
            if base is None:
                reasons.append(f"3-way merge: {self.upstream.label} has no {hunk.file}")
            else:
                attempts.append((THREE_WAY, lambda: _three_way(lines, hunk, _lines(base), self.upstream),
                                 f"merged with {self.upstream.label} as the base"))
        attempts.append((CONTEXT, lambda: placement.by_context(lines, hunk), "its context lines occur once"))
        rule, stale = _rule_for(self.rules, patch, hunk)
        if rule is not None:
            attempts.append((RULE, lambda: placement.by_rule(lines, hunk, rule),
                             f"placement rule ({rule.source}): {rule.why}"))
        for method, attempt, detail in attempts:
            try:
                placed = attempt()
            except Unplaced as exc:
                reasons.append(f"{method}: {exc.reason}")
                ambiguous += exc.ambiguous
                continue
            return placed.lines, Placement(hunk.index, hunk.file, hunk.header, method, placed.at + 1,
                                           detail + (f" ({placed.note})" if placed.note else ""))
        if stale is not None:
            raise stale
        if rule is None:
            reasons.append("rule: no placement rule names it")
        if missing_archs:
            raise _feature_refusal(patch, missing_archs, [f"{hunk.describe()}: " + "; ".join(reasons)])
        what = "is ambiguous" if ambiguous else "cannot be placed"
        raise CarryError(
            f"{patch.name}: {hunk.describe()} {what} in the fork: " + "; ".join(reasons),
            hint=("add a placement rule naming the hunk, the patch's sha256 and an anchor in the fork (turbo.build."
                  "placements, see docs/build.md), " if hunk.insertion_only else "")
            + "or use an Ollama release whose patches the fork can take (invoke api-check --scan-ollama); "
              "nothing was built")


def carry_all(named: list[tuple[str, str]], carrier: Carrier) -> list[Carried]:
    """Every patch (name, text) in Ollama's order, each carried onto what the ones before it left."""
    return [carrier.carry(unidiff.parse(name, text), text) for name, text in named]
