"""``invoke deploy``: install a build as a service on a host, switch atomically, roll back on failure.

Host layout: ``<prefix>/releases/<version>/`` (bin/, lib/, manifest.json), ``<prefix>/current``
(a symlink switched with one rename), ``<prefix>/previous`` (the version to go back to),
``<prefix>/logs/ollama.log``, ``<prefix>/.deploy-lock``. Either the new build ends up running and
verified, or the old one runs as before.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import difflib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core import gpu, poll
from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.services import Layout, Manager, expand, render, service_env
from ollama_turbo.deploy.transport import Transport, TransportError, connect, q, url_host
from ollama_turbo.fork.behaviour import ForkBehaviour, effective
from ollama_turbo.fork.cache_types import BUILTIN, BlockTable, label
from ollama_turbo.kv import modelfiles as modelfile
from ollama_turbo.prove import loaded, quality, smoke
from ollama_turbo.prove.client import Endpoint
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.server_log import kv_lines, model_shape
from ollama_turbo.prove.smoke import SmokeResult

Say = Callable[[str], None]
STALE_LOCK_S = 15 * 60


class DeployError(TurboError):
    pass


def _layout(t: Transport, host: Host) -> Layout:
    home = t.sh('printf %s "$HOME"').stdout.strip()
    return Layout(home=home, prefix=expand(host.prefix, home), models=expand(host.models_dir, home))


def latest_dist(settings: Settings) -> Path:
    """The newest build by the time its manifest says it was built (a copied directory keeps its age)."""
    dists = [(m.get("built_at", ""), p) for p in (settings.workspace / "dist").glob("*")
             if (m := manifest_mod.read(p)) is not None]
    if not dists:
        raise UsageError(f"no build in {settings.workspace / 'dist'}", hint="run invoke build-ollama, or pass --dist")
    return max(dists, key=lambda d: (d[0], d[1].name))[1]


ARCH = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


def check_platform(m: dict[str, Any], host: Host, t: Transport, dist: Path) -> None:
    """A build runs only where it was built for: its OS, its CPU architecture, its backend."""
    built = m.get("platform") or {}
    backend = m.get("backend")
    if backend == "metal" and host.os != "darwin" or backend == "cuda" and host.os != "linux":
        raise DeployError(f"{dist.name} is a {backend} build; {host.name} is os: {host.os}",
                          hint=f"build with --backend {'cpu' if host.os == 'linux' else 'metal'} for this host")
    if built.get("os") and built["os"] != host.os:
        raise DeployError(f"{dist.name} was built on {built['os']}; {host.name} is os: {host.os}",
                          hint="build on (or for) the host's OS")
    if built.get("arch"):
        arch = t.sh("uname -m", check=False).stdout.strip()
        if arch and ARCH.get(arch, arch) != ARCH.get(built["arch"], built["arch"]):
            raise DeployError(f"{dist.name} was built for {built['arch']}; {host.name} is {arch}",
                              hint="build on a machine of the host's architecture")
    check_gpu(m, host, t, dist)


def check_gpu(m: dict[str, Any], host: Host, t: Transport, dist: Path) -> None:
    """A CUDA build runs on the GPU architecture it was built for: the host's GPUs, as nvidia-smi names them."""
    want = str((m.get("gpu") or {}).get("arch") or m.get("cuda_arch") or "")
    if m.get("backend") != "cuda" or not want:
        return
    r = t.sh(gpu.QUERY + " 2>&1", check=False)
    found = gpu.parse_query(r.stdout)
    if not found:
        said = r.stdout.strip().splitlines()[:1]
        raise DeployError(f"{dist.name} is a CUDA build for sm_{want}; {host.name} has no NVIDIA GPU that "
                          f"nvidia-smi can see ({said[0] if said else 'no answer'})",
                          hint="deploy a cpu build there, or check the host's NVIDIA driver (nvidia-smi)")
    other = [(name, arch) for name, arch in found if arch != gpu.base_arch(want)]
    if other:
        raise DeployError(f"{dist.name} is a CUDA build for sm_{want}; {host.name} has {gpu.describe(found)}",
                          hint=f"build for that GPU: invoke build-ollama --backend cuda --cuda-arch {other[0][1]}")


