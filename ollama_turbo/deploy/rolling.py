"""A rolling deploy across a fleet: one canary host first, then the rest a few at a time, stopping at
the first failure so the hosts not yet reached keep their old release."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ollama_turbo.core.errors import Interrupted, TurboError, UsageError
from ollama_turbo.core.settings import Settings
from ollama_turbo.deploy import releases
from ollama_turbo.deploy.deploy_plan import Intent, decide
from ollama_turbo.deploy.dists import load_dist

Say = Callable[[str], None]


def hosts_for(settings: Settings, hosts: str, group: str) -> list[str]:
    """``--hosts a,b,c`` or ``--group NAME`` (turbo.groups), in the order given."""
    if bool(hosts) == bool(group):
        raise UsageError("give --hosts a,b,c or --group NAME")
    if group:
        if group not in settings.groups:
            known = ", ".join(sorted(settings.groups)) or "none"
            raise UsageError(f"unknown group {group!r} (turbo.groups: {known})", hint="add it under turbo.groups")
        names = settings.groups[group]
    else:
        names = [h.strip() for h in hosts.split(",") if h.strip()]
    for name in names:
        settings.host(name)  # an unknown host is a settings error, before anything starts
    if len(set(names)) != len(names):
        raise UsageError(f"a host appears twice in {', '.join(names)}")
    return names


def waves(names: list[str], batch: int) -> list[list[str]]:
    """The canary alone, then the others ``batch`` at a time."""
    if batch < 1:
        raise UsageError(f"--batch {batch} must be at least 1")
    rest = names[1:]
    return [names[:1], *[rest[i:i + batch] for i in range(0, len(rest), batch)]]


@dataclass
class HostOutcome:
    host: str
    wave: int
    result: str  # deployed | failed | not reached | planned | refused (its deploy could not be decided)
    version: str = ""
    previous: str | None = None
    seconds: float = 0.0
    error: str = ""


@dataclass
class Rollout:
    outcomes: list[HostOutcome] = field(default_factory=list)
    stopped_at: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.stopped_at is None

    def render(self) -> str:
        hw = max([len("host"), *(len(o.host) for o in self.outcomes)]) + 2
        vw = max([len("version"), *(len(o.version) for o in self.outcomes),
                  *(len(o.previous or "") for o in self.outcomes)]) + 2
        lines = [f"{'host':<{hw}}{'wave':>4}  {'result':<13}{'version':<{vw}}{'previous':<{vw}}{'s':>6}"]
        for o in self.outcomes:
            lines.append(f"{o.host:<{hw}}{o.wave:>4}  {o.result:<13}{o.version:<{vw}}{o.previous or '-':<{vw}}"
                         f"{o.seconds:>6.1f}")
        refused = any(o.result == "refused" for o in self.outcomes)
        lines.append(f"stopped at {self.stopped_at} before any host was touched: its deploy could not be decided"
                     if refused else f"stopped at {self.stopped_at}: the hosts not reached keep their release"
                     if self.stopped_at else
                     f"all {len(self.outcomes)} hosts planned (dry run): nothing was changed"
                     if self.outcomes and all(o.result == "planned" for o in self.outcomes) else
                     f"all {len(self.outcomes)} hosts deployed in {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "stopped_at": self.stopped_at, "seconds": self.seconds,
                "hosts": [asdict(o) for o in self.outcomes]}


def rollout(settings: Settings, names: list[str], dist: Path, *, batch: int = 2, dry_run: bool = False,
            say: Say = print, specs_dir: Path | None = None, accept_unmeasured: bool = False) -> Rollout:
    """Every host's deploy decided first (its models, caches and quality verdicts: a bad spec or a failed gate
    for the last host stops the rollout before the canary is touched), then the waves, in order."""
    t0 = time.perf_counter()
    plan = waves(names, batch)
    build = load_dist(dist)  # read and checked once for every host
    r = Rollout()
    for i, wave in enumerate(plan):
        for name in wave:
            r.outcomes.append(HostOutcome(name, i, "planned" if dry_run else "not reached"))
    by = {o.host: o for o in r.outcomes}
    intents: dict[str, Intent] = {}
    for name in names:  # every host decided before the canary is touched
        try:
            intents[name] = decide(settings, settings.host(name), build, specs_dir=specs_dir,
                                   accept_unmeasured=accept_unmeasured)
        except TurboError as exc:
            by[name].result, by[name].error = "refused", str(exc).splitlines()[0]
            r.stopped_at = name
            r.seconds = time.perf_counter() - t0
            return r
    if dry_run:
        say("rolling deploy order: " + " | ".join(
            f"wave {i}{' (canary)' if i == 0 else ''}: {', '.join(w)}" for i, w in enumerate(plan)))
        for name, intent in intents.items():
            models = ", ".join(f"{m} ({kv})" for m, kv in intent.model_kv.items()) or "none"
            say(f"  {name}: server K/V {intent.server_kv.label}; models: {models}")
        return r
    for i, wave in enumerate(plan):
        say(f"wave {i}{' (canary)' if i == 0 else ''}: {', '.join(wave)}")
        for name in wave:
            o = by[name]
            h0 = time.perf_counter()
            try:
                res = releases.carry_out(intents[name], say=say)
                o.result, o.version, o.previous = "deployed", res.version, res.previous
            except TurboError as exc:
                o.result, o.error = "failed", str(exc).splitlines()[0]
                r.stopped_at = name
            except KeyboardInterrupt as exc:  # Ctrl-C: this host's state, the ones done, the ones not reached
                left = exc.left if isinstance(exc, Interrupted) else f"nothing on {name} was changed"
                done = [d.host for d in r.outcomes if d.result == "deployed"]
                raise Interrupted(f"rolling deploy stopped at {name}: {left}"
                                  + (f"; deployed and verified before it: {', '.join(done)}" if done else "")
                                  + "; the hosts not reached keep their release", hosts=[name]) from None
            o.seconds = time.perf_counter() - h0
            if r.stopped_at:
                break
        if r.stopped_at:
            break
    r.seconds = time.perf_counter() - t0
    return r
