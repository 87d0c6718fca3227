"""The command-line check made before invoke parses: each kind of error with its message and next step, the
forms invoke reads (``--flag=value``, ``-xVALUE``, ``--no-FLAG``, a required parameter as a bare word, ``-f FILE``,
``--help TASK``, several tasks), and, over random command lines, the same verdict as invoke's own parser."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.parser.argument import Argument
from invoke.program import Program
from invoke.tasks import task

from ollama_turbo import cli
from ollama_turbo.commands import argv_check


@task(optional=["level"], iterable=["tag"], incrementable=["verbose"])
def build(c: Any, name: str, count: int = 1, ratio: float = 0.5, fast: bool = True, level: Any = None,
          tag: Any = None, verbose: int = 0) -> None:
    """A task with every kind of parameter invoke knows."""


@task(aliases=["ls"])
def show(c: Any, key: str = "", where: bool = False) -> None:
    """A task with no required parameter and an alias."""


@task
def pair(c: Any, left: str, right: str, dry_run: bool = False) -> None:
    """Two required parameters."""


TOY = Collection(build, show, pair)
TURBO = cli.namespace()
TURBO_CORE = cli.TurboProgram(namespace=TURBO).core_args()
INVOKE_CORE = [*Program().core_args(), *Program().task_args()]


def error(argv: Sequence[str], collection: Collection = TURBO, core: Sequence[Argument] = TURBO_CORE) -> str:
    """The check's error text for ``argv`` (after the program's name); "" when it passes."""
    try:
        argv_check.check(["prog", *argv], collection, core)
    except Exit as exc:
        assert exc.code == 2
        return str(exc.message)
    return ""


@pytest.mark.parametrize(("argv", "text"), [
    (["plan", "--frobnicate"], "error: unknown flag --frobnicate\n  next step: run with --help TASK for the task's "
                               "flags"),
    (["--pty", "settings-show"], "error: unknown flag --pty\n"),
    (["frobnicate"], "error: no task or flag named 'frobnicate'\n  next step: run with --list for the tasks"),
    (["plan", "extra"], "error: no task or flag named 'extra'\n"),
    ([""], "error: no task or flag named ''\n"),
    (["-f"], "error: --config needs a value\n  next step: give it one: --config VALUE (see --help TASK)"),
    (["plan", "--model"], "error: --model needs a value\n  next step: give it one: --model VALUE (see --help TASK)"),
    (["spec-init", "--from"], "error: --from needs a value\n"),
    (["plan", "--model", "--layers", "4"], "error: --model needs a value\n"),
    (["plan", "--layers", "x"], "error: 'x' is not a whole number\n  next step: give the flag a number (see --help "
                                "TASK for each flag)"),
    (["plan", "--layers="], "error: '' is not a whole number\n"),
    (["plan", "--weights-gib", "abc"], "error: 'abc' is not a number\n"),
    (["quality"], "error: quality needs --model\n  next step: run with --help quality for what each flag takes"),
    (["recommend", "--ctx", "8k"], "error: recommend needs --model, --host\n  next step: run with --help recommend "
                                   "for what each flag takes"),
    (["quality", "--model", "m", "recommend", "--model", "m"], "error: recommend needs --host\n"),
    (["--help", "frob"], "error: no task or flag named 'frob'\n"),
    (["--help", "--frob"], "error: unknown flag --frob\n"),
])
def test_each_error_and_its_next_step(argv: list[str], text: str) -> None:
    assert error(argv).startswith(text), error(argv)


@pytest.mark.parametrize("argv", [
    [], ["--list"], ["-l"], ["--version"], ["--help"], ["-h"], ["--help", "plan"], ["plan", "--help"],
    ["plan", "-h"], ["-f", "x.yaml", "settings-show"], ["--config=x.yaml", "settings-show"],
    ["settings-show", "-f", "x.yaml"], ["plan", "--layers=4", "--kv-heads", "2", "--weights-gib=1e3"],
    ["plan", "--layers", "-1"], ["plan", "--reserve-gib", "-100"], ["plan", "--model", "--frob"],
    ["quality", "m.gguf"], ["quality", "--model", "m"], ["recommend", "m", "h"], ["rollback", "--host=a", "--to", "1"],
    ["settings-show", "--where", "plan", "--layers", "4", "status", "--host", "a"], ["settings-show", "settings-show"],
    ["plan", "--model", "m", "--", "anything", "--goes"], ["--complete", "--", "ollama-turbo", "pl"],
    ["plan", "--model", "a", "--model"],
])
def test_what_invoke_reads_passes(argv: list[str]) -> None:
    assert error(argv) == ""


def test_yes_no_flags_short_flags_and_aliases() -> None:
    toy = {"collection": TOY, "core": INVOKE_CORE}
    assert error(["build", "n", "--no-fast", "--fast", "-vvv", "--tag", "a", "--tag=b"], **toy) == ""
    assert error(["build", "--name=n", "-c5", "-r", "0.1"], **toy) == ""
    assert error(["build", "n", "-cx"], **toy).startswith("error: 'x' is not a whole number")
    assert error(["build", "n", "--fast=yes"], **toy).startswith("error: no task or flag named 'yes'")
    assert error(["build", "n", "--no-verbose"], **toy).startswith("error: unknown flag --no-verbose")
    assert error(["build", "n", "--level", "show"], **toy) == ("error: 'show' after --level could be its value or the "
                                                               "next word of the command\n  next step: move --level "
                                                               "to the end of the command line")
    assert error(["build", "--level", "--count", "2", "n"], **toy).startswith("error: '--count' after --level")
    assert error(["build", "n", "--level", "--count", "2"], **toy) == ""
    assert error(["ls", "--where", "-k", "x", "pair", "a", "b", "--dry-run"], **toy) == ""
    assert error(["pair", "a"], **toy).startswith("error: pair needs --right\n")
    assert error(["pair"], **toy).startswith("error: pair needs --left, --right\n")
    assert error(["--help", "ls"], **toy) == ""
    assert error(["-T", "x", "show"], **toy).startswith("error: 'x' is not a whole number")
    assert error(["show", "--pty", "-e", "--no-dedupe"], **toy) == ""
    assert error(["show", "--echo=1"], **toy).startswith("error: no task or flag named '1'")


# over random command lines: the check refuses exactly what invoke's own parser refuses

def invoke_refuses(argv: list[str], collection: Collection, core: Sequence[Argument]) -> bool:
    """Whether invoke's parser (core flags, then the tasks, then --help TASK's name) raises for ``argv``."""
    class Plain(Program):
        def core_args(self) -> list[Argument]:
            return list(core)

        def task_args(self) -> list[Argument]:
            return []

    p = Plain(namespace=collection)
    p.create_config()
    p.collection = collection
    try:
        p.normalize_argv(["prog", *argv])
        p.parse_core_args()
        p.parse_tasks()
        wanted = p.args.help.value
        return isinstance(wanted, str) and wanted not in p.parser.contexts
    except (ParseError, ValueError):
        return True


TOY_WORDS = ["build", "show", "ls", "pair", "--name", "-n", "--count", "-c", "-c3", "--ratio", "--fast", "--no-fast",
             "--level", "--tag", "-v", "-vv", "--verbose", "--key", "-k", "--where", "--dry-run", "--left", "--right",
             "-T", "--echo", "-e", "-ec", "--collection", "--no-dedupe", "--help", "-h", "--list", "-l", "-f",
             "--config", "--version", "--", "x", "2", "-1", "0.5", "", "--frob", "-z", "--count=x", "--fast=1",
             "--level=2", "-lh", "-fx"]
TURBO_WORDS = ["plan", "quality", "recommend", "rollback", "settings-show", "spec-init", "--model", "--host",
               "--layers", "--weights-gib", "--where", "--key", "--from", "--dry-run", "--json", "--help", "-h",
               "--list", "-l", "-f", "--config", "--complete", "-V", "--pty", "--", "x", "4", "2.5", "-1", "",
               "--frob", "extra", "--layers=x", "--from=a", "-fa", "-lh", "--print-completion-script"]


@settings(max_examples=int(os.environ.get("ARGV_EXAMPLES", "400")), deadline=None)
@given(argv=st.lists(st.sampled_from(TOY_WORDS), max_size=7))
def test_the_check_agrees_with_invoke_on_a_toy_collection(argv: list[str]) -> None:
    assert bool(error(argv, TOY, INVOKE_CORE)) == invoke_refuses(argv, TOY, INVOKE_CORE), (argv, error(argv, TOY,
                                                                                                        INVOKE_CORE))


@settings(max_examples=int(os.environ.get("ARGV_EXAMPLES", "400")), deadline=None)
@given(argv=st.lists(st.sampled_from(TURBO_WORDS), max_size=7))
def test_the_check_agrees_with_invoke_on_the_tasks(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert bool(error(argv)) == invoke_refuses(argv, TURBO, TURBO_CORE), (argv, error(argv))


def test_the_check_leaves_each_tasks_help_in_place() -> None:
    def body(c: Any, dest: str, scenario: str = "clean") -> None:
        """A task with help for its flags."""

    made = task(help={"dest": "where to write", "scenario": "which one"})(body)
    helped = Collection(made)
    assert error(["body", "--dest", "d", "--help"], helped) == ""
    assert error(["--help", "body"], helped) == ""
    assert made.help == {"dest": "where to write", "scenario": "which one"}
