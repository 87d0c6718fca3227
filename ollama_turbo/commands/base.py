"""What every task shares: the task class and its short flags, error-to-exit-code mapping, output-flag checks,
the settings, and small writers."""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit
from invoke.tasks import Task, task

from ollama_turbo.commands.flags import check_flags, number
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core import proc, settings_files
from ollama_turbo.core import settings as config
from ollama_turbo.core import settings_layers as layers
from ollama_turbo.core.errors import EXIT_INTERRUPTED, ConfigError, Interrupted, TurboError, UsageError

# Short flags are chosen here, by hand, and mean the same in every task (invoke's automatic
# ones gave -d three meanings and produced a broken flag for --n-predict).
SHORT_FLAGS = {"verbose": "v", "dry_run": "n"}


SOURCE_HELP = {
    "ollama": "Ollama source: a local checkout or a git URL "
              "(default: turbo.sources.ollama.url)",
    "ollama_ref": "Ollama ref (default: turbo.sources.ollama.ref)",
    "fork": "fork source: a local checkout or a git URL (default: turbo.sources.fork.url)",
    "fork_ref": "fork ref (default: turbo.sources.fork.ref)",
}

CARRY_HELP = {
    "upstream": "the llama.cpp an era C Ollama pins, at its tag: a checkout or git URL, the base of 3-way merges "
                "of Ollama's compat patches (default: turbo.sources.upstream.url)",
    "leave_out": "model architectures whose compat patches the fork cannot take, left out of the build "
                 "(comma-separated, e.g. laguna; with turbo.build.leave_out)",
    "placements": "a YAML file of your own placement rules for compat-patch hunks (default: "
                  "turbo.build.placements)",
}


PACKAGED_SPECS = Path(__file__).resolve().parents[1] / "examples" / "modelfiles"


PACKAGED_FLEET = Path(__file__).resolve().parents[1] / "examples" / "fleet.yaml"


