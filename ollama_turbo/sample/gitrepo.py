"""Small helpers to write files and commit them into real git repositories."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ollama_turbo.core import proc

# Fixed identity and dates so the sample world is the same on every machine.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Sample Author",
    "GIT_AUTHOR_EMAIL": "sample@example.invalid",
    "GIT_COMMITTER_NAME": "Sample Author",
    "GIT_COMMITTER_EMAIL": "sample@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class Repo:
    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        self._tick = 0

    def git(self, *args: str, check: bool = True) -> proc.Result:
        self._tick += 1
        date = f"2026-01-01T00:{self._tick // 60 % 60:02d}:{self._tick % 60:02d}Z"
        env = dict(GIT_ENV, GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
        return proc.run(["git", "-c", f"init.defaultBranch={self.branch}", "-c", "commit.gpgsign=false",
                         "-c", "tag.gpgsign=false", "-c", "core.autocrlf=false", *args],
                        cwd=self.path, extra_env=env, check=check)

    @classmethod
    def init(cls, path: Path, branch: str = "main") -> Repo:
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path, branch)
        repo.git("init", "-q")
        return repo

    def write(self, files: Mapping[str, str | bytes], *, executable: tuple[str, ...] = ()) -> None:
        for rel, content in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
            if rel in executable:
                target.chmod(0o755)

    def remove(self, *rels: str) -> None:
        for rel in rels:
            (self.path / rel).unlink()

    def commit(self, message: str, *, tag: str | None = None) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        if tag:
            self.git("tag", "-a", tag, "-m", tag)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").stdout.strip()
