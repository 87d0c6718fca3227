"""The package as a user installs it: a wheel in a fresh venv, the ``ollama-turbo`` command run
outside the checkout; and the layer rules, which must catch an import that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.package

FLEET = """turbo:
  hosts:
    macbook: {ssh: me@macbook.local, os: darwin, memory_gib: 36}
    predator: {ssh: predator, os: linux, memory_gib: 24}
"""


def _run(argv: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], text=True, capture_output=True, timeout=900, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh venv with the wheel installed (not editable), dependencies from the index."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    def ignore(folder: str, names: list[str]) -> set[str]:
        """Outputs and caches; ``build``/``dist`` only at the top (a package folder may have any name)."""
        skip = {n for n in names if n in (".git", ".turbo", "__pycache__") or n.endswith((".egg-info", "_cache"))}
        return skip | ({"build", "dist"} & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, src, ignore=ignore)
    r = _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", src])
    if r.returncode != 0 and "Could not find a version" in r.stdout + r.stderr:
        pytest.skip("the package index is unreachable (build needs setuptools from it)")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    wheel = next((tmp / "dist").glob("ollama_turbo-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    r = _run([env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel])
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "NewConnectionError" in r.stderr):
        pytest.skip(f"the package index is unreachable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return env_dir / "bin"


def test_wheel_installs_the_cli_and_its_package_data(installed: Path, tmp_path: Path) -> None:
    cli = installed / "ollama-turbo"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    r = _run([cli, "--list"], cwd=tmp_path, env=env)
    print(f"\n[bench] ollama-turbo --list from the wheel: {time.perf_counter() - t0:.2f} s")
    assert r.returncode == 0, r.stderr
    for name in ("api-check", "build-ollama", "plan", "modelfiles", "deploy", "smoke", "bench", "demo"):
        assert name in r.stdout

    # the installed package, not the checkout, answers
    r = _run([installed / "python", "-c", "import ollama_turbo; print(ollama_turbo.__file__)"], cwd=tmp_path, env=env)
    assert str(installed.parent) in r.stdout, r.stdout

    # every stage and every module of the checkout is in the wheel, and imports
    here = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                  for p in (ROOT / "ollama_turbo").rglob("*.py") if "__pycache__" not in p.parts)
    listing = ("import importlib, pkgutil, ollama_turbo\n"
               "names = sorted(['ollama_turbo'] + [m.name for m in pkgutil.walk_packages(ollama_turbo.__path__, "
               "'ollama_turbo.')])\n"
               "[importlib.import_module(n) for n in names if not n.endswith('__main__')]\nprint('\\n'.join(names))")
    r = _run([installed / "python", "-c", listing], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = sorted(r.stdout.split())
    want = sorted(n.removesuffix(".__init__") for n in here)
    assert wheel == want, sorted(set(want) ^ set(wheel))
    assert {"ollama_turbo.builder", "ollama_turbo.deploy", "ollama_turbo.prove", "ollama_turbo.kv",
            "ollama_turbo.check", "ollama_turbo.fork", "ollama_turbo.core", "ollama_turbo.sample"} <= set(wheel)

    (tmp_path / "invoke.yaml").write_text(FLEET)
    out = tmp_path / "mf"
    r = _run([cli, "modelfiles", "--examples", "--out", out], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.Modelfile"))
    assert written, r.stdout
    assert any("macbook" in w for w in written) and any("predator" in w for w in written), written
    text = next(out.rglob("*.Modelfile")).read_text()
    assert text.startswith("#") and "FROM " in text  # rendered from the packaged template

    r = _run([cli, "plan", "--layers", "32", "--kv-heads", "8", "--head-dim", "128", "--ctx", "8k,32k",
              "--types", "f16,turbo4"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "turbo4" in r.stdout and "32,768" in r.stdout.replace("32768", "32,768")

    r = _run([cli, "plan", "--ctx", "8k"], cwd=tmp_path, env=env)
    assert r.returncode == 2 and "give --model GGUF" in r.stderr and "Traceback" not in r.stderr


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports (import-linter) is not installed")
    env = dict(os.environ, PYTHONPATH=str(root))
    return _run([exe, "--no-cache"], cwd=root, env=env)


def test_layer_contracts_hold_and_catch_a_violation(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copytree(ROOT / "ollama_turbo", tree / "ollama_turbo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    r = _lint_imports(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout

    smoke = tree / "ollama_turbo" / "prove" / "smoke.py"
    smoke.write_text(smoke.read_text() + "\nfrom ollama_turbo.check import apicheck  # noqa: E402,F401\n")
    r = _lint_imports(tree)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "prove and deploy never import check BROKEN" in r.stdout
    assert "ollama_turbo.prove.smoke -> ollama_turbo.check.apicheck" in r.stdout
