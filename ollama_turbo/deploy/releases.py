"""``invoke deploy``: the orchestration. Install a build as a service on a host, switch atomically, prove it,
roll back on failure: either the new build ends up running and verified, or the old one runs as before.

A deploy is a plan applied: ``deploy_plan`` decides everything (``--dry-run`` prints it), :func:`apply` runs its
steps in order. The rooms it walks through: ``dists`` (the build here and whether it runs there), ``lock`` (one
deploy at a time), ``store`` (the releases on the host and the switch), ``services`` (launchd, systemd, none),
``rollback`` (going back, recovering a lost connection).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core import cpu_variants
from ollama_turbo.core.errors import Interrupted, TurboError
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy import adopt, cpu_guard
from ollama_turbo.deploy.deploy_plan import ON_FAILURE, STEPS, DeployPlan, Intent, decide, survey
from ollama_turbo.deploy.dists import check_platform, load_dist
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.hostview import wait_version
from ollama_turbo.deploy.lock import host_lock, lock_owner
from ollama_turbo.deploy.models import create_models
from ollama_turbo.deploy.record import NAME as RECORD
from ollama_turbo.deploy.rollback import Attempt, interrupted, put_back, recover, rollback_to
from ollama_turbo.deploy.services import ServiceManager, service_env
from ollama_turbo.deploy.session import HostSession, open_host
from ollama_turbo.deploy.store import (
    history,
    log_tail,
    port_holder,
    prune,
    remote_sums,
    set_previous,
    switch,
)
from ollama_turbo.deploy.transport import Transport, TransportError, q, url_host
from ollama_turbo.prove import smoke
from ollama_turbo.prove.smoke import SmokeResult

Say = Callable[[str], None]


@dataclass
class DeployResult:
    host: str
    version: str
    status: str  # deployed | rolled-back | dry-run | failed
    previous: str | None = None
    uploaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    config_diff: str = ""
    commands: list[str] = field(default_factory=list)
    smoke: dict[str, Any] | None = None
    models: list[str] = field(default_factory=list)
    model_kv: dict[str, str] = field(default_factory=dict)  # each model's K/V and whether it is its own or the host's
    smokes: dict[str, dict[str, Any]] = field(default_factory=dict)  # every model's smoke, by name
    downtime_s: float | None = None  # restart to the new release answering /api/version
    error: str = ""
    seconds: float = 0.0
    quality: list[dict[str, Any]] = field(default_factory=list)  # the quality verdict of each model served
    proofs: list[SmokeResult] = field(default_factory=list, repr=False)  # the smokes run, as objects
    plan: DeployPlan | None = field(default=None, repr=False)  # what was (or, dry, would be) applied

    @classmethod
    def of(cls, plan: DeployPlan, status: str) -> DeployResult:
        i = plan.intent
        return cls(i.host.name, plan.version, status, previous=plan.previous, uploaded=list(plan.send),
                   reused=list(plan.reused), config_diff=plan.config_diff,
                   commands=[*(s.text for s in plan.steps), ON_FAILURE],
                   model_kv=i.model_kv, quality=list(i.quality), plan=plan)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("proofs", "plan")}

    def render(self, host: str) -> str:
        if self.status == "dry-run" and self.plan is not None:
            return self.plan.render()
        models = ", ".join(f"{m} ({self.model_kv[m]})" if m in self.model_kv else m for m in self.models)
        down = f", downtime {self.downtime_s:.2f} s" if self.downtime_s is not None else ""
        return (f"deployed {self.version} to {host} in {self.seconds:.1f} s{down} (previous: "
                f"{self.previous or 'none'}); models: {models or 'none'}; smoke ok")


def deploy(settings: Settings, host: Host, dist: Path, *, dry_run: bool = False, say: Say = print,
           specs_dir: Path | None = None, accept_unmeasured: bool = False, adopt_loaded: bool = False) -> DeployResult:
    """Plan, then apply: everything that needs no host is decided first (bad specs, a failed quality gate, a
    damaged build stop here); the host's state is read under its lock into the plan; :func:`apply` runs it."""
    t0 = time.perf_counter()
    intent = decide(settings, host, load_dist(dist), specs_dir=specs_dir, accept_unmeasured=accept_unmeasured)
    return carry_out(intent, dry_run=dry_run, say=say, t0=t0, adopt_loaded=adopt_loaded)


