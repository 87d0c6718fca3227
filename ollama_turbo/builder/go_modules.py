"""Go modules before anything long: a real Ollama needs ~95 of them, downloaded through the
user's ``GOPROXY`` (or vendored, or already in the module cache). Checked right after the
sources are exported, so a machine that cannot get them stops in seconds, not after minutes
of CMake, with the missing modules named and the ways out."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core import proc, toolchain
from ollama_turbo.core.errors import TurboError


class GoModulesError(TurboError):
    pass


@dataclass(frozen=True)
class Missing:
    module: str  # path@version
    error: str


def required(go_mod: str) -> list[str]:
    """``path@version`` of every module ``go.mod`` requires (direct and indirect)."""
    out = []
    body = re.sub(r"//.*", "", go_mod)
    for block in re.findall(r"^require\s*\((.*?)^\)", body, re.M | re.S):
        out += [" ".join(line.split()[:2]) for line in block.splitlines() if len(line.split()) >= 2]
    out += [" ".join(m.split()[:2]) for m in re.findall(r"^require\s+([^\s(][^\n]*)$", body, re.M)]
    return [m.replace(" ", "@") for m in out]


def vendored(ollama_dir: Path, env: dict[str, str]) -> bool:
    flags = env.get("GOFLAGS", os.environ.get("GOFLAGS", ""))
    return "-mod=vendor" in flags and (ollama_dir / "vendor" / "modules.txt").is_file()


def parse_download(stdout: str) -> list[Missing]:
    """The modules ``go mod download -json`` could not get (it prints one JSON object per module)."""
    missing = []
    for chunk in re.split(r"(?<=\})\s*(?=\{)", stdout.strip()):
        try:
            obj = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("Error"):
            missing.append(Missing(f"{obj.get('Path')}@{obj.get('Version')}", str(obj["Error"]).strip()))
    return missing


def parse_stderr(stderr: str) -> list[Missing]:
    """``go: path@version: reason`` lines (what go prints when it fails before writing JSON)."""
    return [Missing(m, why.strip()) for m, why in re.findall(r"^go: (\S+@\S+): (.+)$", stderr, re.M)]


def escape(path: str) -> str:
    """A module path as the module cache spells it (upper case -> '!' + lower case)."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), path)


def not_in_cache(want: list[str], gomodcache: Path) -> list[str]:
    """The modules whose zip is not in the module cache's download directory."""
    out = []
    for mod in want:
        path, _, version = mod.partition("@")
        if not (gomodcache / "cache" / "download" / escape(path) / "@v" / f"{escape(version)}.zip").is_file():
            out.append(mod)
    return out


def download(ollama_dir: Path, *, extra_env: dict[str, str] | None = None, log: Path | None = None) -> int:
    """Make every required module available; return how many are required. Raise, naming them, if not."""
    env = toolchain.go_env(extra_env)
    want = required((ollama_dir / "go.mod").read_text())
    if not want or vendored(ollama_dir, env):
        return len(want)
    r = proc.run(["go", "mod", "download", "-json"], cwd=ollama_dir, extra_env=env, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write("+ go mod download -json\n" + r.stdout[-20000:] + r.stderr[-5000:])
    if r.ok:
        return len(want)
    errors = parse_download(r.stdout) or parse_stderr(r.stderr)
    proxy = env.get("GOPROXY", os.environ.get("GOPROXY", "")) or "the default proxy"
    cache_dir = proc.run(["go", "env", "GOMODCACHE"], extra_env=env, check=False).stdout.strip()
    cache = cache_dir or "the module cache (go env GOMODCACHE)"
    missing = not_in_cache(want, Path(cache_dir)) if cache_dir else [m.module for m in errors]
    if missing:
        names = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        why = f" ({errors[0].module}: {errors[0].error})" if errors else ""
        what = f"{len(missing)} of {len(want)} Go modules Ollama requires cannot be downloaded: {names}{why}"
    else:
        what = f"go mod download failed: {proc.tail(r.stderr, 5).strip()}"
    raise GoModulesError(
        f"{what}; GOPROXY={proxy}",
        hint=f"give this machine network access to a module proxy, or set GOPROXY to one it can reach "
             f"(a mirror, or file:///dir of a module cache's cache/download); or vendor them ('go mod vendor' in "
             f"the Ollama checkout, then GOFLAGS=-mod=vendor); or warm {cache} on a machine that can reach one. "
             "Nothing was built.")
