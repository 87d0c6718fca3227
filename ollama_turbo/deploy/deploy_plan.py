"""A deploy, decided before it is done: everything a deploy computes (the build, the rendered models, the
server's K/V and environment, the quality verdicts, the files to send, the service config and its diff, the
steps) in one :class:`DeployPlan`. ``--dry-run`` prints it; :mod:`ollama_turbo.deploy.releases` applies it in
one pass, step by step in the plan's order, and nothing it applies is worked out anew on the way.

Two halves: :func:`decide` needs only this machine (bad specs, a failed quality gate, a cache type the build
lacks stop here, before any host is contacted); :func:`survey` adds what the host has (read under its lock
for a real deploy).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ollama_turbo.core import server_kv as server_env
from ollama_turbo.core.kv_types import KVPair, label
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import KV, Host, Settings
from ollama_turbo.deploy import cpu_guard
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.models import quality_gate, render_models, server_kv
from ollama_turbo.deploy.record import DeployRecord, ModelCache
from ollama_turbo.deploy.record import make as make_record
from ollama_turbo.deploy.services import Layout, ServiceManager, render, service_env
from ollama_turbo.deploy.store import current_release, previous_release, remote_sums
from ollama_turbo.deploy.transport import Transport, q
from ollama_turbo.kv import modelfiles as modelfile

if TYPE_CHECKING:
    from ollama_turbo.deploy.adopt import Adoption


@dataclass(frozen=True)
class Intent:
    """The half of a plan that needs no host: what is deployed, with which models and caches."""

    host: Host
    build: Manifest
    models: tuple[modelfile.Rendered, ...]
    server_kv: KVPair                  # the host's default K/V (models without their own)
    cache: KV                          # the configured cache: flash attention, turbo.kv.env, the fork's knobs
    quality: tuple[dict[str, Any], ...]  # each model's recorded verdict with the K/V it will run

    @property
    def model_kv(self) -> dict[str, str]:
        """Each model's K/V and whether it is its own or the host's default."""
        return {r.spec.name: label(r.type_k, r.type_v) + (" own" if r.per_model else " host default")
                for r in self.models}

    @property
    def record(self) -> DeployRecord:
        """What the host is deployed to run, recorded in the release for smoke, bench and status."""
        return make_record(self.build.version, self.server_kv,
                           {r.spec.name: ModelCache(KVPair(r.type_k, r.type_v), r.per_model) for r in self.models},
                           self.cache, cpu_variants=cpu_guard.host_excluded(self.build))

    @property
    def smokes(self) -> list[tuple[str, KVPair]]:
        """What is proven after the restart: every model with the cache it runs, or the server alone ("")."""
        return [(r.spec.name, KVPair(r.type_k, r.type_v)) for r in self.models] or [("", self.server_kv)]


def decide(settings: Settings, host: Host, build: Manifest, *, specs_dir: Path | None = None,
           accept_unmeasured: bool = False) -> Intent:
    """For ``build`` (loaded whole by :func:`~ollama_turbo.deploy.dists.load_dist`): the host's models rendered
    for it, the server's K/V (types the build's fork has, one type for an era B build), the quality verdicts:
    all before any host is contacted. The CPU variants the host cannot run (its ``cpu_exclude``) are left out of
    the build it gets."""
    build = cpu_guard.for_host(build, host)
    models = render_models(settings, host, specs_dir, build)
    kv = server_kv(settings, models)
    server_env.to_env(build.era, kv)  # a pair the build's era cannot be given stops here, not at the host
    _check_types(build, kv, models)
    gate = quality_gate(settings, models, accept_unmeasured)
    return Intent(host, build, tuple(models), kv, settings.kv, tuple(gate))


def _check_types(m: Manifest, kv: KVPair, models: list[modelfile.Rendered]) -> None:
    """Every cache type the host will run is one the build's fork has (its recorded table, where it has one)."""
    if not m.cache_types:
        return
    wanted = [(f"turbo.kv ({kv.label})", (kv.k, kv.v))] + [(f"{r.spec.name} ({label(r.type_k, r.type_v)})",
                                                            (r.type_k, r.type_v)) for r in models]
    for who, pair in wanted:
        missing = [t for t in pair if t not in m.cache_types]
        if missing:
            raise DeployError(f"{m.version} cannot run {who}: its fork has no {missing[0]} cache type (it has "
                              f"{', '.join(m.cache_types)})",
                              hint="choose a type the build has (turbo.kv.type_k/type_v or the spec's kv:), or "
                                   "build from a fork that has it")


@dataclass(frozen=True)
class Step:
    key: str   # what apply calls it
    text: str  # what the plan says and apply prints


ON_FAILURE = "on failure: switch back, restart the previous release"

