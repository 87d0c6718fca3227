"""Taking over the stock Ollama and giving it back, on the host: the record of it (``<prefix>/adopted.json``,
written before it is stopped and never rewritten while it exists), stopping it for our service, and restoring it
exactly as it was found. What may be taken over is decided in :mod:`.stock`; the service managers do the
starting and stopping."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ollama_turbo.core import poll
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.settings import KV
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.services import owned_env
from ollama_turbo.deploy.session import HostSession
from ollama_turbo.deploy.stock import StockService, carried, parse_record, refusal
from ollama_turbo.deploy.store import current_release
from ollama_turbo.deploy.transport import q, url_host

Say = Callable[[str], None]


@dataclass(frozen=True)
class Adoption:
    """A stock Ollama this deploy serves in place of: as first found, and whether it must be stopped now."""

    stock: StockService
    new: bool    # no record on the host yet: this deploy writes it
    stop: bool   # it runs, or would start by itself: the deploy stops and disables it

    def carried(self, cache: KV) -> dict[str, str]:
        return carried(self.stock, owned_env(cache))


def read_record(s: HostSession) -> StockService | None:
    r = s.t.sh(f"cat {q(s.layout.adopted)} 2>/dev/null", check=False)
    if not r.ok or not r.stdout.strip():
        return None
    return parse_record(r.stdout, f"{s.host.name}:{s.layout.adopted}")


def carried_env(s: HostSession, cache: KV) -> dict[str, str]:
    """The adopted stock server's environment that our service keeps (none when nothing was adopted)."""
    rec = read_record(s)
    return carried(rec, owned_env(cache)) if rec else {}


def loaded_models(s: HostSession, port: int) -> list[str]:
    """The models a server on the host holds in memory now (its /api/ps)."""
    url = f"http://{url_host(s.host.probe_host)}:{port}/api/ps"
    out = s.t.sh(q("curl", "-s", "-m", "3", url), check=False).stdout
    try:
        return [str(m.get("name") or m.get("model")) for m in json.loads(out).get("models") or []]
    except (ValueError, AttributeError):
        return []


def models_access(s: HostSession, models: str) -> str | None:
    """Why this login cannot read and write the models directory (None: it can, or it does not exist yet)."""
    r = s.t.sh(f"d={q(models)}; [ ! -e \"$d\" ] || {{ [ -r \"$d\" ] && [ -w \"$d\" ] && [ -x \"$d\" ]; }}", check=False)
    return None if r.ok else f"this login ({s.layout.home}) cannot read and write the stock models in {models}"


def survey(s: HostSession, *, adopt_loaded: bool) -> Adoption | None:
    """The stock Ollama this deploy takes over (None: none on the host); one it may not take over is refused
    here, before anything changes. A host adopted before keeps its first record."""
    rec = read_record(s)
    found = s.mgr.find_stock()
    if rec is not None:
        stop = found is not None and (found.active or found.enabled)
        return Adoption(rec, new=False, stop=stop)
    if found is None:
        return None
    loaded = loaded_models(s, found.port) if found.active else []
    why = refusal(s.host.name, found, models=s.layout.models, listen=s.host.listen, loaded=loaded,
                  models_ok=models_access(s, found.models), adopt_loaded=adopt_loaded)
    if why:
        raise why
    return Adoption(found, new=True, stop=True)


def take_over(s: HostSession, adoption: Adoption, say: Say) -> None:
    """Record the stock Ollama as it is (first), then stop and disable it and wait for its port to be free."""
    if adoption.new:
        s.t.sh(f"mkdir -p {q(s.layout.prefix)}")
        s.t.write(s.layout.adopted, json.dumps(adoption.stock.to_json(), indent=2) + "\n")
    if adoption.stop:
        try:
            s.mgr.stop_stock(adoption.stock)
        except TurboError:
            if adoption.new:  # not stopped: nothing to give back, and the next deploy records it afresh
                s.t.sh(q("rm", "-f", s.layout.adopted), check=False)
            raise
    url = f"http://{url_host(s.host.probe_host)}:{adoption.stock.port}/"

    def free() -> bool | None:
        code = s.t.sh(q("curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", url), check=False)
        return True if code.stdout.strip() in ("", "000") else None

    if not poll.until(free, interval=0.2, timeout=max(s.host.health_timeout, 5)):
        raise DeployError(f"{s.host.name}: port {adoption.stock.port} still answers after the stock Ollama "
                          f"({adoption.stock.name}) was stopped",
                          hint="quit whatever else serves there (Ollama.app: menu bar > Quit Ollama), then deploy "
                               "again")
    say(f"[{s.host.name}] stock Ollama stopped and disabled ({adoption.stock.describe()}); recorded in "
        f"{s.layout.adopted}")


def give_back(s: HostSession, stock: StockService, say: Say) -> None:
    """The stock Ollama restored as it was found, and, if it was running then, serving on its port again."""
    s.mgr.restore_stock(stock)
    if not stock.active:
        say(f"[{s.host.name}] stock Ollama restored ({stock.describe()}); it was not running when adopted, so it "
            "was not started")
        return
    url = f"http://{url_host(s.host.probe_host)}:{stock.port}/api/version"

    def serving() -> str | None:
        out = s.t.sh(q("curl", "-s", "-m", "2", url), check=False).stdout
        return out if '"version"' in out else None

    answer = poll.until(serving, interval=0.2, timeout=max(s.host.health_timeout, 5))
    if not answer:
        raise DeployError(f"{s.host.name}: the stock Ollama ({stock.path}) was restored but does not answer on port "
                          f"{stock.port}", hint=f"look at its log; its record stays in {s.layout.adopted}; run the "
                                                "task again once it is fixed")
    say(f"[{s.host.name}] stock Ollama serves again on port {stock.port} ({stock.name}): {answer.strip()}")


def settle(s: HostSession, say: Say) -> str | None:
    """After a failed or cut first deploy over a stock Ollama: with no release of ours current, the stock one is
    given back and its record removed. Returns what was done (None: nothing to do)."""
    rec = read_record(s)
    if rec is None or current_release(s.t, s.layout) is not None:
        return None
    s.mgr.stop()
    give_back(s, rec, say)
    s.t.sh(q("rm", "-f", s.layout.adopted), check=False)
    return f"the stock Ollama was given back ({rec.name}, port {rec.port})"
