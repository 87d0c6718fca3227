"""The release store on a host: where releases live, which one is current and which previous, the switch
between them (one rename), the history, and what a release's files hash to.

Host layout: ``<prefix>/releases/<version>/`` (bin/, lib/, manifest.json), ``<prefix>/current`` (a symlink
switched with one rename), ``<prefix>/previous`` (the version to go back to), ``<prefix>/history``,
``<prefix>/logs/ollama.log``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ollama_turbo.core import manifest as manifest_mod
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host
from ollama_turbo.deploy import record
from ollama_turbo.deploy.record import DeployRecord
from ollama_turbo.deploy.services import Layout, expand
from ollama_turbo.deploy.transport import Transport, q, url_host


def layout_of(t: Transport, host: Host) -> Layout:
    home = t.sh('printf %s "$HOME"').stdout.strip()
    return Layout(home=home, prefix=expand(host.prefix, home), models=expand(host.models_dir, home))


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


def current_manifest(t: Transport, layout: Layout, host: Host) -> Manifest | None:
    """The manifest of the release a host runs now, read through the one loader (None: nothing deployed, or a
    manifest that is not one). A lost connection is not "no manifest": its TransportError goes up."""
    path = f"{layout.current}/manifest.json"
    r = t.sh(f"cat {q(path)} 2>/dev/null", check=False)
    if not r.ok:
        return None
    try:
        return manifest_mod.parse(r.stdout, Path(path), host=host.name)
    except TurboError:
        return None


def current_record(t: Transport, layout: Layout, host: Host) -> DeployRecord | None:
    """The deploy record of the release a host runs now (None: none written there, as by an older toolkit).
    A lost connection is not "no record": its TransportError goes up."""
    path = f"{layout.current}/{record.NAME}"
    r = t.sh(f"cat {q(path)} 2>/dev/null", check=False)
    return record.parse(r.stdout, f"{host.name}:{path}") if r.ok and r.stdout.strip() else None


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


def log_tail(t: Transport, layout: Layout, lines: int = 15) -> str:
    return t.sh(f"tail -n {lines} {q(layout.log)} 2>/dev/null", check=False).stdout


def port_holder(t: Transport, port: int, listen_host: str = "127.0.0.1") -> str | None:
    """What listens on ``port`` on the host (None when nothing does)."""
    probe = t.sh(f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' {q(f'http://{url_host(listen_host)}:{port}/')}",
                 check=False)
    if probe.stdout.strip() in ("", "000"):
        return None
    who = t.sh(f"(lsof -nP -iTCP:{port} -sTCP:LISTEN 2>/dev/null | tail -n +2; "
               f"ss -ltnpH 'sport = :{port}' 2>/dev/null) | head -3", check=False).stdout.strip()
    return who or f"something answering HTTP {probe.stdout.strip()} on port {port}"


def releases(t: Transport, layout: Layout) -> list[str]:
    """Release names, oldest first."""
    r = t.sh(f"ls -1tr {q(layout.releases)} 2>/dev/null", check=False)
    return [x for x in r.stdout.split() if not x.endswith(".partial")]


def prune(t: Transport, layout: Layout, count: int, *, keep: set[str]) -> None:
    """Remove all but the newest ``count`` releases; never the current or previous one."""
    have = releases(t, layout)
    for name in have[: max(0, len(have) - count)]:
        if name not in keep:
            t.sh(f"rm -rf {q(layout.releases + '/' + name)}", check=False)


def history(t: Transport, layout: Layout, version: str, status: str) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t.sh(f"printf '%s %s %s\\n' {q(stamp)} {q(version)} {q(status)} >> {q(layout.prefix + '/deploys.log')}",
         check=False)
