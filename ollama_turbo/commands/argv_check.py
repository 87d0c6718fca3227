"""The command line, checked before invoke parses it: the first thing invoke would refuse (an unknown flag or
task, a flag with no value, a number that is not one, a task missing what it needs) becomes one usage error of
ours, exit 2, with the next step.

It reads the same grammar invoke reads, from invoke's public objects only (each task's ``get_arguments()``, the
program's core ``Argument`` list): the core flags first; then ``TASK [FLAGS...]`` groups, as many as given; a
task parameter with no default is required, and may also be given as a bare word after the task; ``--flag=value``
and ``-xVALUE`` forms; ``-abc`` for several one-letter flags; ``--no-FLAG`` for a yes/no flag that is on by default;
a core flag (``--help``, ``-f FILE``) after a task too; and ``--`` ends the flags.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from invoke.collection import Collection
from invoke.exceptions import Exit
from invoke.parser.argument import Argument

HELP_STEP = "run with --help TASK for the task's flags"


def usage_error(what: str, step: str) -> Exit:
    return Exit(f"error: {what}\n  next step: {step}", code=2)


def unknown(token: str) -> Exit:
    """A word that is no task or flag here (``-`` first: a flag)."""
    if token.startswith("-"):
        return usage_error(f"unknown flag {token}", HELP_STEP)
    return usage_error(f"no task or flag named {token!r}", "run with --list for the tasks")


def long_flag(arg: Argument) -> str:
    return as_flag(arg.names[0])


def as_flag(name: str) -> str:
    """A parameter's name as typed: ``kv_heads`` -> ``--kv-heads``, ``from_`` -> ``--from``, ``f`` -> ``-f``."""
    word = name.strip("_").replace("_", "-")
    return ("-" if len(word) == 1 else "--") + word


def takes_value(arg: Argument) -> bool:
    return arg.kind is not bool and not arg.incrementable


class Group:
    """The flags one task (or the program itself, ``name`` None) takes."""

    def __init__(self, name: str | None, args: Iterable[Argument]) -> None:
        self.name = name
        self.flags: dict[str, Argument] = {}
        self.inverse: dict[str, Argument] = {}
        self.required: list[Argument] = []
        for arg in args:
            for n in arg.names:
                self.flags[as_flag(n)] = arg
            if arg.kind is bool and arg.default is True:
                self.inverse[as_flag("no-" + arg.names[0])] = arg
            if arg.positional:
                self.required.append(arg)


