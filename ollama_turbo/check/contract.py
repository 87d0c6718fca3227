"""What Ollama relies on, read from its sources, and whether the fork provides it.

Era B: the C names its cgo code uses, the Go KV-cache allowlists, ``llama/patches`` applied
with ``git am -3``. Era C: the llama-server flags ``llm/llama_server.go`` passes (always or
only under a condition), the cache types the fork's ``--cache-type-k`` accepts, and
``llama/compat`` patches applied with ``git apply``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core import proc
from ollama_turbo.core.rules import function_span
from ollama_turbo.core.sources import Checkout

CGO_REF = re.compile(r"\bC\.(?:struct_|enum_|union_)?([A-Za-z_][A-Za-z0-9_]*)")
SKIP_DIRS = {"vendor", ".git", "build", "dist"}


def go_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.go")):
        rel = p.relative_to(root).parts
        if any(part in SKIP_DIRS for part in rel) or p.name.endswith("_test.go"):
            continue
        out.append(p)
    return out


def cgo_references(root: Path) -> dict[str, list[str]]:
    """``C.<name>`` uses in Ollama's Go code: name -> ["file:line", ...]."""
    refs: dict[str, list[str]] = {}
    for p in go_files(root):
        text = p.read_text(errors="replace")
        if 'import "C"' not in text:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("//", 1)[0]
            for m in CGO_REF.finditer(code):
                refs.setdefault(m.group(1), []).append(f"{p.relative_to(root)}:{i}")
    return refs


@dataclass
class Allowlist:
    file: str
    function: str
    line: int
    types: list[str]


ALLOWLIST_FUNCS = ("kvCacheTypeFromStr", "SupportsKVCacheType", "kvCacheBytesPerElement")


def kv_allowlists(root: Path) -> list[Allowlist]:
    """The Go functions that decide which OLLAMA_KV_CACHE_TYPE values are honoured."""
    out = []
    for p in go_files(root):
        text = p.read_text(errors="replace")
        for fn in ALLOWLIST_FUNCS:
            span = function_span(text, fn)
            if span is None:
                continue
            types = sorted(set(re.findall(r'"([a-z0-9_]+)"', text[span[0]:span[1]])))
            out.append(Allowlist(str(p.relative_to(root)), fn, text[: span[0]].count("\n") + 1, types))
    return out


@dataclass
class Flag:
    name: str
    always: bool
    line: int
    in_fork: bool | None = None


FLAG_LITERAL = re.compile(r'"(--?[a-z][a-z0-9-]*)"')
COND_OPENERS = re.compile(r"^\s*(\}\s*)?(if|else|for|switch|case|default)\b")


def server_flags(go_source: str) -> list[Flag]:
    """llama-server flags in Ollama's argv builder, each marked ``always`` or conditional.

    A flag is conditional when it sits inside an if/else/for/switch block, or after an early
    ``return`` inside such a block in the same function (the guard-clause style:
    ``if len(x) == 0 { return params }`` then ``append(params, "--flag", ...)``). Error returns
    (``return nil, err``) do not count: they leave only when something failed.
    """
    flags: dict[str, Flag] = {}
    stack: list[bool] = []  # for each open brace: is it a conditional block
    guarded = False  # an early return has been seen in the current function
    for i, line in enumerate(go_source.splitlines(), 1):
        code = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0) if FLAG_LITERAL.fullmatch(m.group(0))
                      else '""', line.split("//", 1)[0])
        if re.match(r"^func\b", code):
            guarded = False
        conditional_line = bool(COND_OPENERS.match(code))
        in_cond = any(stack)
        for m in FLAG_LITERAL.finditer(code):
            name = m.group(1)
            always = not in_cond and not guarded
            if name in flags:
                flags[name].always = flags[name].always or always
            else:
                flags[name] = Flag(name, always, i)
        ret = re.search(r"\breturn\b(.*)", code)
        if in_cond and ret and not re.search(r"\b(err|nil|Errorf|errors\.)", ret.group(1)):
            guarded = True  # the normal path may leave here: what follows runs only sometimes
        for ch in re.sub(r'"[^"]*"', "", code):
            if ch == "{":
                stack.append(conditional_line)
            elif ch == "}" and stack:
                stack.pop()
    return list(flags.values())


@dataclass
class PatchResult:
    patch: str
    status: str  # applied | already-applied | conflict | missing-files
    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def patch_targets(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"^diff --git a/(\S+) b/(\S+)", text, re.M):
        out.append(m.group(2))
    return out


def try_compat_patches(patches: list[Path], tree: Path, root: Path) -> list[PatchResult]:
    """``git apply`` each patch in order on ``tree`` (a scratch copy: it is modified).

    ``tree`` is made a repository of its own first: inside another repository's work tree,
    ``git apply`` silently skips every path outside the current directory.
    """
    if not (tree / ".git").exists():
        proc.run(["git", "init", "--quiet", str(tree)])
    results = []
    for p in patches:
        rel = str(p.relative_to(root))
        text = p.read_text(errors="replace")
        targets = patch_targets(text)
        missing = [t for t in targets if not (tree / t).exists()]
        if proc.run(["git", "apply", "--reverse", "--check", str(p)], cwd=tree, check=False).ok:
            results.append(PatchResult(rel, "already-applied", targets))
            continue
        check = proc.run(["git", "apply", "--check", str(p)], cwd=tree, check=False)
        if check.ok:
            proc.run(["git", "apply", str(p)], cwd=tree)
            results.append(PatchResult(rel, "applied", targets))
        else:
            bad = sorted(set(re.findall(r"error: (?:patch failed: )?([^:\s]+)(?::\d+)?", check.stderr)))
            bad = [b for b in bad if b in targets] or targets
            results.append(PatchResult(rel, "missing-files" if missing else "conflict", bad, missing,
                                       proc.tail(check.stderr, 6)))
    return results


def try_am_patches(patches: list[Path], fork: Checkout, scratch: Path, root: Path) -> list[PatchResult]:
    """``git am -3`` each era B patch on a scratch clone of the fork; a conflict is skipped."""
    if scratch.exists():
        shutil.rmtree(scratch)
    proc.run(["git", "clone", "--quiet", "--no-checkout", str(fork.git_dir), str(scratch)])
    env = {"GIT_COMMITTER_NAME": "ollama-turbo", "GIT_COMMITTER_EMAIL": "turbo@localhost",
           "GIT_AUTHOR_NAME": "ollama-turbo", "GIT_AUTHOR_EMAIL": "turbo@localhost"}
    proc.run(["git", "checkout", "--quiet", "--detach", fork.sha], cwd=scratch)
    results = []
    for p in patches:
        rel = str(p.relative_to(root))
        targets = patch_targets(p.read_text(errors="replace"))
        r = proc.run(["git", "am", "-3", "--quiet", str(p)], cwd=scratch, extra_env=env, check=False)
        if r.ok:
            results.append(PatchResult(rel, "applied", targets))
            continue
        unmerged = proc.run(["git", "diff", "--name-only", "--diff-filter=U"], cwd=scratch, check=False)
        files = unmerged.stdout.split() or targets
        missing = [t for t in targets if not (scratch / t).exists()]
        proc.run(["git", "am", "--skip"], cwd=scratch, extra_env=env, check=False)
        proc.run(["git", "am", "--abort"], cwd=scratch, check=False)
        results.append(PatchResult(rel, "conflict", files, missing, proc.tail(r.stderr or r.stdout, 6)))
    return results
