"""The one place that runs subprocesses.

Commands are argv lists, never shell strings. With ``verbose`` each command is echoed as
``+ cmd`` on stderr. Failures raise :class:`CommandError` carrying the command, the exit
code and the tail of its output.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core.errors import CommandError, ToolMissing

TAIL_LINES = 25
_verbose = bool(os.environ.get("TURBO_VERBOSE"))


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def which(tool: str, *, hint: str | None = None) -> str:
    """Absolute path of ``tool`` on PATH, or :class:`ToolMissing` with an install hint."""
    found = shutil.which(tool)
    if not found:
        raise ToolMissing(f"required tool not found on PATH: {tool}", hint=hint)
    return found


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = True,
    log: Path | None = None,
    input: str | None = None,
) -> Result:
    """Run ``argv``; capture output (or append it to ``log``); raise on failure if ``check``."""
    args = [os.fspath(a) for a in argv]
    if _verbose:
        where = f"  (in {cwd})" if cwd else ""
        print("+ " + shlex.join(args) + where, file=sys.stderr, flush=True)
    full_env = dict(os.environ if env is None else env)
    if extra_env:
        full_env.update(extra_env)
    try:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write("+ " + shlex.join(args) + "\n")
                fh.flush()
                proc = subprocess.run(
                    args, cwd=cwd, env=full_env, timeout=timeout, stdout=fh,
                    stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", input=input,
                    stdin=None if input is not None else subprocess.DEVNULL,
                )
            out, err = "", ""
        else:
            proc = subprocess.run(
                args, cwd=cwd, env=full_env, timeout=timeout, text=True, encoding="utf-8", errors="replace",
                capture_output=capture, input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
            out, err = proc.stdout or "", proc.stderr or ""
    except FileNotFoundError as exc:
        raise ToolMissing(f"cannot run {args[0]}: not found", hint="install it or fix PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or exc.stdout or ""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        raise CommandError(args, None, tail(text), cwd=_s(cwd), timed_out=True,
                           log=_s(log)) from exc
    result = Result(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        shown = err or out
        if log is not None:
            shown = tail(log.read_text(encoding="utf-8", errors="replace"))
        raise CommandError(args, proc.returncode, tail(shown), cwd=_s(cwd), log=_s(log))
    return result


def _s(p: str | os.PathLike[str] | None) -> str | None:
    return None if p is None else os.fspath(p)


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    cwd: str | os.PathLike[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process (a server) with its output appended to ``log``."""
    args = [os.fspath(a) for a in argv]
    if _verbose:
        print("+ " + shlex.join(args) + " &", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.update(extra_env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        try:
            return subprocess.Popen(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError as exc:
            raise ToolMissing(f"cannot run {args[0]}: not found") from exc


def stop(p: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate a process started by :func:`spawn` (and its process group)."""
    import signal

    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def output_bytes(argv: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
                 timeout: float | None = None) -> bytes:
    """Run ``argv`` and return its standard output as bytes (for archives)."""
    args = [os.fspath(a) for a in argv]
    if _verbose:
        print("+ " + shlex.join(args), file=sys.stderr, flush=True)
    p = subprocess.run(args, cwd=cwd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise CommandError(args, p.returncode, tail(p.stderr.decode(errors="replace")), cwd=_s(cwd))
    return p.stdout