def carry_out(intent: Intent, *, dry_run: bool = False, say: Say = print, t0: float | None = None,
              adopt_loaded: bool = False) -> DeployResult:
    """A decided deploy to its host: surveyed into a plan (printed for ``dry_run``), else applied under the
    host's lock. A stock Ollama on the host is taken over (:mod:`.adopt`); one with models loaded only with
    ``adopt_loaded``."""
    t0 = time.perf_counter() if t0 is None else t0
    host, version = intent.host, intent.build.version
    if host.listens_everywhere:
        say(f"WARNING: {host.name} listens on {host.listen}, every interface: Ollama's API has no authentication, so "
            "anyone who reaches this address can create, delete and pull models (listen on 127.0.0.1 or a private "
            "address, or put a proxy with authentication in front)")
    attempt: Attempt | None = None
    try:
        with open_host(host) as s:
            t, layout, mgr = s.t, s.layout, s.mgr
            check_platform(intent.build, host, t)
            if dry_run:
                res = DeployResult.of(survey(intent, t, layout, mgr, adopt.survey(s, adopt_loaded=adopt_loaded)),
                                      "dry-run")
                res.seconds = time.perf_counter() - t0
                return res
            run = Run(s, say, t0, Attempt(lock_owner()))
            attempt = run.attempt
            try:
                with host_lock(t, layout, say, run.attempt.owner, recovers=True):  # taken before any state is read
                    try:
                        adoption = adopt.survey(s, adopt_loaded=adopt_loaded)
                        return apply(survey(intent, t, layout, mgr, adoption), run)
                    except KeyboardInterrupt:  # Ctrl-C: back on a verified release, still under the lock
                        raise Interrupted(put_back(s, version, run.attempt, say), hosts=[host.name]) from None
            except TransportError as exc:
                recover(host, version, run.attempt, exc, say)
                raise  # recover raises; this is for the type checker
    except KeyboardInterrupt as exc:  # before the lock, or a second Ctrl-C during the switch back
        if isinstance(exc, Interrupted):
            raise
        raise interrupted(host, version, attempt) from None


@dataclass
class Run:
    """How a plan is applied: the connection, the host's service manager, where to report, when it started,
    and what was done so far (for a rollback or a recovery)."""

    s: HostSession
    say: Say
    t0: float
    attempt: Attempt
    done: list[str] = field(default_factory=list)

    @property
    def t(self) -> Transport:
        return self.s.t

    @property
    def mgr(self) -> ServiceManager:
        return self.s.mgr

    def step(self, plan: DeployPlan, key: str) -> None:
        """Announce the plan's next step; a step out of the plan's order is refused (a bug), as a deploy error."""
        expected = plan.steps[len(self.done)].key if len(self.done) < len(plan.steps) else "nothing"
        if key != expected:
            raise DeployError(f"the deploy would run {key!r} where its plan has {expected!r}: not applied",
                              hint="report this as a bug of ollama-turbo")
        self.done.append(key)
        self.attempt.step = STEPS[key]
        self.say(f"[{plan.intent.host.name}] {len(self.done)}/{len(plan.steps)} {plan.step(key)}")


