"""Where bench finds a server for each cache type: pre-started URLs, or llama-server started here."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import requests

from . import kvmem, proc
from .bench import Endpoint
from .errors import TurboError, UsageError
from .ports import free_port

Starter = Callable[[], AbstractContextManager[Endpoint]]


def label(k: str, v: str) -> str:
    return k if k == v else f"{k}/{v}"


def parse_urls(spec: str) -> dict[str, str]:
    """``f16=http://a:1,q8_0/turbo4=http://b:2`` -> {label: url}."""
    out = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise UsageError(f"--url {part!r}: give TYPE=URL for each cache type (e.g. f16=http://127.0.0.1:8080)")
        t, url = part.split("=", 1)
        k, v = kvmem.parse_pair(t)
        out[label(k, v)] = url
    return out


def static(urls: dict[str, str], api: str, model: str, logs: dict[str, Path]) -> list[tuple[Endpoint, Starter]]:
    out = []
    for lab, url in urls.items():
        k, v = kvmem.parse_pair(lab)
        log = logs.get(lab)
        ep = Endpoint(lab, k, v, url, api, model, log.read_text if log else None)
        out.append((ep, _fixed(ep)))
    return out


def _fixed(ep: Endpoint) -> Starter:
    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        yield ep

    return start


def local_llama_server(binary: Path, gguf: Path, pairs: list[tuple[str, str]], *, ctx: int, logs: Path,
                       extra_env: dict[str, str] | None = None) -> list[tuple[Endpoint, Starter]]:
    """Start ``binary`` once per cache type, on 127.0.0.1, and stop it after that type's bench."""
    out: list[tuple[Endpoint, Starter]] = []
    for k, v in pairs:
        lab = label(k, v)
        log = logs / f"llama-server-{lab.replace('/', '-')}.log"
        ep = Endpoint(lab, k, v, "", "llama-server", gguf.name, log.read_text)
        out.append((ep, functools.partial(_spawn, binary, gguf, ep, ctx, log, extra_env or {})))
    return out


def start_llama_server(binary: Path, gguf: Path, type_k: str, type_v: str, *, ctx: int, log: Path,
                       extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                       timeout: float = 180) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-server on a free 127.0.0.1 port with these cache types; return it once healthy.

    It logs at verbosity 4, where llama.cpp prints its KV cache lines.
    """
    port = free_port()
    p = proc.spawn([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx), "-np", "1",
                    "-fa", "on", "--cache-type-k", type_k, "--cache-type-v", type_v, "-lv", "4", *extra_args],
                   log=log, extra_env=extra_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise TurboError(f"llama-server ({label(type_k, type_v)}) exited with {p.returncode}:\n"
                             f"{proc.tail(log.read_text(errors='replace'), 8)}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return p, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.stop(p)
            raise TurboError(f"llama-server ({label(type_k, type_v)}) did not become healthy; log: {log}")
        time.sleep(0.1)


@contextlib.contextmanager
def _spawn(binary: Path, gguf: Path, ep: Endpoint, ctx: int, log: Path, env: dict[str, str]) -> Iterator[Endpoint]:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    p, ep.url = start_llama_server(binary, gguf, ep.type_k, ep.type_v, ctx=ctx, log=log, extra_env=env)
    try:
        yield ep
    finally:
        proc.stop(p)
