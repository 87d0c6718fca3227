"""The CLI's promise under any input: one clear error, the right exit code, never a traceback.

Every task's flags are driven with random words, numbers (huge and non-finite ones too) and paths (unwritable
ones under /proc and /sys, files that are not UTF-8), in process, in projects of the shapes users write (specs
that are not UTF-8 or hold huge numbers, ``turbo:`` with nothing under it, an empty section), with every source
pointed at a folder that does not exist and no reachable host, so nothing slow or networked can start.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_turbo import cli

from .conftest import bench

EXIT_CODES = {0, 1, 2, 4, 8, 12}
# tasks that would do long work when their input happens to be fine; they are fuzzed through the other tasks'
# shared parsers and named cases below
SKIP = {"demo", "sample"}
TASKS = {name: [a.names[0] for a in t.get_arguments()] for name, t in cli.namespace().tasks.items()
         if name not in SKIP}  # each flag's long name: --dry-run, --from
STATS = {"cases": 0, "seconds": 0.0}


@contextlib.contextmanager
def isolated(tmp: Path) -> Iterator[None]:
    """Sources that do not exist, a workspace of its own, and the project folder a fresh one."""
    env = {"INVOKE_TURBO_WORKSPACE": str(tmp / "ws"),
           "INVOKE_TURBO_SOURCES_OLLAMA_URL": str(tmp / "no-ollama"),
           "INVOKE_TURBO_SOURCES_FORK_URL": str(tmp / "no-fork"),
           "INVOKE_TURBO_SOURCES_UPSTREAM_URL": str(tmp / "no-upstream"),
           "PIP_NO_INDEX": "1"}  # upstream-tree --builds N: pip looks nowhere
    old = {k: os.environ.get(k) for k in env}
    cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(argv: list[str]) -> tuple[int, str, str]:
    """The ``ollama-turbo`` program in this process: exit code, stdout, stderr. An exception that escapes is
    what a user would see as a traceback, so it is not caught here."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    program = cli.TurboProgram(namespace=cli.namespace(), name="ollama-turbo", binary="ollama-turbo",
                               binary_names=["ollama-turbo"], version="test")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["ollama-turbo", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> tuple[int, str]:
    t0 = time.perf_counter()
    code, out, err = run(argv)
    STATS["cases"] += 1
    STATS["seconds"] += time.perf_counter() - t0
    assert "Traceback" not in out + err, (argv, err)
    assert code in EXIT_CODES, (argv, code, err)
    if code == 2:
        assert "error: " in err and "next step: " in err, (argv, err)
    return code, err


WORDS = st.sampled_from(["x", "abc", "-1", "0", "2.5", "1e309", "99999999999999999999", "1000000000", "-100", "nan",
                         "inf", "-inf", "", " ", "turbo9", "q8_0/", "/turbo4", "q8_0/turbo4", "k/v/w", "é", "8k",
                         "0x10", "--", "true", "none"])
# nothing outside the project a task could write into as root: the files and folders that exist and are
# writable are the project's own (FILES, '.'); /proc and /sys are folders no one can write
PATHS = st.sampled_from(["/proc/nope/x.json", "/proc/x.json", "/sys/x.json", "/nonexistent/dir/file", "/proc", ".",
                         "rel/out.json", "/dev/null", "a\tb", "notutf8.yaml", "empty.yaml"])
NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str),
                    st.integers(-10**30, 10**30).map(str))
VALUES = st.one_of(WORDS, PATHS, NUMBERS)

# files in every fuzzed project, for -f and the path flags
FILES = {"notutf8.yaml": b"\xff\xfe not text\n", "empty.yaml": b"turbo:\n"}
# what the project directory holds: invoke.yaml and modelfiles/ of the shapes users have written
SHAPES = {
    "bare": {},
    "a spec not UTF-8": {"modelfiles/bad.yaml": b"from: x\n\xff\xfe\n"},
    "a spec with huge numbers": {"modelfiles/big.yaml": b"from: x\nnum_ctx: auto\ngeometry: {layers: "
                                                        b"99999999999999999999, kv_heads: 2, head_dim: 64}\n"},
    "turbo: alone": {"invoke.yaml": b"turbo:\n"},
    "an empty section": {"invoke.yaml": b"turbo:\n  kv:\n"},
    "settings not UTF-8": {"invoke.yaml": b"turbo:\n  workspace: \xe9\n"},
    "a host with memory_gib .nan": {"invoke.yaml": b"turbo:\n  hosts:\n    h: {ssh: nowhere.invalid, os: linux, "
                                             b"memory_gib: .nan}\n"},
}