def load_dist(dist: Path) -> dict[str, Any]:
    if not (dist / manifest_mod.NAME).is_file():
        raise UsageError(f"{dist} has no manifest.json: not a build of invoke build-ollama",
                         hint="build one with invoke build-ollama, or pass --dist <workspace>/dist/<version>")
    m = manifest_mod.load(dist)  # a manifest that is not JSON says so, with the parser's words
    missing = [k for k in ("version", "era", "files") if not isinstance(m, dict) or k not in m]
    if missing:
        raise UsageError(f"{dist / manifest_mod.NAME}: not a build manifest (no {', '.join(missing)})",
                         hint="rebuild with invoke build-ollama")
    bad = manifest_mod.verify(dist, m)
    if bad:
        raise DeployError(f"{dist}: files differ from the manifest: {', '.join(bad[:5])}",
                          hint="rebuild with invoke build-ollama --force")
    return m


# --- small remote helpers ----------------------------------------------------------------


def remote_sums(t: Transport, directory: str) -> dict[str, str]:
    script = (f"cd {q(directory)} 2>/dev/null || exit 0; "
              "find . -type f ! -name manifest.json | sed 's|^./||' | while read -r f; do "
              "if command -v sha256sum >/dev/null; then sha256sum \"$f\"; else shasum -a 256 \"$f\"; fi; done")
    out = {}
    for line in t.sh(script, timeout=600).stdout.splitlines():
        digest, _, name = line.partition("  ")
        if name:
            out[name.strip()] = digest.strip()
    return out


def current_release(t: Transport, layout: Layout) -> str | None:
    """The release ``current`` points at (None before the first deploy)."""
    r = t.sh(f"readlink {q(layout.current)}", check=False)
    return (r.stdout.strip().rsplit("/", 1)[-1] or None) if r.ok else None


def previous_release(t: Transport, layout: Layout) -> str | None:
    """The release to go back to, as recorded at the last switch."""
    return t.sh(f"cat {q(layout.prefix + '/previous')} 2>/dev/null", check=False).stdout.strip() or None


def set_previous(t: Transport, layout: Layout, name: str) -> None:
    t.write(layout.prefix + "/previous", name + "\n")


def switch(t: Transport, layout: Layout, version: str, host: Host) -> None:
    """Point ``current`` at the release with one rename (atomic for readers)."""
    tmp = f"{layout.prefix}/current.new"
    # rename(2) over the old link: BSD mv says -h (macOS), GNU mv -T, for "do not follow the target"
    t.sh(f"rm -f {q(tmp)} && ln -s {q('releases/' + version)} {q(tmp)} && "
         f"if [ \"$(uname -s)\" = Darwin ]; then mv -h {q(tmp)} {q(layout.current)}; "
         f"else mv -T {q(tmp)} {q(layout.current)}; fi")


def lock_owner() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} at {dt.datetime.now().isoformat(timespec='seconds')}"


@contextlib.contextmanager
def host_lock(t: Transport, layout: Layout, say: Say, me: str | None = None, *,
              recovers: bool = False) -> Iterator[None]:
    """The host's deploy lock. With ``recovers`` a lost connection leaves it held: the caller's recovery
    keeps it until the host is safe again, then drops it."""
    me = me or lock_owner()
    t.sh(f"mkdir -p {q(layout.prefix)}")
    for attempt in range(2):
        r = t.sh(f"mkdir {q(layout.lock)} && printf %s {q(me)} > {q(layout.lock + '/owner')}", check=False)
        if r.ok:
            break
        owner = t.sh(f"cat {q(layout.lock + '/owner')} 2>/dev/null", check=False).stdout.strip() or "unknown"
        age = t.sh(f"echo $(( $(date +%s) - $(stat -c %Y {q(layout.lock)} 2>/dev/null || "
                   f"stat -f %m {q(layout.lock)}) ))", check=False).stdout.strip()
        if attempt == 0 and age.isdigit() and int(age) > STALE_LOCK_S:
            say(f"WARNING: breaking a stale deploy lock ({owner}, {int(age) // 60} min old)")
            # rename first: of two deployers breaking the same stale lock, only one rename succeeds
            stale = f"{layout.lock}.stale-{os.getpid()}"
            if t.sh(f"mv {q(layout.lock)} {q(stale)}", check=False).ok:
                t.sh(f"rm -rf {q(stale)}", check=False)
            continue
        raise DeployError(f"another deploy holds the lock on this host: {owner}",
                          hint=f"wait for it; if none is running, remove {layout.lock} on the host")
    keep = False
    try:
        yield
    except TransportError:
        keep = recovers
        raise
    finally:
        if not keep:
            with contextlib.suppress(TransportError):
                t.sh(f"rm -rf {q(layout.lock)}", check=False)


