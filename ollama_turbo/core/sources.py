"""Source trees: git checkouts of Ollama, the fork and upstream; era detection and pins.

A local path is used in place and only read (by ref, through git). A URL is mirrored once
into ``<workspace>/sources/`` and fetched again on later runs.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core import proc, redact
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import CommandError, SourceError
from ollama_turbo.core.settings import Settings, Source


def is_url(s: str) -> bool:
    return "://" in s or bool(re.match(r"^[\w.-]+@[\w.-]+:", s))


@dataclass
class Checkout:
    """One source at one resolved commit."""

    name: str
    url: str
    git_dir: Path
    ref: str
    sha: str
    local: bool

    @property
    def short(self) -> str:
        return self.sha[:9]

    def git(self, *args: str, check: bool = True) -> proc.Result:
        return proc.run(["git", "--git-dir", str(self.git_dir), *args], check=check)

    def exists(self, path: str) -> bool:
        return self.git("cat-file", "-e", f"{self.sha}:{path}", check=False).ok

    def read(self, path: str) -> str:
        r = self.git("show", f"{self.sha}:{path}", check=False)
        if not r.ok:
            raise SourceError(f"{self.name}: {path} not found at {self.ref} ({self.short}) in {self.url}")
        return r.stdout

    def grep(self, pattern: str, *globs: str) -> list[tuple[str, int, str]]:
        """(file, line, text) of every line matching the extended regex ``pattern`` at this commit."""
        r = self.git("grep", "-n", "-E", "-e", pattern, self.sha, "--", *globs, check=False)
        out = []
        for line in r.stdout.splitlines():
            parts = line.split(":", 3)  # <sha>:<file>:<line>:<text>
            if len(parts) == 4 and parts[2].isdigit():
                out.append((parts[1], int(parts[2]), parts[3]))
        return out

    def export(self, dest: Path, paths: list[str] | None = None) -> Path:
        """Write the tree (or some paths of it) at this commit into ``dest`` (cached by sha)."""
        marker = dest / ".turbo-export"
        if marker.exists() and marker.read_text() == self.sha:
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        present = [p for p in (paths or []) if self.exists(p)]
        if paths is not None and not present:
            return dest
        data = proc.output_bytes(["git", "--git-dir", str(self.git_dir), "archive", "--format=tar",
                                  self.sha, *present])
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            tf.extractall(dest, filter="data")
        marker.write_text(self.sha)
        return dest


def local_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a local checkout, before anything is opened (None: a URL, or a checkout)."""
    if is_url(url):
        return None
    path = Path(url).expanduser()
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "a file, not a git checkout"
    return None if _git_dir(path) is not None else "not a git checkout (no .git)"


def _git_dir(path: Path) -> Path | None:
    r = proc.run(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"], check=False)
    return Path(r.stdout.strip()) if r.ok else None


def mirror_dir(url: str, workspace: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url.rstrip("/").rsplit("/", 2)[-1]).strip("-")[:40]
    return workspace / "sources" / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:10]}.git"


def ref_for(url: str, flag_ref: str, configured: Source) -> str:
    """The ref to read: the flag's; else the one the settings name; else, for a local checkout,
    what is checked out (HEAD); else the configured default branch of the URL."""
    if flag_ref:
        return flag_ref
    if configured.ref_given or is_url(url):
        return configured.ref
    return "HEAD"


IN_PROGRESS = {"rebase-merge": "a rebase", "rebase-apply": "a rebase or git am", "MERGE_HEAD": "a merge",
               "CHERRY_PICK_HEAD": "a cherry-pick", "REVERT_HEAD": "a revert", "BISECT_LOG": "a bisect"}


def head_name(git_dir: Path) -> str:
    """What HEAD is, for reports: its branch, else a tag pointing at it, else ``HEAD``."""
    for argv in (["symbolic-ref", "--short", "-q", "HEAD"], ["describe", "--tags", "--exact-match", "HEAD"]):
        r = proc.run(["git", "--git-dir", str(git_dir), *argv], check=False)
        if r.ok and r.stdout.strip():
            return r.stdout.strip()
    return "HEAD"


def open_source(name: str, url: str, ref: str, workspace: Path, *, fetch: bool = True) -> Checkout:
    """Resolve ``url`` (a local git checkout or a git URL) at ``ref`` (``HEAD``: what is checked out)."""
    if not is_url(url):
        path = Path(url).expanduser()
        if not path.exists():
            raise SourceError(f"{name}: {path} does not exist",
                              hint=f"set turbo.sources.{name}.url to a git checkout or a URL")
        git_dir = _git_dir(path)
        if git_dir is None:
            raise SourceError(f"{name}: {path} is not a git repository",
                              hint="clone it with git, or point at a git URL")
        if ref == "HEAD":
            busy = [what for marker, what in IN_PROGRESS.items() if (git_dir / marker).exists()]
            if busy:
                raise SourceError(f"{name}: {path} is in the middle of {busy[0]}; its HEAD is not a commit anyone "
                                  "chose to build",
                                  hint=f"finish or abort it (e.g. git -C {path} rebase --continue / --abort), or "
                                       f"name the ref to read with --{name}-ref")
            sha = resolve(name, git_dir, ref, url)
            return Checkout(name, str(path), git_dir, head_name(git_dir), sha, local=True)
        return Checkout(name, str(path), git_dir, ref, resolve(name, git_dir, ref, url), local=True)
    git_dir = mirror_dir(url, workspace)
    try:
        if not git_dir.exists():
            git_dir.parent.mkdir(parents=True, exist_ok=True)
            proc.run(["git", "clone", "--mirror", "--quiet", url, str(git_dir)], timeout=3600)
        elif fetch:
            proc.run(["git", "--git-dir", str(git_dir), "remote", "update", "--prune"], timeout=3600)
    except CommandError as exc:
        raise SourceError(redact.text(f"{name}: cannot fetch {url}: {exc.stderr_tail.strip().splitlines()[-1:]}"),
                          hint="check the URL and your network, or use a local checkout") from None
    return Checkout(name, url, git_dir, ref, resolve(name, git_dir, ref, url), local=False)