def project(root: Path, shape: str) -> Path:
    """A fresh project directory of this shape (each example its own, under the test's tmp_path)."""
    import tempfile

    d = Path(tempfile.mkdtemp(dir=root))
    for rel, data in {**FILES, **SHAPES[shape]}.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


@st.composite
def command(draw: st.DrawFn) -> list[str]:
    task = draw(st.sampled_from(sorted(TASKS)))
    flags = draw(st.lists(st.sampled_from(TASKS[task]), max_size=4, unique=True)) if TASKS[task] else []
    argv = [task]
    for f in flags:
        argv += ["--" + f, draw(VALUES)]
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(["--frobnicate", "extra", "-z"])))
    if draw(st.integers(0, 9)) == 0:
        argv = ["-f", draw(st.sampled_from(["notutf8.yaml", "empty.yaml", "missing.yaml"])), *argv]
    return argv


@settings(max_examples=int(os.environ.get("TURBO_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command(), shape=st.sampled_from(sorted(SHAPES)))
def test_random_flags_never_end_in_a_traceback(argv: list[str], shape: str, tmp_path: Path) -> None:
    with isolated(project(tmp_path, shape)):
        check(argv)


@pytest.mark.parametrize(("argv", "code", "says"), [
    (["plan", "--layers", "x"], 2, "'x' is not a whole number"),
    (["plan", "--weights-gib", "abc"], 2, "'abc' is not a number"),
    (["bench", "--reps", "x"], 2, "'x' is not a whole number"),
    (["smoke", "--min-decode-ratio", "abc"], 2, "'abc' is not a number"),
    (["plan", "--frobnicate"], 2, "unknown flag --frobnicate"),
    (["frobnicate"], 2, "no task or flag named 'frobnicate'"),
    (["quality"], 2, "quality needs --model"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--json", "/proc/nope/x.json"], 2,
     "cannot make the folder"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--ctx", "99999999999999999999"], 2,
     "is more than 16,777,216 tokens"),
    (["api-check", "--target", "sparc-sun-solaris"], 2, "not a target"),
    (["bench", "--reps", "0", "--url", "f16=http://127.0.0.1:9", "--model", "m"], 2, "--reps 0: must be 1 or more"),
    (["bench", "--niah-depths", "2.5", "--url", "f16=http://127.0.0.1:9", "--model", "m"], 2, "not a fraction"),
    (["bench", "--url", "f16=http://127.0.0.1:9"], 2, "needs --model"),
    (["demo", "--cache-type", "turbo9"], 2, "unknown cache type 'turbo9'"),
    (["deploy", "--host", "ghost"], 2, "ghost"),
    (["smoke", "--host", "ghost"], 2, "ghost"),
    (["plan", "--layers", "99999999999999999999", "--kv-heads", "2", "--head-dim", "64"], 2,
     "error: --layers 99999999999999999999: must be from 1 to 4,096 (no model has more)"),
    (["plan", "--layers", "1000000000", "--kv-heads", "2", "--head-dim", "64"], 2,
     "error: --layers 1000000000: must be from 1 to 4,096"),
    (["plan", "--layers", "4", "--kv-heads", "99999999999999999999", "--head-dim", "64"], 2,
     "error: --kv-heads 99999999999999999999: must be from 1 to 8,192"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "70000"], 2,
     "--head-dim 70000: must be from 1 to 65,536"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--weights-gib", "nan"], 2,
     "error: --weights-gib nan: not a finite number"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--weights-gib", "inf"], 2,
     "error: --weights-gib inf: not a finite number"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--reserve-gib", "nan"], 2,
     "error: --reserve-gib nan: not a finite number"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--reserve-gib", "-100"], 2,
     "error: --reserve-gib -100: must be 0 or more (a negative reserve would count memory the host does not have)"),
    (["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--json", "/proc/x.json"], 2,
     "error: --json /proc/x.json: cannot write the file: "),
    (["bench", "--out", "/sys/turbo-bench"], 2, "error: --out /sys/turbo-bench: cannot make the folder"),
    (["smoke", "--url", "http://127.0.0.1:9", "--max-ttft-ratio", "inf"], 2, "--max-ttft-ratio inf: not a finite"),
    (["quality", "--model", "m.gguf", "--llama-perplexity", "/bin/true", "--max-kld", "nan"], 2,
     "--max-kld 'nan' must be a positive number"),
    (["api-check", "--ollama", "/no/such/ollama"], 2, "error: --ollama /no/such/ollama: no such folder"),
    (["api-check"], 2, "no-ollama: no such folder"),  # the configured sources, checked before any is opened
    (["verify-fork", "--fork", "/dev/null"], 2, "--fork /dev/null: a file, not a git checkout"),
])
def test_named_bad_inputs(argv: list[str], code: int, says: str, tmp_path: Path) -> None:
    with isolated(tmp_path):
        got, err = check(argv)
    assert got == code and says in err, (argv, got, err)


def test_a_bench_that_measured_nothing_fails(tmp_path: Path) -> None:
    with isolated(tmp_path):
        got, err = check(["bench", "--url", "f16=http://127.0.0.1:9", "--model", "m", "--depths", "0", "--reps", "1",
                          "--niah-lengths", "", "--ab-predict", "0", "--out", str(tmp_path / "b")])
    assert got == 1 and "bench measured nothing" in err


@pytest.mark.parametrize(("value", "ok"), [("false", True), ("off", True), ("0", True), ("yes", True),
                                           ("sometimes", False)])
def test_yes_no_settings_are_read_as_words(value: str, ok: bool, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_TURBO_KV_FLASH_ATTENTION", value)
    with isolated(tmp_path):
        code, out, err = run(["settings-show", "--key", "kv.flash_attention"])
    if ok:
        assert code == 0 and out.strip() == ("true" if value == "yes" else "false")
    else:
        assert code == 2 and "is not a yes/no value" in err


def test_an_unknown_setting_in_the_environment_stops_every_task(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_TURBO_KV_TYPEK", "q8_0")
    with isolated(tmp_path):
        code, _, err = run(["settings-show"])
    assert code == 2 and "unknown setting in the environment: INVOKE_TURBO_KV_TYPEK" in err


def test_zz_print_fuzz_rate() -> None:
    if STATS["cases"]:
        bench(f"CLI fuzz: {STATS['cases']} cases in {STATS['seconds']:.1f} s "
              f"({STATS['cases'] / max(STATS['seconds'], 1e-9):.0f} cases/s)")


def test_a_bad_port_in_a_hosts_ssh_is_a_settings_error(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("turbo:\n  hosts:\n    h: {ssh: 'me@host:x', os: linux}\n")
    with isolated(tmp_path):
        code, err = check(["-f", str(fleet), "status", "--host", "h"])
    assert code == 2 and "turbo.hosts.h.ssh" in err and "'me@host:x' is not user@host" in err


def test_an_apiignore_that_is_a_folder_or_unreadable_is_a_usage_error(tmp_path: Path) -> None:
    """Found by the fuzz above (``api-check --apiignore /``): a traceback before; now exit 2 naming it."""
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    for path, words in (("/", "--apiignore /: is a folder, not a file"), (str(binary), "cannot be read")):
        with isolated(tmp_path):
            got, err = check(["api-check", "--apiignore", path])
        assert got == 2 and words in err and "next step:" in err, (path, got, err)


def test_the_output_probe_leaves_no_file_behind(tmp_path: Path) -> None:
    out = tmp_path / "plans" / "x.json"
    with isolated(tmp_path):
        got, err = check(["plan", "--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--types", "turbo9",
                          "--json", str(out)])
    assert got == 2 and "turbo9" in err
    assert not out.exists()  # tried, then removed: a run that failed wrote nothing