def port_holder(t: Transport, port: int, listen_host: str = "127.0.0.1") -> str | None:
    """What listens on ``port`` on the host (None when nothing does)."""
    probe = t.sh(f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' {q(f'http://{url_host(listen_host)}:{port}/')}",
                 check=False)
    if probe.stdout.strip() in ("", "000"):
        return None
    who = t.sh(f"(lsof -nP -iTCP:{port} -sTCP:LISTEN 2>/dev/null | tail -n +2; "
               f"ss -ltnpH 'sport = :{port}' 2>/dev/null) | head -3", check=False).stdout.strip()
    return who or f"something answering HTTP {probe.stdout.strip()} on port {port}"


def wait_version(url: str, version: str, timeout: float) -> tuple[bool, str]:
    last = ["no answer"]

    def serving() -> str | None:
        try:
            if requests.get(url + "/", timeout=2).status_code == 200:
                v = requests.get(url + "/api/version", timeout=2).json().get("version")
                if v == version:
                    return f"/api/version = {v}"
                last[0] = f"/api/version = {v}, expected {version}"
        except (requests.RequestException, ValueError) as exc:
            last[0] = f"{exc.__class__.__name__}"
        return None

    found = poll.until(serving, interval=0.05, timeout=timeout)
    if found:
        return True, found
    return False, f"not serving {version} after {timeout:.0f} s ({last[0]})"


def log_tail(t: Transport, layout: Layout, lines: int = 15) -> str:
    return t.sh(f"tail -n {lines} {q(layout.log)} 2>/dev/null", check=False).stdout


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


def quality_gate(settings: Settings, rendered: list[modelfile.Rendered],
                 accept_unmeasured: bool) -> list[dict[str, Any]]:
    """Each served model's recorded quality verdict with the K/V pair it will run (its own, or the host's); a
    failed one, or an unmeasured one without ``accept_unmeasured``, stops the deploy before the host is touched."""
    out = []
    for r in rendered:
        kv = (r.type_k, r.type_v)
        config = label(*kv)
        gguf = r.spec.gguf or (Path(r.spec.from_).expanduser() if r.spec.from_.endswith(".gguf") else None)
        found = (quality.verdict_for(settings.workspace, quality.model_sha256(settings.workspace, gguf), kv)
                 if gguf and gguf.is_file() else None)
        entry: dict[str, Any] = {"model": r.spec.name, "config": config}
        if found is None:
            if not accept_unmeasured:
                raise DeployError(f"{r.spec.name} has no quality measurement with {config} (invoke quality has not "
                                  f"compared it with the f16 cache{'' if gguf else '; its spec names no GGUF file'})",
                                  hint=f"measure it: invoke quality --model {gguf or '<the .gguf>'} --types {config} "
                                       "--manifest <dist>; or deploy anyway with --accept-unmeasured")
            entry["verdict"] = "unmeasured (accepted)"
        elif found["verdict"] == "FAIL":
            raise DeployError(f"{r.spec.name} with {config} failed the quality gate: mean KLD {found['kld']:.5f}, "
                              f"ΔPPL {found['dppl']:+.4f} at ctx {found['ctx']} (report {found['report']})",
                              hint=f"invoke recommend --model {gguf} --host <host> picks a config that passes; set it "
                                   "in the spec's kv: or turbo.kv")
        else:
            entry.update(found)
        out.append(entry)
    return out


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
        layout = _layout(t, host)
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
        attempt = Attempt(lock_owner())
        try:
            with host_lock(t, layout, say, attempt.owner, recovers=True):  # taken before any state is read
                return _deploy_locked(settings, host, t, layout, mgr, m, dist, config, plan(), say, rendered, kv, t0,
                                      attempt)
        except TransportError as exc:
            recover(host, version, attempt, exc, say)
            raise  # recover raises; this is for the type checker
    finally:
        with contextlib.suppress(Exception):
            t.close()


