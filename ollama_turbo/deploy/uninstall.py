"""``invoke uninstall``: ollama-turbo off a host, and the stock Ollama it took over given back.

In this order, each step safe to repeat (an interrupted uninstall is completed by running it again): our service
stopped and its config removed; the stock Ollama restored from ``<prefix>/adopted.json`` (its config back byte for
byte, enabled and started as it was found) and awaited on its port; then our files, the record last. The models
directory is never touched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ollama_turbo.core.errors import Interrupted, TurboError
from ollama_turbo.core.settings import Host
from ollama_turbo.deploy import adopt
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.lock import host_lock, lock_owner
from ollama_turbo.deploy.session import HostSession, open_host
from ollama_turbo.deploy.stock import StockService
from ollama_turbo.deploy.store import current_release
from ollama_turbo.deploy.transport import TransportError, q

Say = Callable[[str], None]


@dataclass
class Uninstall:
    host: str
    status: str                       # uninstalled | nothing | dry-run
    stock: dict[str, Any] | None      # the stock Ollama given back (None: none was adopted)
    removed: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def render(self) -> str:
        if self.status == "dry-run":
            return "\n".join([f"plan for {self.host}:", *[f"  {i}. {s}" for i, s in enumerate(self.steps, 1)],
                              "dry run: nothing was changed"])
        if self.status == "nothing":
            return f"nothing of ollama-turbo on {self.host}: nothing to uninstall"
        given = (f"; stock Ollama given back ({self.stock['name']}, port {self.stock['listen'].rsplit(':', 1)[1]})"
                 if self.stock else "; no stock Ollama had been adopted there, so none was given back: no Ollama "
                                    "runs there now")
        return f"uninstalled ollama-turbo from {self.host} (removed {', '.join(self.removed)}){given}; models untouched"


def _plan(s: HostSession, stock: StockService | None) -> list[str]:
    lay = s.layout
    return [f"stop our service and remove {s.mgr.config_path}",
            f"give back the stock Ollama: {stock.describe()}, " + ("enabled" if stock.enabled else "not enabled")
            + (" and running" if stock.active else ", not running") if stock else
            f"no stock Ollama to give back (no {lay.adopted}): the host is left with no Ollama service",
            f"remove {lay.prefix} (releases, logs, the record last); models in {lay.models} are left as they are"]


def uninstall(host: Host, *, dry_run: bool = False, say: Say = print) -> Uninstall:
    with open_host(host) as s:
        lay = s.layout
        if lay.models == lay.prefix or lay.models.startswith(lay.prefix.rstrip("/") + "/"):
            raise DeployError(f"{host.name}: turbo.hosts.{host.name}.models_dir ({lay.models}) is inside the prefix "
                              f"{lay.prefix}: removing the prefix would delete the models",
                              hint="move the models out of the prefix (and set models_dir to where they are), then "
                                   "uninstall")
        stock = adopt.read_record(s)
        have_prefix = s.t.sh(q("test", "-e", lay.prefix), check=False).ok
        have_config = s.t.sh(q("test", "-e", s.mgr.config_path), check=False).ok
        res = Uninstall(host.name, "dry-run", {**stock.to_json(), "config_b64": None} if stock else None,
                        steps=_plan(s, stock))
        if dry_run:
            return res
        if not have_prefix and not have_config:
            res.status = "nothing"
            return res
        me = lock_owner()
        step = "the stop of our service"
        try:
            with host_lock(s.t, lay, say, me):
                say(f"[{host.name}] 1/3 {res.steps[0]}")
                current = current_release(s.t, lay)
                s.mgr.remove()
                res.removed.append(f"service ({s.mgr.config_path})")
                step = "the return of the stock Ollama"
                say(f"[{host.name}] 2/3 {res.steps[1]}")
                if stock:
                    adopt.give_back(s, stock, say)
                step = "the removal of our files"
                say(f"[{host.name}] 3/3 {res.steps[2]}")
                # everything but the record and the lock, then the record, then the prefix (the lock with it)
                s.t.sh(f"cd {q(lay.prefix)} && for f in * .[!.]*; do case \"$f\" in adopted.json|.deploy-lock|"
                       f"'*'|'.[!.]*') ;; *) rm -rf \"$f\" ;; esac; done")
                s.t.sh(f"rm -f {q(lay.adopted)} && rm -rf {q(lay.prefix)}")
                res.removed.append(f"{lay.prefix}" + (f" (release {current})" if current else ""))
        except TransportError as exc:
            _drop_lock(host, me)
            raise DeployError(f"the uninstall of {host.name} lost the connection during {step}: {exc.message}",
                              hint=f"run it again when the host is reachable: invoke uninstall --host {host.name} "
                                   "(what was done is not done twice)") from None
        except KeyboardInterrupt:
            raise Interrupted(f"the uninstall of {host.name} was cut short: run invoke uninstall --host {host.name} "
                              "again to complete it", hosts=[host.name]) from None
        res.status = "uninstalled"
        return res


def _drop_lock(host: Host, me: str) -> None:
    """After a lost connection: our own lock on the host removed, if the host can be reached again."""
    try:
        with open_host(host) as s:
            owner = s.t.sh(f"cat {q(s.layout.lock + '/owner')} 2>/dev/null", check=False).stdout.strip()
            if owner == me:
                s.t.sh(f"rm -rf {q(s.layout.lock)}", check=False)
    except TurboError:
        pass
