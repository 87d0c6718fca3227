"""What a host was deployed to run, recorded in the release by ``deploy`` (``releases/<version>/deployed.json``):
the server's K/V and each model's, the server's environment, the fork's knobs, the build. ``smoke --host``,
``bench --host`` and ``status`` read it, so they check, measure and report what the host was given, and say so
when today's settings say otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from ollama_turbo import __version__
from ollama_turbo.core import redact
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.settings import KV, Settings
from ollama_turbo.fork.behaviour import ForkBehaviour

NAME = "deployed.json"
SCHEMA = 1


@dataclass(frozen=True)
class ModelCache:
    kv: KVPair
    own: bool  # its own kv_cache_type (else the host's default)


@dataclass(frozen=True)
class DeployRecord:
    version: str
    server_kv: KVPair
    models: dict[str, ModelCache]
    cache_env: dict[str, str]  # turbo.kv.env as deployed: the fork's knobs and the other server variables
    flash_attention: bool
    parallel: int
    toolkit: str
    deployed_at: str
    problems: tuple[str, ...] = field(default=())  # what could not be read (a record of another toolkit)
    cpu_variants: dict[str, Any] = field(default_factory=dict)  # CPU variants left out (build, host) and shipped

    @property
    def fork(self) -> ForkBehaviour:
        return ForkBehaviour.from_env(self.cache_env)

    def cache(self) -> KV:
        """The configured cache the host was deployed with, as the settings would type it."""
        return KV(type_k=self.server_kv.k, type_v=self.server_kv.v, flash_attention=self.flash_attention,
                  env=dict(self.cache_env), fork=self.fork, parallel=self.parallel)

    def kv_for(self, model: str | None) -> tuple[KVPair, str]:
        """The pair a model runs (its own, or the host's default), and which it is."""
        for name in ([model, model.split(":")[0]] if model else []):
            if name in self.models:
                m = self.models[name]
                return m.kv, "its own kv_cache_type" if m.own else "the host's default"
        return self.server_kv, "the host's default"

    def differs_from(self, settings: Settings) -> list[str]:
        """Where today's settings would deploy something else than this host runs."""
        now = settings.kv
        out = []
        if KVPair(now.type_k, now.type_v) != self.server_kv:
            out.append(f"turbo.kv is {KVPair(now.type_k, now.type_v).label}, the host was deployed with "
                       f"{self.server_kv.label}")
        if now.env != self.cache_env:
            out.append(f"turbo.kv.env is {redact.env(now.env)}, the host was deployed with "
                       f"{redact.env(self.cache_env)}")
        if now.flash_attention != self.flash_attention:
            out.append(f"turbo.kv.flash_attention is {now.flash_attention}, the host was deployed with "
                       f"{self.flash_attention}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": self.version, "server_kv": self.server_kv.label,
                "models": {n: {"kv": m.kv.label, "own": m.own} for n, m in self.models.items()},
                "cache_env": self.cache_env, "flash_attention": self.flash_attention, "parallel": self.parallel,
                "toolkit": self.toolkit, "deployed_at": self.deployed_at,
                **({"cpu_variants": self.cpu_variants} if self.cpu_variants else {})}


def make(version: str, server_kv: KVPair, models: dict[str, ModelCache], cache: KV, *,
         cpu_variants: dict[str, Any] | None = None) -> DeployRecord:
    return DeployRecord(version, server_kv, models, dict(cache.env), cache.flash_attention, cache.parallel,
                        __version__, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        cpu_variants=dict(cpu_variants or {}))


def parse(text: str, where: str) -> DeployRecord:
    """A record's text; what another toolkit wrote is read where it can be, and what cannot is said
    (``problems``). Not JSON at all: a :class:`RecordError` naming the file."""
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{where}: not a deploy record ({exc})",
                          hint="deploy again (invoke deploy) to write a new one") from None
    if not isinstance(d, dict):
        raise RecordError(f"{where}: not a deploy record (a JSON {type(d).__name__})")
    problems: list[str] = []
    if d.get("schema") != SCHEMA:
        problems.append(f"written by ollama-turbo {d.get('toolkit', '?')} (record schema {d.get('schema')!r}, this "
                        f"toolkit reads {SCHEMA})")

    def pair(value: Any, what: str) -> KVPair | None:
        try:
            return KVPair.parse(str(value))
        except TurboError:
            problems.append(f"{what} {value!r} is not a K/V pair this toolkit knows")
            return None

    server = pair(d.get("server_kv"), "server_kv") or KVPair("f16", "f16")
    models: dict[str, ModelCache] = {}
    for name, m in (d.get("models") or {}).items() if isinstance(d.get("models"), dict) else []:
        kv = pair(m.get("kv") if isinstance(m, dict) else None, f"model {name}'s kv")
        if kv is not None:
            models[str(name)] = ModelCache(kv, bool(m.get("own")))
    raw = d.get("cache_env")
    env: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if not isinstance(raw, dict):
        problems.append("no cache_env: the fork's knobs it was deployed with are not known")
    try:
        ForkBehaviour.from_env({str(k): str(v) for k, v in env.items()})
    except TurboError as exc:
        problems.append(f"cache_env: {exc}")
        env = {}
    return DeployRecord(str(d.get("version", "")), server, models, {str(k): str(v) for k, v in env.items()},
                        bool(d.get("flash_attention", True)), int(d.get("parallel") or 1),
                        str(d.get("toolkit", "")), str(d.get("deployed_at", "")), tuple(problems),
                        dict(d["cpu_variants"]) if isinstance(d.get("cpu_variants"), dict) else {})


class RecordError(TurboError):
    pass