def open_configured(settings: Settings, name: str, url: str = "", ref: str = "") -> Checkout:
    """The configured source ``name`` (ollama, fork, upstream) opened at its ref: ``url``/``ref`` are a task's
    flags (``--fork``, ``--fork-ref``), else the settings' (see :func:`ref_for`). The one way every task opens
    a source, so a flag, a settings file and the environment mean the same thing everywhere."""
    configured: Source = getattr(settings.sources, name)
    url = url or configured.url
    return open_source(name, url, ref_for(url, ref, configured), settings.workspace)


def resolve(name: str, git_dir: Path, ref: str, url: str) -> str:
    for candidate in (ref, f"origin/{ref}", f"refs/tags/{ref}"):
        r = proc.run(["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet",
                      f"{candidate}^{{commit}}"], check=False)
        if r.ok:
            return r.stdout.strip()
    tags = proc.run(["git", "--git-dir", str(git_dir), "tag", "--sort=-creatordate"], check=False)
    near = ", ".join(tags.stdout.split()[:8]) or "none"
    raise SourceError(redact.text(f"{name}: ref {ref!r} not found in {url} (newest tags: {near})"),
                      hint=f"check turbo.sources.{name}.ref or the --{name}-ref flag")


def dirty(co: Checkout) -> list[str]:
    """Uncommitted changes of a local checkout (empty for mirrors)."""
    if not co.local:
        return []
    r = proc.run(["git", "-C", co.url, "status", "--porcelain", "--untracked-files=no"], check=False)
    return [ln[3:] for ln in r.stdout.splitlines() if ln.strip()]


@dataclass(frozen=True)
class OllamaInfo:
    era: Era
    pin: str            # FETCH_HEAD sha (era B) or llama.cpp tag (era C)
    upstream_url: str   # era B: UPSTREAM in Makefile.sync; era C: LLAMA_CPP_GIT_REPOSITORY default
    version: str        # from the nearest tag, without the leading v


def detect(co: Checkout) -> OllamaInfo:
    """Which integration era an Ollama tree is, and what llama.cpp it pins."""
    era = next((e for e in (Era.C, Era.B) if all(co.exists(f) for f in e.rules.markers)), None)
    if era is Era.C:
        pin = co.read(era.rules.pin_file).strip()
        cm = co.read("llama/server/CMakeLists.txt")
        m = re.search(r'set\(LLAMA_CPP_GIT_REPOSITORY\s+"([^"]+)"', cm)
        return OllamaInfo(era, pin, m.group(1) if m else "", ollama_version(co))
    if era is Era.B:
        mk = co.read(era.rules.pin_file)
        m = re.search(r"^FETCH_HEAD\s*[:?]?=\s*(\S+)", mk, re.M)
        if not m:
            raise SourceError(f"ollama: Makefile.sync at {co.ref} has no FETCH_HEAD")
        u = re.search(r"^UPSTREAM\s*[:?]?=\s*(\S+)", mk, re.M)
        return OllamaInfo(era, m.group(1), u.group(1) if u else "", ollama_version(co))
    if co.exists("llm/llama.cpp"):
        raise SourceError(f"ollama {co.ref} ({co.short}) is era A (llm/llama.cpp submodule, <= v0.3.14), "
                          "which ollama-turbo does not support",
                          hint="use Ollama v0.4.0 or newer")
    raise SourceError(f"ollama {co.ref} ({co.short}) in {co.url} is not an Ollama tree of a known era: "
                      "neither LLAMA_CPP_VERSION + llama/server/CMakeLists.txt (era C) nor Makefile.sync + "
                      "llama/llama.cpp (era B)", hint="check turbo.sources.ollama")


def ollama_version(co: Checkout) -> str:
    """The version Ollama's own build stamps: the tag at this commit, else ``git describe``'s
    ``<tag>-<n>-g<sha>`` (n commits after that tag), else ``0.0.0-g<sha>`` where no tag is reachable."""
    r = co.git("describe", "--tags", "--abbrev=9", co.sha, check=False)
    if not r.ok or not r.stdout.strip():
        return f"0.0.0-g{co.sha[:9]}"
    tag = r.stdout.strip()
    return tag[1:] if tag.startswith("v") else tag


def version_note(version: str) -> str:
    """What a person should know about a version that is not a release's (shown in the build plan)."""
    if version.startswith("0.0.0-g"):
        return (f"untagged: no release tag is reachable from this Ollama commit, so it is stamped {version} "
                "(fetch the tags, or name a release with --ollama-ref)")
    if re.search(r"-\d+-g[0-9a-f]+$", version):
        return f"not a release: {version} is {version.rsplit('-', 2)[-2]} commits after {version.rsplit('-', 2)[0]}"
    return ""