class TurboTask(Task[Any]):
    """A task whose only short flags are the ones in :data:`SHORT_FLAGS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"].append(SHORT_FLAGS[name])
        return opts


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body; turn TurboError into its exit code."""

    @wraps(fn)
    def wrapper(c: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("verbose"):
            proc.set_verbose(True)
        try:
            check_flags(kwargs)  # before any work: bad source paths, outputs that cannot be written
            return fn(c, *args, **kwargs)
        except TurboError as err:
            if isinstance(err, ConfigError) and not err.hint:  # every usage error says what to do next
                err.hint = "fix that setting (settings-show prints them all, with where each came from)"
            elif isinstance(err, UsageError) and not err.hint:
                err.hint = f"see --help {fn.__name__.replace('_', '-')} for what each flag takes"
            raise Exit(f"error: {err}", code=err.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C: one line saying what was left, and exit 130
            raise Exit(interrupted_line(fn.__name__, kwargs, exc), code=EXIT_INTERRUPTED) from None

    return wrapper


HOST_TASKS = ("deploy", "rollback")  # the tasks that change a host


def interrupted_line(name: str, kwargs: dict[str, Any], exc: KeyboardInterrupt) -> str:
    """What a task stopped by Ctrl-C left: a host task names the state of its host (see deploy.rollback.put_back)
    and ``invoke status`` as the next step; any other task, that it stopped where its output ends."""
    task = name.replace("_", "-")
    if isinstance(exc, Interrupted):
        left, hosts = exc.left, exc.hosts
    elif name in HOST_TASKS:  # stopped before it reached a host
        left = "no host was changed"
        hosts = [h.strip() for h in str(kwargs.get("host") or kwargs.get("hosts") or "").split(",") if h.strip()]
    else:
        return f"interrupted: {task} stopped; nothing after the last step printed was done"
    step = "; ".join(f"invoke status --host {h}" for h in hosts[:3]) or "invoke status --host H for each host"
    return f"interrupted: {task} stopped; {left}; next step: {step}"


def turbo_task(**help: str) -> Callable[[Callable[..., Any]], TurboTask]:
    def deco(fn: Callable[..., Any]) -> TurboTask:
        made: TurboTask = task(help=help, klass=TurboTask)(entry(fn))
        return made

    return deco


def project_dir(c: Any) -> Path:
    """Where ``invoke.yaml``, ``modelfiles/`` and ``.apiignore`` are looked for."""
    configured = c.config.get("ollama_turbo", {}).get("project_dir")
    return Path(configured) if configured else Path.cwd()


def settings_file(c: Any) -> Path | None:
    """The ``-f FILE`` settings file the program was given (or ``INVOKE_RUNTIME_CONFIG``), None without one."""
    given = c.config.get("ollama_turbo", {}).get("settings_file")
    return Path(given) if given else settings_files.runtime_file([])


def settings_layers(c: Any) -> layers.Layers:
    """Every layer of the settings, as the toolkit reads them (defaults, files, environment, -f)."""
    return layers.load(project_dir(c), settings_file(c), os.environ)


def settings(c: Any) -> config.Settings:
    """The settings, read and checked once per task (cache types and the fork's knobs in ``turbo.kv`` too, so a
    bad one stops every task at the start, naming its key, instead of the stage that first reads it)."""
    return settings_layers(c).settings(project_dir(c))


INIT_STEP = "write one for your model: invoke spec-init --from MODEL (an Ollama model name or a .gguf file)"
INIT_HINT = INIT_STEP + ", or give --specs DIR"


def specs_dir(c: Any, given: str, examples: bool = False) -> tuple[Path | None, str]:
    """The Modelfile specs a task uses: ``--specs DIR``, else ``modelfiles/`` in the project; the examples shipped
    with the package only when asked (``examples``). With none: None, and why there are none."""
    if examples:
        if given:
            raise UsageError("give --specs DIR or --examples, not both", hint="drop one of them")
        return PACKAGED_SPECS, ""
    folder = Path(given).expanduser() if given else project_dir(c) / "modelfiles"
    if not folder.is_dir():
        if given:
            raise UsageError(f"--specs {given}: no such folder", hint=f"give the folder of your specs, or {INIT_STEP}")
        return None, f"no Modelfile specs: {folder} does not exist"
    if not any(folder.glob("*.yaml")):
        return None, f"no Modelfile specs: {folder} has no <name>.yaml"
    return folder, ""


def block_table(c: Any, manifest: str | manifest_mod.Manifest | None = "", fork: str = "", fork_ref: str = "") -> Any:
    """The block formats a plan uses: a build's (``--manifest``, or its manifest already loaded), a fork's
    (``--fork``), else the built-in table."""
    from ollama_turbo.fork.cache_types import BUILTIN, BlockTable

    if manifest and fork:
        raise UsageError("give --manifest (a build's block formats) or --fork (a fork's), not both",
                         hint="drop one of them")
    if manifest:
        return BlockTable.from_manifest(manifest if isinstance(manifest, manifest_mod.Manifest)
                                        else manifest_mod.load(Path(manifest)))
    if fork:
        from ollama_turbo.core import sources
        from ollama_turbo.fork import blocks

        s = settings(c)
        co = sources.open_configured(s, "fork", fork, fork_ref)
        return blocks.table_for_checkout(co)
    return BUILTIN


def reserve(value: float) -> float:
    """``--reserve-gib``: finite and not negative (a negative reserve would count memory the host lacks)."""
    return number(float(value), "reserve_gib", why="a negative reserve would count memory the host does not have")


def write_json(path: str, payload: Any) -> None:
    if path:
        Path(path).write_text(jsonlib.dumps(payload, indent=2, default=str) + "\n")


def print_checklist(render: Callable[..., str], payload: Any, code: int, json: str, markdown: str) -> None:
    """A checklist's text on stdout, its JSON and Markdown where asked, and its exit code."""
    print(render(), end="")
    write_json(json, payload)
    if markdown:
        Path(markdown).write_text(render(markdown=True))
    if code:
        raise Exit(code=code)


def load_bench(path: str) -> dict[str, Any]:
    p = Path(path)
    p = p / "bench.json" if p.is_dir() else p
    try:
        data: dict[str, Any] = jsonlib.loads(p.read_text())
        return data
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the bench report {p}: {exc}", hint="pass a bench output directory") from None
