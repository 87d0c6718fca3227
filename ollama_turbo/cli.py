"""The command line: an invoke Program (``ollama-turbo``) and the Collection ``invoke`` finds in tasks.py,
assembled from the tasks in ``ollama_turbo.commands``.

Thin by rule: a task parses its flags, calls one function of the package, prints the result
and maps :class:`TurboError` to its exit code. Settings come from invoke's configuration
(``invoke.yaml`` in the project directory, ``INVOKE_TURBO_*``, ``-f FILE``), checked before
invoke reads them so a malformed file is a one-line error, not a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from ollama_turbo import __version__
from ollama_turbo.commands.hosts import deploy, rollback, status
from ollama_turbo.commands.proofs import bench, quality, recommend, smoke
from ollama_turbo.commands.sources import api_check, build_ollama, modelfiles, plan, upstream_tree, verify_fork
from ollama_turbo.commands.world import compat_record, demo, sample, settings_show
from ollama_turbo.core import settings as config
from ollama_turbo.core import settings_files
from ollama_turbo.core.errors import TurboError


def preflight(project_dir: Path, argv: Sequence[str]) -> None:
    """Check the settings files invoke is about to read; a problem ends the run with its exit code.
    Also makes invoke's own parse errors (unknown flag or task, a missing value) usage errors of ours."""
    adopt_parse_errors(Program)
    try:
        settings_files.preflight(project_dir, argv)
    except TurboError as err:
        raise Exit(f"error: {err}", code=err.exit_code) from None


def parse_error_message(text: str) -> str:
    """invoke's parse error as ours: what was wrong, and the next step (exit 2, like every usage error)."""
    m = re.match(r"No idea what '([^']*)' is!", text)
    if m and m.group(1).startswith("-"):
        what, step = f"unknown flag {m.group(1)}", "run with --help TASK for the task's flags"
    elif m:
        what, step = f"no task or flag named {m.group(1)!r}", "run with --list for the tasks"
    elif m := re.match(r"Flag <Argument: ([\w-]+)[^>]*> needed value", text):
        flag = "--" + m.group(1).replace("_", "-")
        what, step = f"{flag} needs a value", f"give it one: {flag} VALUE (see --help TASK)"
    elif m := re.match(r"(?:invalid literal for (int)\(\)[^:]*|could not convert string to (float)): '(.*)'", text):
        kind = "a whole number" if m.group(1) else "a number"
        what, step = f"{m.group(3)!r} is not {kind}", "give the flag a number (see --help TASK for each flag)"
    elif m := re.match(r"'([^']+)' did not receive required positional arguments: (.*)", text):
        flags = ", ".join("--" + a.strip(" '").replace("_", "-") for a in m.group(2).split(","))
        what, step = f"{m.group(1)} needs {flags}", f"run with --help {m.group(1)} for what each flag takes"
    else:
        what, step = text.rstrip(".!"), "run with --help TASK for the task's flags, or --list for the tasks"
    return f"error: {what}\n  next step: {step}"


def adopt_parse_errors(cls: type[Program]) -> None:
    """Route ``cls``'s parse errors through :func:`parse_error_message`, once."""
    if getattr(cls, "_turbo_parse_errors", False):
        return
    for name in ("parse_core", "parse_tasks", "parse_cleanup"):
        original = getattr(cls, name)

        def wrapped(self: Program, *args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            try:
                return _original(self, *args, **kwargs)
            except (ParseError, ValueError) as exc:  # ValueError: a flag's int() of a word
                raise Exit(parse_error_message(str(exc)), code=2) from None

        setattr(cls, name, wraps(original)(wrapped))
    cls._turbo_parse_errors = True  # type: ignore[attr-defined]


class TurboProgram(Program):
    """``ollama-turbo``: the bundled tasks, with ``invoke.yaml`` read from the current directory."""

    def parse_collection(self) -> None:
        super().parse_collection()
        preflight(Path.cwd(), self.argv)
        self.config.set_project_location(os.getcwd())
        self.config.load_project()


def namespace(project: Path | None = None) -> Collection:
    """The task collection; ``project`` is where settings and specs are read (default: the current directory)."""
    ns = Collection(sample, demo, settings_show, plan, modelfiles, api_check, verify_fork, upstream_tree, build_ollama,
                    smoke, bench, quality, recommend, deploy, rollback, status, compat_record)
    ns.configure({"turbo": config.DEFAULTS, "ollama_turbo": {"project_dir": str(project) if project else ""}})
    return ns


program = TurboProgram(namespace=namespace(), name="ollama-turbo", binary="ollama-turbo",
                       binary_names=["ollama-turbo"], version=__version__)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        raise SystemExit(1) from None
