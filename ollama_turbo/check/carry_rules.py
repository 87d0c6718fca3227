"""Placement rules owned by ollama-turbo: hunks of Ollama's compat patches that neither a 3-way merge with the
pinned upstream nor their own context places in the fork, each said where it goes, by anchor.

A rule names the patch, the versions of it (sha256 of the file) it was checked against, the hunk (its
number in the patch), the fork's file and an anchor there; the inserted lines always come from the user's
Ollama checkout. A new version of the patch is not placed by an old rule: the carry stops and says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from ollama_turbo.check.placement import PlacementRule
from ollama_turbo.core.errors import ConfigError

RULES: tuple[PlacementRule, ...] = (
    PlacementRule(
        patch="llama/compat/001-llama-cpp-hooks.patch",
        sha256=("80445adfc0b6892932031790aea6494e736d52aab84517f57bef9f869884700a",),  # v0.32.6 .. v0.33.0, main
        hunk=1, file="src/llama-model-loader.cpp", anchor=r'^#include "llama-hparams\.h"$', where="after",
        why="the include of Ollama's compat header: upstream has '#include \"llama.h\"' between it and "
            "llama-hparams.h, which the fork's file lacks (its own includes compile without it; the compat header "
            "includes what it needs)"),
)


def load(path: Path) -> list[PlacementRule]:
    """The user's own placement rules (``turbo.build.placements`` or ``--placements``): a YAML list of
    ``{patch, sha256, hunk, file, anchor, where, why}``; anything else is a usage error naming the entry."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"placements file {path}: no such file",
                          hint="give the YAML file of placement rules, or leave turbo.build.placements out") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"placements file {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}",
                          hint="give a readable UTF-8 YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"placements file {path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"placements file {path}: expected a list of rules, got {type(data).__name__}",
                          hint="each rule: {patch, sha256, hunk, file, anchor, where: before|after, why}")
    out = []
    keys = {"patch", "sha256", "hunk", "file", "anchor", "where", "why"}
    for i, e in enumerate(data, 1):
        where = f"placements file {path}: rule {i}"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a mapping, got {e!r}")
        unknown = sorted(set(e) - keys)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected: {', '.join(sorted(keys))}")
        missing = sorted(k for k in keys if e.get(k) in (None, ""))
        if missing:
            raise ConfigError(f"{where}: needs {', '.join(missing)}",
                              hint="a rule names the patch, its sha256 (one or a list), the hunk's number, the "
                                   "fork's file, an anchor there and why")
        shas = e["sha256"] if isinstance(e["sha256"], list) else [e["sha256"]]
        if not all(isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) for x in shas):
            raise ConfigError(f"{where}: sha256 must be the patch file's sha256 (64 hex digits), or a list of them")
        if isinstance(e["hunk"], bool) or not isinstance(e["hunk"], int) or e["hunk"] < 1:
            raise ConfigError(f"{where}: hunk must be the hunk's number in the patch (1 or more), got {e['hunk']!r}")
        if e["where"] not in ("before", "after"):
            raise ConfigError(f"{where}: where must be before or after, got {e['where']!r}")
        try:
            re.compile(str(e["anchor"]))
        except re.error as exc:
            raise ConfigError(f"{where}: anchor is not a regular expression: {exc}") from None
        out.append(PlacementRule(patch=str(e["patch"]), sha256=tuple(shas), hunk=e["hunk"], file=str(e["file"]),
                                 anchor=str(e["anchor"]), where=e["where"], why=str(e["why"]), source=str(path)))
    return out