@dataclass
class Attempt:
    """What a deploy has done on the host so far: what recovery after a lost connection must undo."""

    owner: str                  # the lock's owner line
    previous: str | None = None
    old_previous: str | None = None
    old_config: str = ""
    switched: bool = False
    step: str = "connecting"


def recover(host: Host, version: str, attempt: Attempt, exc: TransportError, say: Say) -> None:
    """The connection was lost mid-deploy: reconnect, put the host back on a verified release, drop our lock."""
    say(f"[{host.name}] the connection was lost during {attempt.step}; reconnecting to recover")
    t2: Transport | None = None

    def reconnect() -> Transport | None:
        try:
            return connect(host.name, host.ssh)
        except TurboError:
            return None

    t2 = poll.until(reconnect, interval=1.0, timeout=max(host.health_timeout, 5))
    if t2 is None:
        raise DeployError(f"deploy of {version} to {host.name} lost the connection during {attempt.step} and could "
                          f"not reconnect: {exc}",
                          hint=f"when the host is reachable: invoke status --host {host.name}; invoke rollback "
                               f"--host {host.name} if it is not on a release you trust; a lock left behind is "
                               "broken after 15 minutes") from None
    try:
        layout = _layout(t2, host)
        mgr = Manager(t2, host, layout)
        # the lost session's service-manager commands may still be running on the host: let them finish first
        t2.sh("for i in $(seq 50); do pgrep -u \"$(id -u)\" -f '[l]aunchctl |[s]ystemctl ' >/dev/null || break; "
              "sleep 0.2; done", check=False)
        current = current_release(t2, layout)
        if attempt.switched and current == version and attempt.previous:
            _rollback_to(t2, host, layout, mgr, attempt.previous, attempt.old_config, say)
            if attempt.old_previous:
                set_previous(t2, layout, attempt.old_previous)
            outcome = f"rolled back to {attempt.previous}"
        elif attempt.switched and current == version:
            mgr.stop()
            t2.sh(f"rm -f {q(layout.current)}", check=False)
            outcome = "stopped (no previous release)"
        else:
            if current and "running" not in mgr.state():
                mgr.restart()
            outcome = f"left on {current or 'no release'} (nothing was switched)"
        _history(t2, layout, version, "lost-connection")
        owner = t2.sh(f"cat {q(layout.lock + '/owner')} 2>/dev/null", check=False).stdout.strip()
        if owner == attempt.owner:
            t2.sh(f"rm -rf {q(layout.lock)}", check=False)
    finally:
        with contextlib.suppress(Exception):
            t2.close()
    raise DeployError(f"deploy of {version} to {host.name} lost the connection during {attempt.step} and was "
                      f"recovered: {outcome}: {exc}",
                      hint=f"invoke status --host {host.name}; deploy again when the network is stable") from None


def _deploy_locked(settings: Settings, host: Host, t: Transport, layout: Layout, mgr: Manager, m: dict[str, Any],
                   dist: Path, config: str, res: DeployResult, say: Say, rendered: list[modelfile.Rendered],
                   kv: tuple[str, str], t0: float, attempt: Attempt) -> DeployResult:
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
    _upload(t, layout, dist, m, res, say)
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
    try:
        mgr.install(config)
        t_restart = time.perf_counter()
        mgr.restart()
        with t.forward(host.port, host.probe_host) as url:
            ok, why = wait_version(url, version, host.health_timeout)
            if not ok:
                raise DeployError(f"{version} did not come up: {why}")
            # at most this long without an answering server: from the restart to the new release's /api/version
            res.downtime_s = round(time.perf_counter() - t_restart, 2)
            res.models = _models(host, url, rendered, say)
            # every model is proven with the cache it runs: its own kv_cache_type, or the host's default
            for name, (type_k, type_v) in ([(r.spec.name, (r.type_k, r.type_v)) for r in rendered]
                                           or [("", kv)]):
                r = smoke.smoke_ollama(url, model=name or None, log=lambda: t.read(layout.log),
                                       expect=smoke.Expect(version=version, type_k=type_k, type_v=type_v,
                                                           era=m["era"], fork=ForkBehaviour.from_env(settings.kv.env)))
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
        _rollback_to(t, host, layout, mgr, previous, old_config, say)
        if old_previous:
            set_previous(t, layout, old_previous)
        res.status = "rolled-back" if previous else "failed"
        _history(t, layout, version, res.status)
        res.seconds = time.perf_counter() - t0
        raise DeployError(f"deploy of {version} to {host.name} failed and was rolled back"
                          + (f" to {previous}" if previous else " (no previous release: service stopped)")
                          + f": {exc}\n--- service log (last lines) ---\n{tail}",
                          hint=f"fix the build and deploy again; invoke status --host {host.name}") from None
    _prune(t, layout, host.keep, keep={version, previous or ""})
    _history(t, layout, version, "deployed")
    res.status = "deployed"
    res.seconds = time.perf_counter() - t0
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


