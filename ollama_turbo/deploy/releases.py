"""``invoke deploy`` and ``invoke rollback``: the orchestration. Install a build as a service on a host,
switch atomically, prove it, roll back on failure: either the new build ends up running and verified, or
the old one runs as before.

The rooms it walks through: ``dists`` (the build here and whether it runs there), ``lock`` (one deploy at a
time), ``store`` (the releases on the host and the switch), ``services`` (launchd, systemd, none),
``hostview`` (what a host runs, for status and smoke), ``bench_host`` (bench --host).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.dists import check_platform, load_dist
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.hostview import wait_version
from ollama_turbo.deploy.lock import host_lock, lock_owner
from ollama_turbo.deploy.models import create_models, quality_gate, render_models, server_kv
from ollama_turbo.deploy.rollback import Attempt, recover, rollback_to
from ollama_turbo.deploy.services import Layout, Manager, render, service_env
from ollama_turbo.deploy.store import (
    current_release,
    history,
    layout_of,
    log_tail,
    port_holder,
    previous_release,
    prune,
    remote_sums,
    set_previous,
    switch,
)
from ollama_turbo.deploy.transport import Transport, TransportError, connect, q, url_host
from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.fork.cache_types import label
from ollama_turbo.kv import modelfiles as modelfile
from ollama_turbo.prove import smoke
from ollama_turbo.prove.smoke import SmokeResult

Say = Callable[[str], None]


# --- small remote helpers ----------------------------------------------------------------




# --- deploy -------------------------------------------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "proofs"}

    def render(self, host: str) -> str:
        if self.status != "dry-run":
            models = ", ".join(f"{m} ({self.model_kv[m]})" if m in self.model_kv else m for m in self.models)
            down = f", downtime {self.downtime_s:.2f} s" if self.downtime_s is not None else ""
            return (f"deployed {self.version} to {host} in {self.seconds:.1f} s{down} (previous: "
                    f"{self.previous or 'none'}); models: {models or 'none'}; smoke ok")
        lines = [f"plan for {host}: {self.version} (current: {self.previous or 'none'})",
                 f"files to send ({len(self.uploaded)}): " + (", ".join(self.uploaded) or "none"),
                 f"already on the host: {', '.join(self.reused) or 'none'}",
                 *[f"model {m}: KV {kv}" for m, kv in self.model_kv.items()],
                 self.config_diff or "service config unchanged",
                 *[f"  {cmd}" for cmd in self.commands],
                 "dry run: nothing was changed"]
        return "\n".join(lines)


def deploy(settings: Settings, host: Host, dist: Path, *, dry_run: bool = False, say: Say = print,
           specs_dir: Path | None = None, accept_unmeasured: bool = False) -> DeployResult:
    t0 = time.perf_counter()
    m = load_dist(dist)
    version, era = m["version"], m["era"]
    rendered = render_models(settings, host, specs_dir, m, dist)
    kv = server_kv(settings, rendered)
    gate = quality_gate(settings, rendered, accept_unmeasured)
    model_kv = {r.spec.name: label(r.type_k, r.type_v) + (" own" if r.per_model else " host default")
                for r in rendered}
    if host.listens_everywhere:
        say(f"WARNING: {host.name} listens on {host.listen}, every interface: Ollama's API has no authentication, so "
            "anyone who reaches this address can create, delete and pull models (listen on 127.0.0.1 or a private "
            "address, or put a proxy with authentication in front)")
    t = connect(host.name, host.ssh)
    try:
        check_platform(m, host, t, dist)
        layout = layout_of(t, host)
        mgr = Manager(t, host, layout)
        config = render(host, layout, service_env(settings, host, layout, era, kv=kv))

        def plan() -> DeployResult:
            """What the host has and what the deploy will do; read under the lock for a real deploy."""
            old_config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
            diff = "".join(difflib.unified_diff(old_config.splitlines(True), config.splitlines(True),
                                                mgr.config_path + " (on host)", mgr.config_path + " (new)"))
            release = f"{layout.releases}/{version}"
            have = remote_sums(t, release) if t.sh(f"test -d {q(release)}", check=False).ok else {}
            partial = remote_sums(t, release + ".partial")
            want = dict(m["files"])
            send = [f for f, d in want.items() if have.get(f) != d and partial.get(f) != d]
            res = DeployResult(host.name, version, "dry-run", previous=current_release(t, layout), uploaded=send,
                               reused=[f for f in want if f not in send], config_diff=diff, quality=gate,
                               model_kv=model_kv)
            res.commands = [f"upload {len(send)} files to {release}.partial, verify sha256, rename to {release}",
                            f"switch {layout.current} -> releases/{version} (one rename)",
                            f"write {mgr.config_path}", f"restart the {host.service} service",
                            f"wait for /api/version = {version}, create models, smoke",
                            "on failure: switch back, restart the previous release"]
            return res

        if dry_run:
            res = plan()
            res.seconds = time.perf_counter() - t0
            return res
        run = Run(host, t, layout, mgr, m, dist, config, rendered, kv, ForkBehaviour.from_env(settings.kv.env),
                  say, t0, Attempt(lock_owner()))
        try:
            with host_lock(t, layout, say, run.attempt.owner, recovers=True):  # taken before any state is read
                return _deploy_locked(run, plan())
        except TransportError as exc:
            recover(host, version, run.attempt, exc, say)
            raise  # recover raises; this is for the type checker
    finally:
        with contextlib.suppress(Exception):
            t.close()


@dataclass
class Run:
    """One deploy to one host, decided before the host's lock is taken: where (the connection, the host's
    layout and service manager), what (the build's manifest and files, the service config, the rendered
    models, the server's K/V and what the fork makes of it), how to report, and what was done so far."""

    host: Host
    t: Transport
    layout: Layout
    mgr: Manager
    m: dict[str, Any]                 # the build's manifest
    dist: Path
    config: str                       # the service config to install
    rendered: list[modelfile.Rendered]
    kv: tuple[str, str]               # the server's K/V (the host's default)
    fork: ForkBehaviour               # what the fork does to K/V, from the settings: built once
    say: Say
    t0: float
    attempt: Attempt


def _deploy_locked(run: Run, res: DeployResult) -> DeployResult:
    host, t, layout, mgr, m, say, attempt = run.host, run.t, run.layout, run.mgr, run.m, run.say, run.attempt
    version = m["version"]
    release = f"{layout.releases}/{version}"
    attempt.step = "the port check"
    holder = port_holder(t, host.port, host.probe_host)
    if holder:
        current = res.previous or ""
        served = t.sh(q("curl", "-s", "-m", "2", f"http://{url_host(host.probe_host)}:{host.port}/api/version"),
                      check=False).stdout
        ours = bool(current) and f'"{current}"' in served and "running" in mgr.state()
        if not ours:
            raise DeployError(
                f"port {host.port} on {host.name} is already in use, by something that is not this service:\n"
                f"  {holder}",
                hint="quit Ollama.app (menu bar > Quit Ollama), or 'brew services stop ollama', or "
                     "'systemctl stop ollama' / 'launchctl bootout gui/$(id -u)/com.ollama.ollama', or give "
                     f"turbo.hosts.{host.name}.listen another port")
    say(f"[{host.name}] upload {len(res.uploaded)} files ({len(res.reused)} already there) -> {release}")
    attempt.step = "the upload"
    _upload(t, layout, run.dist, m, res, say)
    previous = res.previous
    if previous == version:  # a redeploy of the current release: its previous stays the previous
        previous = res.previous = previous_release(t, layout)
    old_config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
    old_previous = previous_release(t, layout)
    attempt.previous, attempt.old_previous, attempt.old_config = previous, old_previous, old_config
    attempt.step = "the switch"
    say(f"[{host.name}] switch current -> {version}" + (f" (previous: {previous})" if previous else ""))
    attempt.switched = True  # from here on, recovery checks where current points
    switch(t, layout, version, host)
    if previous and previous != version:
        set_previous(t, layout, previous)
    attempt.step = "the restart and health check"
    what = "the server" if host.service == "none" else f"the {host.service} service"
    say(f"[{host.name}] restart {what}, wait for /api/version = {version}")
    try:
        mgr.install(run.config)
        t_restart = time.perf_counter()
        mgr.restart()
        with t.forward(host.port, host.probe_host) as url:
            ok, why = wait_version(url, version, host.health_timeout)
            if not ok:
                raise DeployError(f"{version} did not come up: {why}")
            # at most this long without an answering server: from the restart to the new release's /api/version
            res.downtime_s = round(time.perf_counter() - t_restart, 2)
            res.models = create_models(host, url, run.rendered, say)
            # every model is proven with the cache it runs: its own kv_cache_type, or the host's default
            for name, (type_k, type_v) in ([(r.spec.name, (r.type_k, r.type_v)) for r in run.rendered]
                                           or [("", run.kv)]):
                r = smoke.smoke_ollama(url, model=name or None, log=lambda: t.read(layout.log),
                                       expect=smoke.Expect(version=version, type_k=type_k, type_v=type_v,
                                                           era=m["era"], fork=run.fork))
                if not name:
                    r.checks = [c for c in r.checks if c.name in ("reachable", "version")]
                res.smoke = res.smoke or r.to_json()
                res.proofs.append(r)
                if name:
                    res.smokes[name] = r.to_json()
                if not r.ok:
                    raise DeployError(f"smoke failed on {host.name}" + (f" for {name}" if name else "")
                                      + f": {', '.join(r.failed)}: "
                                      + "; ".join(c.evidence for c in r.checks if c.ok is False)[:600])
    except TransportError:
        raise  # the connection is gone: deploy() reconnects and recovers
    except (TurboError, requests.RequestException) as exc:
        tail = log_tail(t, layout)
        res.error = f"{exc}\n--- service log (last lines) ---\n{tail}"
        say(f"[{host.name}] FAILED: {exc}; rolling back")
        rollback_to(t, host, layout, mgr, previous, old_config, say)
        if old_previous:
            set_previous(t, layout, old_previous)
        res.status = "rolled-back" if previous else "failed"
        history(t, layout, version, res.status)
        res.seconds = time.perf_counter() - run.t0
        raise DeployError(f"deploy of {version} to {host.name} failed and was rolled back"
                          + (f" to {previous}" if previous else " (no previous release: service stopped)")
                          + f": {exc}\n--- service log (last lines) ---\n{tail}",
                          hint=f"fix the build and deploy again; invoke status --host {host.name}") from None
    prune(t, layout, host.keep, keep={version, previous or ""})
    history(t, layout, version, "deployed")
    res.status = "deployed"
    res.seconds = time.perf_counter() - run.t0
    return res


def _upload(t: Transport, layout: Layout, dist: Path, m: dict[str, Any], res: DeployResult, say: Say) -> None:
    version = m["version"]
    release = f"{layout.releases}/{version}"
    if t.sh(f"test -d {q(release)}", check=False).ok:
        if not res.uploaded:  # already there, intact: only the verdicts it is deployed with are new
            if res.quality:
                t.write(f"{release}/quality.json", json.dumps(res.quality, indent=2) + "\n")
            return
        if version in (current_release(t, layout), previous_release(t, layout)):
            raise DeployError(f"release {version} on the host is a different build than {dist} "
                              f"({', '.join(res.uploaded[:3])} differ), and it is the host's current or "
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
    for i, rel in enumerate(res.uploaded, 1):
        target = f"{partial}/{rel}"
        t.sh(f"mkdir -p \"$(dirname {q(target)})\"")
        same = next((f for f, d in current.items() if d == m["files"][rel]), None)
        t_file = time.perf_counter()
        if same:
            t.sh(f"cp -p {q(layout.current + '/' + same)} {q(target)}")
            say(f"  [{i}/{len(res.uploaded)}] {rel}: same as current/{same}, copied on the host")
        else:
            size = (dist / rel).stat().st_size
            t.put(dist / rel, target)
            secs = time.perf_counter() - t_file
            say(f"  [{i}/{len(res.uploaded)}] {rel}: {size / 1e6:.1f} MB sent in {secs:.1f} s")
        if (dist / rel).stat().st_mode & 0o111:
            t.sh(f"chmod 755 {q(target)}")
    t.put(dist / "manifest.json", f"{partial}/manifest.json")
    got = remote_sums(t, partial)
    extra = [f for f in got if f not in m["files"] and f not in ("manifest.json", "quality.json")]
    if extra:  # left by an older build of the same name
        t.sh("cd " + q(partial) + " && rm -f " + " ".join(q(f) for f in extra))
    bad = [f for f, d in m["files"].items() if got.get(f) != d]
    if bad:
        raise DeployError(f"uploaded files do not match the manifest: {', '.join(bad)}",
                          hint="run the deploy again; files that arrived intact are not sent twice")
    if res.quality:  # the verdicts this release was deployed with, and the reports' checksums
        t.write(f"{partial}/quality.json", json.dumps(res.quality, indent=2) + "\n")
    t.sh(f"mv {q(partial)} {q(release)}")


# --- rollback, status, views for smoke and bench ---------------------------------------------