class Walk:
    """One pass over the words. ``core_only``: the core pass, which stops at the first word that is not a core
    flag or its value and leaves it and the rest in ``rest`` for the pass over the tasks."""

    def __init__(self, core: Group, tasks: Mapping[str, Group], core_only: bool = False) -> None:
        self.core, self.tasks, self.core_only = core, tasks, core_only
        self.group = core
        self.seen: dict[int, dict[str, Any]] = {id(core): {}}  # per group: flag name -> value given
        self.flag: Argument | None = None  # the flag last named
        self.flag_group = core
        self.fresh = False  # whether that flag got a value since it was named (a word a value flag takes)
        self.rest: list[str] | None = None
        self.help: Any = None

    def values(self, group: Group) -> dict[str, Any]:
        return self.seen.setdefault(id(group), {})

    def run(self, words: Sequence[str]) -> None:
        queue = list(words)
        i = 0
        while i < len(queue):
            word = queue[i]
            i += 1
            if self.rest is not None:
                self.rest.append(word)
                continue
            word, more = self.split(word)
            queue[i:i] = more
            self.take(word)
        self.end_flag()
        self.end_task()

    def split(self, word: str) -> tuple[str, list[str]]:
        """``--flag=value`` and ``-xVALUE`` / ``-abc``, unless the word is the value a flag waits for."""
        if not word.startswith("-"):
            return word, []
        if "=" in word:
            head, _, value = word.partition("=")
            parts = [value]
        elif not word.startswith("--") and len(word) > 2:
            head, tail = word[:2], word[2:]
            arg = self.group.flags.get(head)
            parts = [tail] if arg is not None and takes_value(arg) else ["-" + c for c in tail]
        else:
            return word, []
        if self.waiting() and not (self.flag is not None and self.flag.optional and head in self.group.flags):
            return word, []
        return head, parts

    def waiting(self) -> bool:
        if self.flag is None or not takes_value(self.flag):
            return False
        if self.flag.kind is list:
            return not self.fresh
        return long_flag(self.flag) not in self.values(self.flag_group)

    def missing(self) -> list[Argument]:
        given = self.values(self.group)
        return [a for a in self.group.required if long_flag(a) not in given]

    def take(self, word: str) -> None:
        group = self.group
        if word in group.flags:
            self.to_flag(word, group.flags[word], group, True)
        elif word in group.inverse:
            self.to_flag(word, group.inverse[word], group, False)
        elif self.waiting():
            self.ambiguous(word)
            self.set(self.flag_group, self.flag, word)  # type: ignore[arg-type]
            self.fresh = True
        elif self.missing():
            self.set(group, self.missing()[0], word)
        elif word in self.tasks:
            self.end_flag()
            self.end_task()
            self.group = self.tasks[word]
            self.seen[id(self.group)] = {}  # a task named twice starts afresh
            self.flag = None
        elif word in self.core.flags and group is not self.core:
            arg = self.core.flags[word]
            if arg.names[0] == "help":  # --help after a task: that task's help
                self.help = self.values(self.core)[long_flag(arg)] = group.name
            else:
                self.to_flag(word, arg, self.core, True)
        elif self.core_only:  # the core pass: the tasks start here
            self.end_flag()
            self.rest = [word]
        else:
            raise unknown(word)

    def ambiguous(self, word: str) -> None:
        """A word after a flag whose value may be left out, where it could also be a task or a task's word."""
        flag = self.flag
        if flag is None or not flag.optional or long_flag(flag) in self.values(self.flag_group):
            return
        if self.missing() or word in self.tasks:
            raise usage_error(f"{word!r} after {long_flag(flag)} could be its value or the next word of the "
                              f"command", f"move {long_flag(flag)} to the end of the command line")

    def to_flag(self, word: str, arg: Argument, group: Group, on: bool) -> None:
        self.ambiguous(word)
        self.end_flag()
        self.flag, self.flag_group, self.fresh = arg, group, False
        if not takes_value(arg):
            self.values(group)[long_flag(arg)] = on

    def set(self, group: Group, arg: Argument, word: str) -> None:
        if arg.kind is not list and takes_value(arg) and arg.kind is not str:
            try:
                arg.kind(word)
            except (ValueError, TypeError):
                kind = "a whole number" if arg.kind is int else "a number"
                raise usage_error(f"{word!r} is not {kind}",
                                  "give the flag a number (see --help TASK for each flag)") from None
        self.values(group)[long_flag(arg)] = word
        if group is self.core and arg.names[0] == "help":
            self.help = word

    def end_flag(self) -> None:
        """The flag last named is done: one that needs a value must have had it."""
        arg = self.flag
        if arg is not None and takes_value(arg) and long_flag(arg) not in self.values(self.flag_group):
            if not arg.optional:
                flag = long_flag(arg)
                raise usage_error(f"{flag} needs a value", f"give it one: {flag} VALUE (see --help TASK)")
            self.values(self.flag_group)[long_flag(arg)] = True
            if self.flag_group is self.core and arg.names[0] == "help":
                self.help = True
        self.flag = None

    def end_task(self) -> None:
        missing = self.missing()
        if missing and self.group.name:
            name = self.group.name
            raise usage_error(f"{name} needs {', '.join(long_flag(a) for a in missing)}",
                              f"run with --help {name} for what each flag takes")


def check(argv: Sequence[str], collection: Collection, core: Iterable[Argument]) -> None:
    """Raise the usage error (an invoke ``Exit``, code 2) for the first word of ``argv`` (``argv[0]`` the
    program) that invoke would refuse; return when invoke will read it all."""
    words = list(argv[1:])
    if "--" in words:
        words = words[:words.index("--")]
    core_group = Group(None, core)
    first = Walk(core_group, {}, core_only=True)
    first.run(words)
    tasks: dict[str, Group] = {}
    for name, aliases in collection.task_names.items():
        # on a copy: get_arguments() hands each flag's help text over to its Argument, leaving the task's empty
        tasks[name] = Group(name, copy.deepcopy(collection[name]).get_arguments())
        for alias in aliases:
            tasks[alias] = tasks[name]
    second = Walk(core_group, tasks)
    second.run(first.rest or [])
    wanted = second.help if second.help is not None else first.help
    if isinstance(wanted, str) and wanted not in tasks:
        raise unknown(wanted)
