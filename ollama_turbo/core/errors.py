"""One error hierarchy; every error knows its stable process exit code.

Exit codes (abidiff-style bits, shared by every task):

====  ==========================================================
0     success, nothing to report
1     error: something failed (a command, a file, a host)
2     usage: bad flags or bad settings (names the key and file)
4     review: a change a person should look at (api-check)
8     incompatible: the fork cannot be used as it is (api-check)
130   interrupted (Ctrl-C): one line says what was left
====  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REVIEW = 4
EXIT_INCOMPATIBLE = 8
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program Ctrl-C stopped


class TurboError(Exception):
    """Base class. ``hint`` is the next step a person should take."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  next step: {self.hint}"
        return self.message


class UsageError(TurboError):
    """Bad command-line flags."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Bad settings: names the file and the dotted key."""

    def __init__(
        self, message: str, *, key: str | None = None, source: str | None = None,
        hint: str | None = None, prefix: str = "turbo.",
    ) -> None:
        where = ""
        if key:
            where += key if key.startswith(prefix) else prefix + key
        if source:
            where += f" (in {source})" if where else f"in {source}"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.key = key
        self.source = source


class CommandError(TurboError):
    """A subprocess failed. Carries the command, its exit code and the tail of stderr."""

    def __init__(
        self, argv: list[str], returncode: int | None, stderr_tail: str = "", *,
        cwd: str | None = None, log: str | None = None, timed_out: bool = False,
        hint: str | None = None,
    ) -> None:
        shown = " ".join(argv)
        what = f"command timed out: {shown}" if timed_out else f"command failed with exit code {returncode}: {shown}"
        if cwd:
            what += f"\n  in: {cwd}"
        if log:
            what += f"\n  full log: {log}"
        if stderr_tail.strip():
            tail = "\n".join("    " + line for line in stderr_tail.rstrip().splitlines())
            what += f"\n  output (last lines):\n{tail}"
        super().__init__(what, hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out


class ToolMissing(TurboError):
    """A required toolchain (git, go, cmake, a compiler) is absent or too old."""


class SourceError(TurboError):
    """A source tree is missing, not a git repository, lacks a ref, or is of an unknown era."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, caught where the state it leaves is known: ``left`` says what that state is, ``hosts`` the hosts
    a person should look at next. A KeyboardInterrupt still, so no ``except Exception`` swallows it."""

    def __init__(self, left: str, *, hosts: list[str] | None = None) -> None:
        super().__init__(left)
        self.left = left
        self.hosts = list(hosts or [])