# the steps apply runs, in its order, and what a lost connection's message calls each
STEPS = {"port": "the port check", "upload": "the upload", "probe": "the pre-switch probe",
         "adopt": "the take-over of the stock Ollama", "switch": "the switch",
         "restart": "the restart and health check", "models": "the model creation", "smoke": "the smoke",
         "prune": "the pruning of old releases"}


@dataclass(frozen=True)
class DeployPlan:
    """Everything one deploy will do to one host, worked out before the first change."""

    intent: Intent
    layout: Layout
    config_path: str
    config: str                  # the service config to install
    config_diff: str             # against the host's
    old_config: str              # the host's service config now ("" if none): what a rollback restores
    current: str | None          # the release the host runs now
    previous: str | None         # the release a rollback goes to (the current one, unless it is redeployed)
    old_previous: str | None     # the host's previous release now: restored after a rollback
    send: tuple[str, ...]        # files to upload (differ on the host)
    reused: tuple[str, ...]      # files already there
    steps: tuple[Step, ...]
    adoption: Adoption | None = None  # the stock Ollama served in place of (taken over now, or before)

    @property
    def adopts(self) -> bool:
        """This deploy stops and disables a stock Ollama (its "adopt" step)."""
        return self.adoption is not None and (self.adoption.new or self.adoption.stop)

    @property
    def version(self) -> str:
        return self.intent.build.version

    @property
    def release(self) -> str:
        return f"{self.layout.releases}/{self.version}"

    def step(self, key: str) -> str:
        return next(s.text for s in self.steps if s.key == key)

    def render(self) -> str:
        host = self.intent.host.name
        return "\n".join([
            f"plan for {host}: {self.version} (current: {self.current or 'none'})",
            f"files to send ({len(self.send)}): " + (", ".join(self.send) or "none"),
            f"already on the host: {', '.join(self.reused) or 'none'}",
            *([f"adopts stock Ollama: {self.adoption.stock.describe()}"] if self.adoption else []),
            *[f"model {m}: KV {kv}" for m, kv in self.intent.model_kv.items()],
            self.config_diff or "service config unchanged",
            *[f"  {i}. {s.text}" for i, s in enumerate(self.steps, 1)],
            f"  {ON_FAILURE}",
            "dry run: nothing was changed"])


def survey(intent: Intent, t: Transport, layout: Layout, mgr: ServiceManager,
           adoption: Adoption | None = None) -> DeployPlan:
    """The plan for this host as it is now: the files it lacks, its service config against the new one (with the
    environment of the stock Ollama it serves in place of, where it adopts one)."""
    host, m = intent.host, intent.build
    keep = adoption.carried(intent.cache) if adoption else {}
    config = render(host, layout, service_env(intent.cache, host, layout, m.era, intent.server_kv, keep))
    old_config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
    diff = "".join(difflib.unified_diff(old_config.splitlines(True), config.splitlines(True),
                                        mgr.config_path + " (on host)", mgr.config_path + " (new)"))
    release = f"{layout.releases}/{m.version}"
    have = remote_sums(t, release) if t.sh(f"test -d {q(release)}", check=False).ok else {}
    partial = remote_sums(t, release + ".partial")
    send = tuple(f for f, d in m.files.items() if have.get(f) != d and partial.get(f) != d)
    reused = tuple(f for f in m.files if f not in send)
    current = current_release(t, layout)
    old_previous = previous_release(t, layout)
    previous = old_previous if current == m.version else current  # a redeploy keeps its previous
    what = "the server" if host.service == "none" else f"the {host.service} service"
    models = ", ".join(f"{name} ({kv})" for name, kv in intent.model_kv.items())
    adopt = (Step("adopt", f"take over the stock Ollama ({adoption.stock.name}): record it in {layout.adopted}, "
                           f"stop and disable it; its models ({adoption.stock.models}) and port stay")
             if adoption and (adoption.new or adoption.stop) else None)
    steps = (
        Step("port", f"check port {host.port} is free or this service's"
                     + (" (or the stock Ollama's)" if adopt else "")),
        Step("upload", f"upload {len(send)} files ({len(reused)} already there) to releases/{m.version}.partial "
                       f"under {layout.prefix}, verify sha256, rename it to releases/{m.version}"),
        Step("probe", cpu_guard.step_text(m)),
        *([adopt] if adopt else []),
        Step("switch", f"switch current -> releases/{m.version} (one rename; previous: {previous or 'none'})"),
        Step("restart", f"write {mgr.config_path}, restart {what}, wait for /api/version = {m.version}"),
        Step("models", f"create models: {models}" if models else "create models: none"),
        Step("smoke", "smoke " + (", ".join(f"{n} with {kv.label}" for n, kv in intent.smokes if n)
                                  or f"the server with {intent.server_kv.label}")),
        Step("prune", f"keep the newest {host.keep} releases (and the previous)"),
    )
    return DeployPlan(intent, layout, mgr.config_path, config, diff, old_config, current, previous, old_previous,
                      send, reused, steps, adoption)