def apply(plan: DeployPlan, run: Run) -> DeployResult:
    """Run the plan, step by step in its order; on a failure after the switch, switch back and restart the
    previous release."""
    intent, layout, t, mgr, attempt = plan.intent, plan.layout, run.t, run.mgr, run.attempt
    host, version = intent.host, plan.version
    if tuple(s.key for s in plan.steps) != tuple(k for k in STEPS if k != "adopt" or plan.adopts):  # before changes
        raise DeployError(f"the plan's steps ({', '.join(s.key for s in plan.steps)}) are not the ones apply runs",
                          hint="report this as a bug of ollama-turbo")
    res = DeployResult.of(plan, "failed")
    run.step(plan, "port")
    holder = port_holder(t, host.port, host.probe_host)
    if holder:
        current = plan.current or ""
        served = t.sh(q("curl", "-s", "-m", "2", f"http://{url_host(host.probe_host)}:{host.port}/api/version"),
                      check=False).stdout
        ours = bool(current) and f'"{current}"' in served and "running" in mgr.state()
        stock = plan.adopts and plan.adoption is not None and plan.adoption.stock.active
        if not ours and not stock:
            raise DeployError(
                f"port {host.port} on {host.name} is already in use, by something that is not this service:\n"
                f"  {holder}",
                hint="quit Ollama.app (menu bar > Quit Ollama), or 'brew services stop ollama', or "
                     "'systemctl stop ollama' / 'launchctl bootout gui/$(id -u)/com.ollama.ollama', or give "
                     f"turbo.hosts.{host.name}.listen another port")
    run.step(plan, "upload")
    _upload(t, plan, run.say)
    previous = plan.previous  # on a redeploy of the current release, its previous stays the previous
    old_config, old_previous = plan.old_config, plan.old_previous
    attempt.previous, attempt.old_previous, attempt.old_config = previous, old_previous, old_config
    run.step(plan, "probe")
    cpu_guard.probe(t, host, plan.release, f"{layout.prefix}/logs/probe-{version}.log",
                    service_env(intent.cache, host, layout, intent.build.era, intent.server_kv),
                    [r.spec.name for r in intent.models], run.say)
    if plan.adopts and plan.adoption is not None:
        run.step(plan, "adopt")
        attempt.adopted = True  # from here on, a failure with no release of ours gives the stock Ollama back
        try:
            adopt.take_over(run.s, plan.adoption, run.say)
        except TransportError:
            raise
        except TurboError:
            adopt.settle(run.s, run.say)
            raise
    run.step(plan, "switch")
    attempt.switched = True  # from here on, recovery checks where current points
    switch(t, layout, version, host)
    if previous and previous != version:
        set_previous(t, layout, previous)
    try:
        run.step(plan, "restart")
        mgr.install(plan.config)
        t_restart = time.perf_counter()
        mgr.restart()
        with t.forward(host.port, host.probe_host) as url:
            ok, why = wait_version(url, version, host.health_timeout)
            if not ok:
                raise DeployError(f"{version} did not come up: {why}")
            # at most this long without an answering server: from the restart to the new release's /api/version
            res.downtime_s = round(time.perf_counter() - t_restart, 2)
            run.step(plan, "models")
            res.models = create_models(host, url, list(intent.models), run.say)
            run.step(plan, "smoke")
            _smoke(plan, url, lambda: t.read(layout.log), res)
    except TransportError:
        raise  # the connection is gone: deploy() reconnects and recovers
    except (TurboError, requests.RequestException) as exc:
        tail = log_tail(t, layout)
        if cpu_variants.is_sigill(f"{exc}\n{tail}"):  # name it: the variant the server loaded, the way out
            exc = DeployError(f"{exc}; " + cpu_variants.explain_sigill(tail, where=f"{version}'s server",
                                                                        host=host.name))
        res.error = f"{exc}\n--- service log (last lines) ---\n{tail}"
        run.say(f"[{host.name}] FAILED: {exc}; rolling back")
        rollback_to(t, host, layout, mgr, previous, old_config, run.say)
        if old_previous:
            set_previous(t, layout, old_previous)
        given = None if previous else adopt.settle(run.s, run.say)
        res.status = "rolled-back" if previous else "failed"
        history(t, layout, version, res.status)
        res.seconds = time.perf_counter() - run.t0
        raise DeployError(f"deploy of {version} to {host.name} failed and was rolled back"
                          + (f" to {previous}" if previous else f" (no previous release: {given or 'service stopped'})")
                          + f": {exc}\n--- service log (last lines) ---\n{tail}",
                          hint=f"fix the build and deploy again; invoke status --host {host.name}") from None
    run.step(plan, "prune")
    prune(t, layout, host.keep, keep={version, previous or ""})
    history(t, layout, version, "deployed")
    res.status = "deployed"
    res.seconds = time.perf_counter() - run.t0
    return res


def _smoke(plan: DeployPlan, url: str, log: Callable[[], str], res: DeployResult) -> None:
    """Every model proven with the cache it runs (its own kv_cache_type, or the host's default); with no
    models, the server: reachable and the version."""
    intent = plan.intent
    for name, kv in intent.smokes:
        r = smoke.smoke_ollama(url, model=name or None, log=log,
                               expect=smoke.Expect(version=plan.version, type_k=kv.k, type_v=kv.v,
                                                   era=intent.build.era, fork=intent.cache.fork))
        if not name:
            r.checks = [c for c in r.checks if c.name in ("reachable", "version")]
        res.smoke = res.smoke or r.to_json()
        res.proofs.append(r)
        if name:
            res.smokes[name] = r.to_json()
        if not r.ok:
            raise DeployError(f"smoke failed on {intent.host.name}" + (f" for {name}" if name else "")
                              + f": {', '.join(r.failed)}: "
                              + "; ".join(c.evidence for c in r.checks if c.ok is False)[:600])