def server_kv(settings: Settings, rendered: list[modelfile.Rendered]) -> tuple[str, str]:
    """The K/V pair the host's server is configured with (its default): what the Modelfiles without their own
    ``kv_cache_type`` were rendered for (:func:`ollama_turbo.kv.modelfiles.render_all`), else the settings."""
    shared = [r for r in rendered if not r.per_model]
    return (shared[0].type_k, shared[0].type_v) if shared else (settings.kv.type_k, settings.kv.type_v)


def render_models(settings: Settings, host: Host, specs_dir: Path | None, m: dict[str, Any] | None = None,
                  dist: Path | None = None) -> list[modelfile.Rendered]:
    """The host's Modelfiles, rendered before anything on the host changes (bad specs stop here), for the build
    being deployed: its block formats, and a cache type per model where it takes ``PARAMETER kv_cache_type``
    (a spec's ``kv`` for a build without that must agree with every other model on the host)."""
    if specs_dir is None or not specs_dir.is_dir():
        return []
    specs = [s for s in modelfile.load_specs(specs_dir) if host.name in s.hosts]
    if not specs:
        return []
    blocks = BlockTable.from_manifest(m, str((dist or Path(".")) / "manifest.json")) if m and m.get(
        "cache_types") else BUILTIN
    per_model, why_not, allowed = modelfile.per_model_support(m)
    return modelfile.render_all(settings, specs, settings.workspace / "modelfiles", host=host.name, blocks=blocks,
                                per_model=per_model, why_not=why_not, allowed=allowed)


def _models(host: Host, url: str, rendered: list[modelfile.Rendered], say: Say) -> list[str]:
    client = Client(url, timeout=600)
    names = []
    for r in rendered:
        s = r.spec
        params: dict[str, Any] = dict(s.parameters)
        if r.num_ctx:
            params["num_ctx"] = r.num_ctx
        if r.kv_param:
            params["kv_cache_type"] = r.kv_param  # the model's own cache (a build with per-model cache types)
        local = Path(s.from_).expanduser()
        if s.from_.endswith(".gguf") and local.is_file():
            client.create(s.name, gguf=local, parameters=params, template=s.template or None,
                          system=s.system or None)
        else:
            client.create(s.name, from_=s.from_, parameters=params, template=s.template or None,
                          system=s.system or None)
        say(f"[{host.name}] model {s.name} created (num_ctx {r.num_ctx or 'default'}"
            + (f", kv_cache_type {r.kv_param})" if r.kv_param else ")"))
        names.append(s.name)
    return names


def _rollback_to(t: Transport, host: Host, layout: Layout, mgr: Manager, previous: str | None,
                 old_config: str, say: Say) -> None:
    if previous:
        switch(t, layout, previous, host)
        if old_config:
            mgr.install(old_config)
        mgr.restart()
        with t.forward(host.port, host.probe_host) as url:
            ok, why = wait_version(url, previous, host.health_timeout)
        say(f"[{host.name}] rolled back to {previous}: {why}")
        if not ok:
            raise DeployError(f"rollback to {previous} on {host.name} did not come up either: {why}")
    else:
        mgr.stop()
        t.sh(f"rm -f {q(layout.current)}", check=False)


def _prune(t: Transport, layout: Layout, count: int, *, keep: set[str]) -> None:
    """Remove all but the newest ``count`` releases; never the current or previous one."""
    have = releases(t, layout)
    for name in have[: max(0, len(have) - count)]:
        if name not in keep:
            t.sh(f"rm -rf {q(layout.releases + '/' + name)}", check=False)


def _history(t: Transport, layout: Layout, version: str, status: str) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t.sh(f"printf '%s %s %s\\n' {q(stamp)} {q(version)} {q(status)} >> {q(layout.prefix + '/deploys.log')}",
         check=False)


