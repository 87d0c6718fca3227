"""Tasks about the sample world and the settings: sample, demo, settings-show, compat-record."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit

from ollama_turbo.commands.base import project_dir, settings, settings_layers, turbo_task
from ollama_turbo.core.errors import ConfigError, UsageError


@turbo_task(dest="empty directory to write the four repositories into",
            scenario="clean (default), fork-behind, collision, ollama-ahead, removed-function, patch-conflict, "
                     "fork-2026-06, quant-suboptimal, quant-backends-disagree, quant-inverse-signs",
            verbose="echo every command")
def sample(c, dest, scenario="clean", verbose=False):
    """Write the sample world (upstream, fork, Ollama era B and C) as real git repos."""
    from ollama_turbo import sample as sample_world

    world = sample_world.generate(Path(dest), sample_world.scenario(scenario))
    print(world.describe())


@turbo_task(verbose="echo every command", cache_type="KV cache type to run with (default turbo4)",
            keep_running="leave the deployed demo server running (stop it with kill $(cat <pidfile>))")
def demo(c, verbose=False, cache_type="turbo4", keep_running=False):
    """Run the whole job offline on the embedded sample world."""
    from ollama_turbo import demo as demo_mod
    from ollama_turbo.fork.cache_types import parse_pair

    parse_pair(cache_type)  # checked before step 1, not after a build
    s = settings(c)
    r = demo_mod.run(s.workspace, say=print, cache_type=cache_type, keep_running=keep_running)
    print()
    print(f"{'OK' if r.smoke_ok else 'FAILED'}: Ollama {r.version} runs the fork with a {cache_type} KV cache")
    print(f"result: {s.workspace / 'demo' / 'demo.json'}")
    print(r.dist)
    if not r.smoke_ok:
        raise Exit(code=1)


@turbo_task(key="show only this dotted key, e.g. kv.type_k",
            where="print where each value came from (built-in defaults, a settings file, the environment, -f) "
                  "instead of the values")
def settings_show(c, key="", where=False):
    """Print the validated settings (defaults merged with invoke.yaml, env and -f)."""
    import dataclasses

    value: Any = dataclasses.asdict(settings(c))
    if where:
        sources = settings_layers(c).sources()
        picked = {k: v for k, v in sources.items() if not key or k == key or k.startswith(key.rstrip(".") + ".")}
        if key and not picked:
            raise ConfigError("no such setting", key=key, hint="run settings-show --where without --key")
        print(jsonlib.dumps(picked, indent=2))
        return
    for derived in ("fork", "parallel"):  # parsed from kv.env, not keys of their own
        value["kv"].pop(derived, None)
    for part in [p for p in key.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            raise ConfigError("no such setting", key=key, hint="run settings-show without --key for every setting")
        value = value[part]
    print(jsonlib.dumps(value, indent=2, default=str))


@turbo_task(record="the record's JSON (default: docs/compatibility.json in the project); the Markdown is "
                   "written beside it",
            add="a JSON file of facts from a field run (an object, or a list of them) to merge in first")
def compat_record(c, record="", add=""):
    """Write docs/compatibility.md from the field record (Ollama ref x fork commit x backend)."""
    from ollama_turbo.prove import compat

    path = Path(record) if record else project_dir(c) / "docs" / "compatibility.json"
    rows = compat.load(path)
    if add:
        try:
            facts = jsonlib.loads(Path(add).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read facts from {add}: {exc}", hint="pass a JSON file of field facts") from None
        for f in facts if isinstance(facts, list) else [facts]:
            if not isinstance(f, dict):
                raise UsageError(f"{add}: each fact must be a JSON object",
                                 hint='write each fact as {"key": value, ...}, or a list of them')
            rows = compat.merge(rows, f)
    if not rows:
        raise UsageError(f"{path} has no rows", hint="run the field tier (tests/field) to record some")
    print(f"{len(rows)} rows -> {compat.write(path, rows)}")
