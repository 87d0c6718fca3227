"""The command line: an invoke Program (``ollama-turbo``) and the Collection ``invoke`` finds in tasks.py,
assembled from the tasks in ``ollama_turbo.commands``.

Thin by rule: a task parses its flags, calls one function of the package, prints the result
and maps :class:`TurboError` to its exit code. Settings (``invoke.yaml`` in the project directory,
``INVOKE_TURBO_*``, ``-f FILE``) are read by the toolkit itself (:mod:`ollama_turbo.core.settings_layers`);
the files are checked before invoke reads them too, so a malformed one is a one-line error, not a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.completion.complete import complete, print_completion_script
from invoke.exceptions import Exit, ParseError
from invoke.parser.argument import Argument
from invoke.program import Program

from ollama_turbo import __version__
from ollama_turbo.commands.hosts import deploy, rollback, status, uninstall
from ollama_turbo.commands.proofs import bench, quality, recommend, smoke
from ollama_turbo.commands.sources import (
    api_check,
    build_ollama,
    modelfiles,
    plan,
    spec_init,
    upstream_tree,
    verify_fork,
)
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
    """Route ``cls``'s parse errors through :func:`parse_error_message`, once (a subclass's own parse methods
    need their own call)."""
    if cls.__dict__.get("_turbo_parse_errors", False):
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
    """``ollama-turbo``: the bundled tasks, with ``invoke.yaml`` read from the current directory. Its options are
    its own: invoke's flags for running shell commands (``--pty``, ``--echo``, ``--dry``, ``--warn-only``, ...)
    mean nothing to these tasks, so they are neither shown nor taken."""

    def core_args(self) -> list[Argument]:
        return [
            Argument(names=("complete",), kind=bool, default=False,
                     help="Print tab-completion candidates for the rest of the command line."),
            Argument(names=("config", "f"), help="A settings file (YAML), read after invoke.yaml and INVOKE_TURBO_*."),
            Argument(names=("help", "h"), optional=True, help="Show this help, or a task's (--help TASK), and exit."),
            Argument(names=("list", "l"), kind=bool, default=False, help="List the tasks and exit."),
            Argument(names=("print-completion-script",), kind=str, default="",
                     help="Print the tab-completion script for bash, zsh or fish."),
            Argument(names=("version", "V"), kind=bool, default=False, help="Show the version and exit."),
        ]

    def task_args(self) -> list[Argument]:
        return []

    def parse_core(self, argv: list[str] | None) -> None:
        self.normalize_argv(argv)
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit
        if self.args["print-completion-script"].value:
            print_completion_script(shell=self.args["print-completion-script"].value, names=self.binary_names)
            raise Exit

    def parse_collection(self) -> None:
        super().parse_collection()
        preflight(Path.cwd(), self.argv)
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if wanted is True:
            self.print_help()
            raise Exit
        if wanted:
            if wanted not in self.parser.contexts:
                raise ParseError(f"No idea what '{wanted}' is!")
            self.print_task_help(wanted)
            raise Exit
        if self.args.list.value:
            self.list_tasks()
            raise Exit
        if self.args.complete.value:
            complete(names=self.binary_names, core=self.core, initial_context=self.initial_context,
                     collection=self.collection, parser=self._make_parser())
        if not self.tasks and not self.collection.default:
            self.no_tasks_given()

    def update_config(self, merge: bool = True) -> None:
        runtime = self.args.config.value or os.environ.get("INVOKE_RUNTIME_CONFIG")
        self.config.load_overrides({"ollama_turbo": {"settings_file": runtime or ""}}, merge=False)
        self.config.set_runtime_path(Path(runtime) if runtime else None)
        self.config.load_runtime(merge=False)
        if merge:
            self.config.merge()

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--options] TASK [--task-options]")
        print("")
        print("Options:")
        print("")
        self.print_columns(self.initial_context.help_tuples())
        self.list_tasks()


adopt_parse_errors(TurboProgram)


def namespace(project: Path | None = None, settings_file: Path | None = None) -> Collection:
    """The task collection; ``project`` is where settings and specs are read (default: the current directory),
    ``settings_file`` the ``-f`` file (the ``ollama-turbo`` program sets it when it parses its flags)."""
    ns = Collection(sample, demo, settings_show, plan, modelfiles, spec_init, api_check, verify_fork, upstream_tree,
                    build_ollama, smoke, bench, quality, recommend, deploy, rollback, status, uninstall,
                    compat_record)
    ns.configure({"turbo": config.DEFAULTS, "ollama_turbo": {"project_dir": str(project) if project else "",
                                                             "settings_file": str(settings_file or "")}})
    return ns


program = TurboProgram(namespace=namespace(), name="ollama-turbo", binary="ollama-turbo",
                       binary_names=["ollama-turbo"], version=__version__)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        raise SystemExit(1) from None
