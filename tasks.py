"""ollama-turbo tasks. Thin: parse flags, call the package, map errors to exit codes.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for each one's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

from ollama_turbo import config, proc, settings_files
from ollama_turbo.errors import ConfigError, TurboError

ROOT = Path(__file__).resolve().parent


def _fail(err: TurboError) -> Exit:
    return Exit(f"error: {err}", code=err.exit_code)


try:
    settings_files.preflight(ROOT, sys.argv)
except TurboError as _err:
    print(f"error: {_err}", file=sys.stderr)
    sys.exit(_err.exit_code)


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body with our settings; turn TurboError into its exit code."""

    @wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        proc.set_verbose(bool(kwargs.get("verbose")) or proc._verbose)
        try:
            return fn(c, *args, **kwargs)
        except TurboError as err:
            raise _fail(err) from None

    return wrapper


def settings(c: Any) -> config.Settings:
    return settings_files.settings(c.config, ROOT)


@task(help={"dest": "empty directory to write the four repositories into",
            "scenario": "clean (default), fork-behind, collision, removed-function, patch-conflict",
            "verbose": "echo every command"})
@entry
def sample(c, dest, scenario="clean", verbose=False):
    """Write the sample world (upstream, fork, Ollama era B and C) as real git repos."""
    from ollama_turbo import sample as sample_world

    world = sample_world.generate(Path(dest), sample_world.scenario(scenario))
    print(world.describe())


@task(help={"verbose": "echo every command", "cache_type": "KV cache type to run with (default turbo4)"})
@entry
def demo(c, verbose=False, cache_type="turbo4"):
    """Run the whole job offline on the embedded sample world."""
    from ollama_turbo import demo as demo_mod

    s = settings(c)
    r = demo_mod.run(s.workspace, say=print, cache_type=cache_type)
    print()
    print(f"built     {r.binary}")
    print(f"version   {r.version}")
    print(f"argv      {r.server_argv.split('cmd=', 1)[-1].strip(chr(34))}")
    print(f"kv cache  {r.kv_cache_line}")
    print(f"reply     {r.reply!r} ({r.eval_count} tokens, {r.decode_tps} tok/s)")
    print(f"result    {s.workspace / 'demo' / 'demo.json'}")


@task(help={"key": "show only this dotted key, e.g. kv.type_k"})
@entry
def settings_show(c, key=""):
    """Print the validated settings (defaults merged with invoke.yaml, env and -f)."""
    import dataclasses
    import json

    s = dataclasses.asdict(settings(c))
    value: Any = s
    for part in [p for p in key.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            raise _fail(ConfigError("no such setting", key=key))
        value = value[part]
    print(json.dumps(value, indent=2, default=str))


ns = Collection(sample, demo, settings_show)
ns.configure({"turbo": config.DEFAULTS})
