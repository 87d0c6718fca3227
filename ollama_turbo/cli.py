"""The command line: an invoke Program (``ollama-turbo``) and the Collection ``invoke`` finds in tasks.py,
assembled from the tasks in ``ollama_turbo.commands``.

Thin by rule: a task parses its flags, calls one function of the package, prints the result
and maps :class:`TurboError` to its exit code. Settings (``invoke.yaml`` in the project directory,
``INVOKE_TURBO_*``, ``-f FILE``) are read by the toolkit itself (:mod:`ollama_turbo.core.settings_layers`);
the files are checked before invoke reads them too, so a malformed one is a one-line error, not a traceback.
The command line is checked before invoke parses it (:mod:`ollama_turbo.commands.argv_check`), so a mistyped flag or
task is a usage error of ours with its next step, under either program.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from invoke.collection import Collection
from invoke.completion.complete import complete, print_completion_script
from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.program import Program

from ollama_turbo import __version__
from ollama_turbo.commands import argv_check
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
    """``invoke`` in a checkout (tasks.py): the command line, checked against invoke's own core flags and these
    tasks before invoke parses it, then the settings files invoke is about to read. A problem ends the run with
    one error line and its exit code."""
    invoke_itself = Program()
    argv_check.check(argv, namespace(project_dir), [*invoke_itself.core_args(), *invoke_itself.task_args()])
    check_settings_files(project_dir, argv)


def check_settings_files(project_dir: Path, argv: Sequence[str]) -> None:
    try:
        settings_files.preflight(project_dir, argv)
    except TurboError as err:
        raise Exit(f"error: {err}", code=err.exit_code) from None


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
        self.check_command_line()
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit
        if self.args["print-completion-script"].value:
            print_completion_script(shell=self.args["print-completion-script"].value, names=self.binary_names)
            raise Exit

    def check_command_line(self) -> None:
        """The first word invoke would refuse, as a usage error of ours (see :mod:`argv_check`)."""
        argv_check.check(self.argv, self.namespace or namespace(), [*self.core_args(), *self.task_args()])

    def parse_collection(self) -> None:
        super().parse_collection()
        check_settings_files(Path.cwd(), self.argv)
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if wanted is True:
            self.print_help()
            raise Exit
        if wanted:
            if wanted not in self.parser.contexts:
                raise argv_check.unknown(wanted)
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