def releases(t: Transport, layout: Layout) -> list[str]:
    """Release names, oldest first."""
    r = t.sh(f"ls -1tr {q(layout.releases)} 2>/dev/null", check=False)
    return [x for x in r.stdout.split() if not x.endswith(".partial")]


# --- rollback, status, views for smoke and bench ---------------------------------------------


def rollback(settings: Settings, host: Host, to: str | None = None, say: Say = print,
             dry_run: bool = False) -> dict[str, Any]:
    """Switch back to the previous (or a given) release; returns {from, to, status}."""
    t = connect(host.name, host.ssh)
    try:
        layout = _layout(t, host)
        mgr = Manager(t, host, layout)
        current = current_release(t, layout)
        target = to or previous_release(t, layout)
        have = releases(t, layout)
        if not target:
            raise DeployError(f"{host.name}: no previous release to roll back to (releases: {', '.join(have)})")
        if target not in have:
            raise DeployError(f"{host.name}: release {target} is not installed (releases: {', '.join(have)})",
                              hint="pick one of those with --to")
        if dry_run:
            return {"host": host.name, "from": current, "to": target, "status": "dry-run"}
        with host_lock(t, layout, say):
            switch(t, layout, target, host)
            if current and current != target:
                set_previous(t, layout, current)
            t_restart = time.perf_counter()
            mgr.restart()
            with t.forward(host.port, host.probe_host) as url:
                ok, why = wait_version(url, target, host.health_timeout)
            downtime = round(time.perf_counter() - t_restart, 2)
            _history(t, layout, target, "rollback" if ok else "rollback-failed")
            if not ok:
                raise DeployError(f"{host.name}: {target} did not come up: {why}\n{log_tail(t, layout)}")
            return {"host": host.name, "from": current, "to": target, "status": "rolled-back", "downtime_s": downtime}
    finally:
        t.close()


def status(settings: Settings, host: Host) -> dict[str, Any]:
    t = connect(host.name, host.ssh)
    try:
        layout = _layout(t, host)
        mgr = Manager(t, host, layout)
        current = current_release(t, layout)
        kv = None
        if current:
            with contextlib.suppress(TurboError, ValueError):
                kv = json.loads(t.read(f"{layout.current}/manifest.json")).get("kv")
        config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
        with t.forward(host.port, host.probe_host) as url:

            def version() -> str | None:
                try:
                    return str(requests.get(f"{url}/api/version", timeout=3).json().get("version"))
                except (requests.RequestException, ValueError):
                    return None

            served = poll.until(version, interval=0.1, tries=20)  # the tunnel takes a moment to accept
            env_kv = {k: v for k, v in config_env(config, host.service).items()
                      if k in ("OLLAMA_KV_CACHE_TYPE", "LLAMA_ARG_CACHE_TYPE_K", "LLAMA_ARG_CACHE_TYPE_V")}
            log = t.sh(f"tail -n 20000 {q(layout.log)} 2>/dev/null", check=False).stdout
            default_k, default_v = env_pair(env_kv)
            models: list[dict[str, Any]] = []
            if served:
                with contextlib.suppress(ApiError, requests.RequestException):
                    models = [x.to_json() for x in loaded.loaded_models(Client(url, timeout=10), log,
                                                                         (default_k or "f16", default_v or "f16"))]
        return {"host": host.name, "service": host.service, "state": mgr.state(), "current": current,
                "serving": served, "previous": previous_release(t, layout),
                "releases": releases(t, layout), "kv_cache": env_kv or kv,
                "kv_running": kv_running(log, env_kv, ForkBehaviour.from_env(settings.kv.env)),
                "loaded": models, "prefix": layout.prefix}
    finally:
        t.close()


def env_pair(env_kv: dict[str, str]) -> tuple[str | None, str | None]:
    """The K/V pair a service's environment gives its llama-servers (LLAMA_ARG_* win over OLLAMA_KV_CACHE_TYPE)."""
    one = env_kv.get("OLLAMA_KV_CACHE_TYPE")
    return env_kv.get("LLAMA_ARG_CACHE_TYPE_K") or one, env_kv.get("LLAMA_ARG_CACHE_TYPE_V") or one


