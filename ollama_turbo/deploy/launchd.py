"""launchd: our service as a LaunchAgent, and the stock Ollama's agent (Homebrew's or the app's) taken over and
given back. launchctl is driven through the host's transport; parsing the plist is :mod:`.stock`'s."""

from __future__ import annotations

import re

from ollama_turbo.core import poll
from ollama_turbo.core.platforms import PLATFORMS
from ollama_turbo.deploy.services import LABEL, ManagerBase, ServiceError, write_bytes
from ollama_turbo.deploy.stock import StockService, from_plist, models_of, normal_listen
from ollama_turbo.deploy.transport import q


class Launchd(ManagerBase):
    @property
    def config_path(self) -> str:
        return self.layout.plist

    def domain(self) -> str:
        uid = self.t.sh("id -u").stdout.strip()
        me = self.t.sh("id -un").stdout.strip()
        console = self.t.sh("ls -ln /dev/console 2>/dev/null | awk '{print $3}'", check=False).stdout.strip()
        return f"gui/{uid}" if console == uid and me else f"user/{uid}"

    def restart(self) -> None:
        self._start(self.domain(), LABEL, self.layout.plist, restart=True)

    def _start(self, d: str, label: str, plist: str, *, restart: bool) -> None:
        if restart:
            self._bootout(d, label)
        if restart or self._print(d, label) is None:
            r = self.t.sh(q("launchctl", "bootstrap", d, plist), check=False)
            if r.returncode == 5:  # "Input/output error": a stale registration; bootout and retry once
                self._bootout(d, label)
                r = self.t.sh(q("launchctl", "bootstrap", d, plist), check=False)
            if not r.ok:
                said = (r.stderr or r.stdout).strip().splitlines() or [""]
                raise ServiceError(f"{self.host.name}: launchctl bootstrap {d} {plist} failed ({r.returncode}): "
                                   f"{said[-1]}", hint=f"look at {plist} and what it runs; then run the task again")
        if restart or "state = running" not in (self._print(d, label) or ""):
            self.t.sh(q("launchctl", "kickstart", "-k", f"{d}/{label}"))
        if "state = running" not in (self._print(d, label) or ""):
            raise ServiceError(f"{self.host.name}: {label} is not running after kickstart")

    def _bootout(self, d: str, label: str = LABEL) -> None:
        def done() -> bool | None:
            r = self.t.sh(q("launchctl", "bootout", f"{d}/{label}"), check=False)
            text = (r.stderr + r.stdout).lower()
            return None if r.returncode in (36, 37) or "in progress" in text else True

        poll.until(done, interval=0.25, tries=20)

    def _print(self, d: str, label: str) -> str | None:
        """``launchctl print`` of a job (None: not loaded)."""
        r = self.t.sh(q("launchctl", "print", f"{d}/{label}"), check=False)
        return r.stdout if r.ok else None

    def stop(self) -> None:
        self._bootout(self.domain())

    def state(self) -> str:
        out = self._print(self.domain(), LABEL)
        if out is None:
            return "not loaded"
        state = re.search(r"state = (\w+)", out)
        pid = re.search(r"pid = (\d+)", out)
        return f"state = {state.group(1) if state else 'unknown'}" + (f", pid = {pid.group(1)}" if pid else "")

    # --- the stock Ollama's agent ------------------------------------------------------------

    def find_stock(self) -> StockService | None:
        """The first stock Ollama agent in ~/Library/LaunchAgents (Homebrew's, then the app's), as it is now."""
        home = self.layout.home
        found: list[str] = []
        for pattern in PLATFORMS["launchd"].stock:
            folder, _, name = pattern.removeprefix("~/").rpartition("/")
            out = self.t.sh(f"for f in {q(home + '/' + folder)}/{name}; do [ -f \"$f\" ] && echo \"$f\"; done; true",
                            check=False).stdout
            found += [p for p in out.splitlines() if p and p not in found]
        if not found:
            return None
        path = found[0]
        b64 = "".join(self.t.sh(f"base64 < {q(path)}").stdout.split())
        import base64

        label, env, args = from_plist(base64.b64decode(b64), f"{self.host.name}:{path}", home)
        d = self.domain()
        shown = self._print(d, label)
        return StockService("launchd", label, path, enabled=True, active="state = running" in (shown or ""),
                            env=env, models=models_of(env, home), listen=normal_listen(env.get("OLLAMA_HOST")),
                            config_b64=b64, domain=d, extra={"loaded": shown is not None, "program": args})

    def stop_stock(self, stock: StockService) -> None:
        """Unload the agent and take its plist out of LaunchAgents (so the next login does not start it); its
        exact bytes are in the adoption record."""
        self._bootout(self.domain(), stock.name)
        self.t.sh(q("rm", "-f", stock.path))

    def restore_stock(self, stock: StockService) -> None:
        """The agent's plist back, byte for byte, and loaded and running as it was found."""
        if not self.t.sh(q("test", "-f", stock.path), check=False).ok:
            self.t.sh(f"mkdir -p \"$(dirname {q(stock.path)})\"")
            write_bytes(self.t, stock.path, stock.config_b64)
        if stock.active or stock.extra.get("loaded"):
            self._start(self.domain(), stock.name, stock.path, restart=False)
