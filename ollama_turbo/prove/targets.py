"""Where bench finds a server for each cache type: pre-started URLs, or llama-server started here."""

from __future__ import annotations

import contextlib
import functools
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import requests

from ollama_turbo.core import poll, proc
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.ports import free_port
from ollama_turbo.fork import cache_types
from ollama_turbo.fork.cache_types import label
from ollama_turbo.prove.bench import Options
from ollama_turbo.prove.client import Endpoint
from ollama_turbo.prove.server_log import decode, file_reader

Starter = Callable[[], AbstractContextManager[Endpoint]]


DEFAULT_TYPES = "f16,q8_0,turbo4,q8_0/turbo4"


def pairs_for(types: str) -> list[KVPair]:
    """The K/V pairs to bench: ``--types``, or the default set."""
    return cache_types.parse_pairs(types or DEFAULT_TYPES)


def choose(*, url: str, log: str, api: str, model: str, types: str, llama_server: str, gguf: str, ctx: int,
           opts: Options, logs_dir: Path, extra_env: dict[str, str], parallel: int = 1,
           stock: StockServer | None = None) -> list[tuple[Endpoint, Starter]]:
    """Servers for ``bench``: started here (``--llama-server``) or already running (``--url``)."""
    if llama_server:
        if not gguf:
            raise UsageError("--llama-server needs --gguf MODEL")
        size = ctx or max([*opts.depths, *opts.niah_lengths, 0]) + 1024
        return local_llama_server(Path(llama_server), Path(gguf), pairs_for(types), ctx=size, logs=logs_dir,
                                  extra_env=extra_env, parallel=parallel, stock=stock)
    if stock is not None:
        raise UsageError("--stock runs stock Ollama's llama-server here beside the custom build's: it goes with "
                         "--llama-server (e.g. --llama-server auto --manifest DIST --stock STOCK_DIST)")
    if url:
        urls = parse_urls(url)
        logs = {k: Path(v) for k, v in (parse_urls(log) if log else {}).items()}
        if types and set(urls) != {label(k, v) for k, v in pairs_for(types)}:
            raise UsageError(f"--types {types} does not match the types given in --url ({', '.join(urls)})")
        return static(urls, api, model, logs)
    raise UsageError("give --url TYPE=URL,..., --host H, or --llama-server BIN --gguf MODEL")


def parse_urls(spec: str) -> dict[str, str]:
    """``f16=http://a:1,q8_0/turbo4=http://b:2`` -> {label: url}."""
    out = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise UsageError(f"--url {part!r}: give TYPE=URL for each cache type (e.g. f16=http://127.0.0.1:8080)")
        t, url = part.split("=", 1)
        k, v = cache_types.parse_pair(t)
        out[label(k, v)] = url
    return out


def static(urls: dict[str, str], api: str, model: str, logs: dict[str, Path]) -> list[tuple[Endpoint, Starter]]:
    out = []
    for lab, url in urls.items():
        k, v = cache_types.parse_pair(lab)
        log = logs.get(lab)
        ep = Endpoint(lab, k, v, url, api, model, file_reader(log) if log else None)
        out.append((ep, _fixed(ep)))
    return out


def _fixed(ep: Endpoint) -> Starter:
    @contextlib.contextmanager
    def start() -> Iterator[Endpoint]:
        yield ep

    return start


@dataclass(frozen=True)
class StockServer:
    """Stock Ollama's llama-server beside the custom build's: the types it has run on it, labelled ``stock <K/V>``."""

    binary: Path
    types: frozenset[str]
    env: dict[str, str]


def local_llama_server(binary: Path, gguf: Path, pairs: list[KVPair], *, ctx: int, logs: Path,
                       extra_env: dict[str, str] | None = None, parallel: int = 1,
                       stock: StockServer | None = None) -> list[tuple[Endpoint, Starter]]:
    """Start ``binary`` once per cache type, on 127.0.0.1, and stop it after that type's bench; with ``stock``,
    the types stock Ollama's build has start its own llama-server instead."""
    out: list[tuple[Endpoint, Starter]] = []
    for k, v in pairs:
        on_stock = stock is not None and k in stock.types and v in stock.types
        lab = ("stock " if on_stock else "") + label(k, v)
        log = logs / f"llama-server-{lab.replace('/', '-').replace(' ', '-')}.log"
        ep = Endpoint(lab, k, v, "", "llama-server", gguf.name, file_reader(log))
        env = {**(extra_env or {}), **(stock.env if stock and on_stock else {})}
        server = stock.binary if stock and on_stock else binary
        out.append((ep, functools.partial(_spawn, server, gguf, ep, ctx, log, env, parallel)))
    return out


def start_llama_server(binary: Path, gguf: Path, type_k: str, type_v: str, *, ctx: int, log: Path,
                       extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                       timeout: float = 180, parallel: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-server on a free 127.0.0.1 port with these cache types; return it once healthy.

    ``parallel`` sequences of ``ctx`` tokens each, as Ollama runs it (``-c ctx*n -np n``, a cache per
    sequence). It logs at verbosity 4, where llama.cpp prints its KV cache lines.
    """
    port = free_port()
    p = proc.spawn([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx * parallel),
                    "-np", str(parallel),
                    "-fa", "on", "--cache-type-k", type_k, "--cache-type-v", type_v, "-lv", "4", *extra_args],
                   log=log, extra_env=extra_env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool | None:
        if p.poll() is not None:
            raise TurboError(f"llama-server ({label(type_k, type_v)}) exited with {p.returncode}:\n"
                             f"{proc.tail(decode(log.read_bytes()), 8)}")
        try:
            return requests.get(url + "/health", timeout=2).status_code == 200 or None
        except requests.RequestException:
            return None

    if not poll.until(healthy, interval=0.1, timeout=timeout):
        proc.stop(p)
        raise TurboError(f"llama-server ({label(type_k, type_v)}) did not become healthy; log: {log}")
    return p, url


@contextlib.contextmanager
def _spawn(binary: Path, gguf: Path, ep: Endpoint, ctx: int, log: Path, env: dict[str, str],
           parallel: int = 1) -> Iterator[Endpoint]:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    p, ep.url = start_llama_server(binary, gguf, ep.type_k, ep.type_v, ctx=ctx, log=log, extra_env=env,
                                   parallel=parallel)
    try:
        yield ep
    finally:
        proc.stop(p)


def server_version(binary: Path, env: dict[str, str]) -> str:
    """What a llama-server binary says of itself (``--version``), for a report's header."""
    r = proc.run([binary, "--version"], check=False, extra_env=env or None, timeout=60)
    found = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("version:")]
    return f"llama-server {found[0].split(':', 1)[1].strip()}" if found else f"llama-server {binary}"