def _upload(t: Transport, plan: DeployPlan, say: Say) -> None:
    """The plan's files to ``<release>.partial``, checked against the manifest, renamed into place in one step."""
    layout, m, version, release = plan.layout, plan.intent.build, plan.version, plan.release
    dist = m.dist
    if t.sh(f"test -d {q(release)}", check=False).ok:
        if not plan.send:  # already there, intact: only the verdicts and the record it is deployed with are new
            if host_cut(m):  # variants this host cannot run, from a deploy that kept them: out, and said so
                t.sh(f"cd {q(release)} && rm -f " + " ".join(q(f) for f in m.data["cpu_variants"]["host"]["files"]))
                t.write(f"{release}/manifest.json", json.dumps(m.data, indent=2) + "\n")
            _write_records(t, plan, release)
            return
        if version in (plan.current, plan.old_previous):
            raise DeployError(f"release {version} on the host is a different build than {dist} "
                              f"({', '.join(plan.send[:3])} differ), and it is the host's current or "
                              "previous release, so it is not replaced in place",
                              hint="a build's version names its identity: rebuild (build-ollama stamps the "
                                   "source commits, backend and platform into the version), or roll back "
                                   "first")
        # an older build of the same name, not in use: it becomes the partial upload in one rename, so its files
        # that are still right stay (they were counted as already there) and the rest are sent over them
        t.sh(f"rm -rf {q(release + '.partial')} && mv {q(release)} {q(release + '.partial')}")
    partial = release + ".partial"
    t.sh(f"mkdir -p {q(partial)} {q(layout.prefix + '/logs')}")
    current = remote_sums(t, layout.current + "/")
    for i, rel in enumerate(plan.send, 1):
        target = f"{partial}/{rel}"
        t.sh(f"mkdir -p \"$(dirname {q(target)})\"")
        same = next((f for f, d in current.items() if d == m.files[rel]), None)
        t_file = time.perf_counter()
        if same:
            t.sh(f"cp -p {q(layout.current + '/' + same)} {q(target)}")
            say(f"  [{i}/{len(plan.send)}] {rel}: same as current/{same}, copied on the host")
        else:
            size = (dist / rel).stat().st_size
            t.put(dist / rel, target)
            secs = time.perf_counter() - t_file
            say(f"  [{i}/{len(plan.send)}] {rel}: {size / 1e6:.1f} MB sent in {secs:.1f} s")
        if (dist / rel).stat().st_mode & 0o111:
            t.sh(f"chmod 755 {q(target)}")
    if host_cut(m):  # this host's release leaves CPU variants out: its manifest says so, and lists what it has
        t.write(f"{partial}/manifest.json", json.dumps(m.data, indent=2) + "\n")
    else:
        t.put(m.path, f"{partial}/manifest.json")
    got = remote_sums(t, partial)
    extra = [f for f in got if f not in m.files and f not in ("manifest.json", "quality.json", RECORD)]
    if extra:  # left by an older build of the same name
        t.sh("cd " + q(partial) + " && rm -f " + " ".join(q(f) for f in extra))
    bad = [f for f, d in m.files.items() if got.get(f) != d]
    if bad:
        raise DeployError(f"uploaded files do not match the manifest: {', '.join(bad)}",
                          hint="run the deploy again; files that arrived intact are not sent twice")
    _write_records(t, plan, partial)
    t.sh(f"mv {q(partial)} {q(release)}")


def host_cut(m: Manifest) -> bool:
    return bool(((m.data.get("cpu_variants") or {}).get("host") or {}).get("excluded"))


def _write_records(t: Transport, plan: DeployPlan, release: str) -> None:
    """Beside the build's files: the quality verdicts the release is deployed with (and the reports' checksums),
    and the deploy record (the K/V of the server and of each model, its environment, the fork's knobs)."""
    quality = list(plan.intent.quality)
    if quality:
        t.write(f"{release}/quality.json", json.dumps(quality, indent=2) + "\n")
    t.write(f"{release}/{RECORD}", json.dumps(plan.intent.record.to_json(), indent=2) + "\n")
