"""The manual holds together: every relative link in README.md and docs/ names a file that exists, and every
task has a line in the README's task table."""

from __future__ import annotations

import re
from pathlib import Path

from ollama_turbo.cli import namespace

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_the_manual_resolves() -> None:
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in PAGES
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert broken == []


def test_the_readme_task_table_names_every_task() -> None:
    readme = (ROOT / "README.md").read_text()
    tasks = sorted(namespace().task_names)
    missing = [t for t in tasks if f"| `{t}" not in readme]
    assert missing == []