def kv_running(log: str, env_kv: dict[str, str], fb: ForkBehaviour) -> str:
    """What the server last allocated (its KV line), and why it differs from the configuration."""
    lines = kv_lines(log)
    if not lines:
        return "unknown (no llama_kv_cache line in the service log yet: load a model)"
    last = lines[-1]
    text = f"K {last.type_k} V {last.type_v}, {last.cells} cells (service log)"
    k, v = env_pair(env_kv)
    shape = model_shape(log)
    if k and v and shape:
        why = effective(k, v, n_layer=shape[0], gqa_ratio=shape[1], fb=fb).explain()
        if why:
            text += f"; {why}"
    return text


def config_env(text: str, service: str) -> dict[str, str]:
    """The environment a rendered service config gives the server."""
    import plistlib
    import re

    if not text.strip():
        return {}
    if service == "launchd":
        try:
            env = plistlib.loads(text.encode()).get("EnvironmentVariables", {})
            return {str(k): str(v) for k, v in env.items()}
        except (plistlib.InvalidFileException, ValueError):
            return {}
    pattern = r'^Environment="([^=]+)=(.*)"$' if service == "systemd" else r"^([A-Z_][A-Z0-9_]*)=(.*)$"
    return dict(re.findall(pattern, text, re.M))


@dataclass
class HostView:
    url: str
    read_log: Callable[[], str]
    current_manifest: Callable[[], dict[str, Any] | None]


def host_view(settings: Settings, host: Host) -> HostView:
    """An open view of a host for smoke: a tunnelled URL, its service log, its deployed manifest."""
    t = connect(host.name, host.ssh)
    layout = _layout(t, host)
    if current_release(t, layout) is None:
        t.close()
        raise DeployError(f"{host.name} has no current release under {layout.prefix}: nothing was deployed there",
                          hint=f"invoke deploy --host {host.name}; or point --url at a running server")
    stack = contextlib.ExitStack()
    url = stack.enter_context(t.forward(host.port, host.probe_host))
    atexit.register(t.close)
    atexit.register(stack.close)

    def current_manifest() -> dict[str, Any] | None:
        with contextlib.suppress(TurboError, ValueError, OSError):
            data: dict[str, Any] = json.loads(t.read(f"{layout.current}/manifest.json"))
            return data
        return None

    return HostView(url, lambda: t.read(layout.log), current_manifest)


def deployed_manifest(host: Host) -> dict[str, Any] | None:
    """The manifest of the build a host runs now (None: nothing deployed, or unreadable)."""
    t = connect(host.name, host.ssh)
    try:
        data: dict[str, Any] = json.loads(t.read(f"{_layout(t, host).current}/manifest.json"))
        return data
    except (TurboError, ValueError, OSError):
        return None
    finally:
        t.close()


def bench_targets(settings: Settings, host: Host, pairs: list[tuple[str, str]], model: str) -> list[Any]:
    """For bench --host: per cache type, rewrite the service's KV setting, restart, and restore it after."""
    def starter(k: str, v: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        @contextlib.contextmanager
        def start() -> Iterator[Any]:
            t = connect(host.name, host.ssh)
            try:
                layout = _layout(t, host)
                if current_release(t, layout) is None:
                    raise DeployError(f"{host.name} has no current release under {layout.prefix}: nothing to bench",
                                      hint=f"invoke deploy --host {host.name} first")
                mgr = Manager(t, host, layout)
                # the host's lock, held from the rewrite to the restore: a deploy cannot run in between
                with host_lock(t, layout, print):
                    m = json.loads(t.read(f"{layout.current}/manifest.json"))
                    original = t.read(mgr.config_path)
                    try:
                        mgr.install(render(host, layout, service_env(settings, host, layout, m["era"], kv=(k, v))))
                        mgr.restart()
                        with t.forward(host.port, host.probe_host) as url:
                            ok, why = wait_version(url, m["version"], host.health_timeout)
                            if not ok:
                                raise DeployError(f"{host.name} with {k}/{v}: {why}")
                            yield Endpoint(label(k, v), k, v, url, "ollama", model, lambda: t.read(layout.log))
                    finally:
                        mgr.install(original)
                        mgr.restart()
            finally:
                t.close()

        return start

    return [(Endpoint(label(k, v), k, v, "", "ollama", model), starter(k, v)) for k, v in pairs]
