"""Going back: ``invoke rollback``, the switch back after a failed deploy, and the recovery of a deploy whose
connection was lost (reconnect, put the host on a verified release, drop the lock)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ollama_turbo.core import poll
from ollama_turbo.core.errors import Interrupted, TurboError
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy import adopt
from ollama_turbo.deploy.deploy_plan import STEPS
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.hostview import wait_version
from ollama_turbo.deploy.lock import host_lock
from ollama_turbo.deploy.services import Layout, ServiceManager
from ollama_turbo.deploy.session import HostSession, open_host, session_on
from ollama_turbo.deploy.store import (
    current_release,
    history,
    log_tail,
    previous_release,
    releases,
    set_previous,
    switch,
)
from ollama_turbo.deploy.transport import Transport, TransportError, connect, q

Say = Callable[[str], None]


@dataclass
class Attempt:
    """What a deploy has done on the host so far: what recovery after a lost connection must undo."""

    owner: str                  # the lock's owner line
    previous: str | None = None
    old_previous: str | None = None
    old_config: str = ""
    switched: bool = False
    adopted: bool = False       # a stock Ollama was stopped for this deploy
    step: str = "connecting"
    left: str = ""              # after Ctrl-C: what the host was left on, once that is settled


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
        s = session_on(t2, host)
        layout, mgr = s.layout, s.mgr
        # the lost session's service-manager commands may still be running on the host: let them finish first
        t2.sh("for i in $(seq 50); do pgrep -u \"$(id -u)\" -f '[l]aunchctl |[s]ystemctl ' >/dev/null || break; "
              "sleep 0.2; done", check=False)
        current = current_release(t2, layout)
        if attempt.switched and current == version and attempt.previous:
            rollback_to(t2, host, layout, mgr, attempt.previous, attempt.old_config, say)
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
        given = adopt.settle(s, say)
        if given:
            outcome += f"; {given}"
        history(t2, layout, version, "lost-connection")
        owner = t2.sh(f"cat {q(layout.lock + '/owner')} 2>/dev/null", check=False).stdout.strip()
        if owner == attempt.owner:
            t2.sh(f"rm -rf {q(layout.lock)}", check=False)
    finally:
        with contextlib.suppress(Exception):
            t2.close()
    raise DeployError(f"deploy of {version} to {host.name} lost the connection during {attempt.step} and was "
                      f"recovered: {outcome}: {exc}",
                      hint=f"invoke status --host {host.name}; deploy again when the network is stable") from None


def put_back(s: HostSession, version: str, attempt: Attempt, say: Say) -> str:
    """Ctrl-C during a deploy, its lock still held: a host switched to the new, unverified release is switched
    back and its previous release restarted and awaited; a stock Ollama stopped for it with no release of ours to
    go back to is given back. Returns what the host was left on."""
    t, host, layout, mgr = s.t, s.host, s.layout, s.mgr
    if attempt.adopted and not attempt.switched:
        given = adopt.settle(s, say)
        if given:
            attempt.left = f"nothing was switched on {host.name}: {given}"
            return attempt.left
    if not attempt.switched or attempt.step == STEPS["prune"]:
        attempt.left = left_after(host, version, attempt)
        return attempt.left
    back = attempt.previous or "no release (its service is stopped)"
    say(f"[{host.name}] interrupted during {attempt.step}; switching back to {back}")
    try:
        rollback_to(t, host, layout, mgr, attempt.previous, attempt.old_config, say)
        if attempt.old_previous:
            set_previous(t, layout, attempt.old_previous)
        history(t, layout, version, "interrupted")
        given = None if attempt.previous else adopt.settle(s, say)
    except TurboError as exc:
        attempt.left = (f"{host.name} was switched to {version}, which is not verified, and the switch back to "
                        f"{back} failed: {exc.message}")
        return attempt.left
    attempt.left = (f"{host.name} was put back on {attempt.previous}, which answers again ({version} was not "
                    "verified)" if attempt.previous else
                    f"{host.name} had no previous release: its service was stopped ({version} was not verified)"
                    + (f"; {given}" if given else ""))
    return attempt.left


def left_after(host: Host, version: str, attempt: Attempt | None) -> str:
    """What a deploy stopped by Ctrl-C left on its host, from what it had done."""
    if attempt is None or attempt.step == "connecting":
        return f"nothing on {host.name} was changed"
    if attempt.left:
        return attempt.left
    if attempt.step == STEPS["prune"]:
        return f"{host.name} serves {version}, verified; only the pruning of old releases was cut short"
    if attempt.switched:
        return f"{host.name} may serve {version}, which is not verified: the switch back was interrupted"
    kept = "; the partial upload is kept and the next deploy resumes it" if attempt.step == STEPS["upload"] else ""
    return f"nothing was switched: {host.name} keeps the release it served{kept}"


def interrupted(host: Host, version: str, attempt: Attempt | None) -> Interrupted:
    return Interrupted(left_after(host, version, attempt), hosts=[host.name])


def rollback_to(t: Transport, host: Host, layout: Layout, mgr: ServiceManager, previous: str | None,
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


def rollback(settings: Settings, host: Host, to: str | None = None, say: Say = print,
             dry_run: bool = False) -> dict[str, Any]:
    """Switch back to the previous (or a given) release; returns {from, to, status}."""
    with open_host(host) as s:
        t, layout, mgr = s.t, s.layout, s.mgr
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
        stage = "before"
        try:
            with host_lock(t, layout, say):
                stage = "switch"
                switch(t, layout, target, host)
                if current and current != target:
                    set_previous(t, layout, current)
                stage = "restart"
                t_restart = time.perf_counter()
                mgr.restart()
                with t.forward(host.port, host.probe_host) as url:
                    ok, why = wait_version(url, target, host.health_timeout)
                downtime = round(time.perf_counter() - t_restart, 2)
                history(t, layout, target, "rollback" if ok else "rollback-failed")
                if not ok:
                    raise DeployError(f"{host.name}: {target} did not come up: {why}\n{log_tail(t, layout)}")
                stage = "done"
                return {"host": host.name, "from": current, "to": target, "status": "rolled-back",
                        "downtime_s": downtime}
        except KeyboardInterrupt:
            left = {"before": f"nothing was switched: {host.name} keeps {current or 'no release'}",
                    "switch": f"{host.name} may have been switched to {target}, and was not restarted",
                    "restart": f"{host.name} was switched to {target} (verified when it was deployed), but its "
                               "restart was not awaited",
                    "done": f"{host.name} serves {target}"}[stage]
            raise Interrupted(left, hosts=[host.name]) from None
