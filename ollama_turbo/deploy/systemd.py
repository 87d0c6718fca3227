"""systemd: our service as a user unit, and the stock ``ollama.service`` (the system unit Ollama's install script
writes, running as the ``ollama`` account) taken over and given back; changing a system unit needs root, through
``sudo -n`` where the login is not root."""

from __future__ import annotations

from ollama_turbo.deploy.services import UNIT, ManagerBase, ServiceError, write_bytes
from ollama_turbo.deploy.stock import StockService, from_unit, models_of, normal_listen
from ollama_turbo.deploy.transport import q

STOCK_UNIT = "ollama.service"


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show -p A -p B`` as a mapping."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class Systemd(ManagerBase):
    @property
    def config_path(self) -> str:
        return self.layout.unit

    def restart(self) -> None:
        self.t.sh("systemctl --user daemon-reload")
        self.t.sh(q("systemctl", "--user", "enable", UNIT), check=False)
        self.t.sh(q("systemctl", "--user", "restart", UNIT))
        if self.t.sh(q("systemctl", "--user", "is-active", UNIT), check=False).stdout.strip() != "active":
            raise ServiceError(f"{self.host.name}: {UNIT} is not active after restart")

    def stop(self) -> None:
        self.t.sh(q("systemctl", "--user", "stop", UNIT), check=False)

    def remove(self) -> None:
        self.t.sh(q("systemctl", "--user", "disable", "--now", UNIT), check=False)
        self.t.sh(q("rm", "-f", self.config_path), check=False)
        self.t.sh("systemctl --user daemon-reload", check=False)

    def state(self) -> str:
        active = self.t.sh(q("systemctl", "--user", "is-active", UNIT), check=False).stdout.strip()
        pid = self.t.sh(q("systemctl", "--user", "show", "-p", "MainPID", "--value", UNIT), check=False)
        return f"state = {active}" + (f", pid = {pid.stdout.strip()}" if pid.stdout.strip() not in ("", "0") else "")

    # --- the stock ollama.service ------------------------------------------------------------

    def _root(self) -> str:
        return "" if self.t.sh("id -u").stdout.strip() == "0" else "sudo -n "

    def find_stock(self) -> StockService | None:
        r = self.t.sh(q("systemctl", "show", STOCK_UNIT, "-p", "LoadState", "-p", "FragmentPath", "-p",
                        "UnitFileState", "-p", "ActiveState"), check=False)
        show = parse_show(r.stdout)
        if not r.ok or show.get("LoadState") != "loaded" or not show.get("FragmentPath"):
            return None
        user, env = from_unit(self.t.sh(q("systemctl", "cat", STOCK_UNIT)).stdout)
        home = self.t.sh(f"getent passwd {q(user or 'root')} | cut -d: -f6", check=False).stdout.strip() or "/root"
        path = show["FragmentPath"]
        b64 = "".join(self.t.sh(f"base64 < {q(path)}").stdout.split())
        return StockService("systemd", STOCK_UNIT, path, enabled=show.get("UnitFileState") == "enabled",
                            active=show.get("ActiveState") == "active", env=env, models=models_of(env, home),
                            listen=normal_listen(env.get("OLLAMA_HOST")), user=user, config_b64=b64)

    def _systemctl(self, *words: str, what: str) -> None:
        r = self.t.sh(self._root() + q("systemctl", *words), check=False)
        if not r.ok:
            raise ServiceError(f"{self.host.name}: systemctl {' '.join(words)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[:200]}",
                               hint=f"{what} needs root: give this login passwordless sudo for systemctl, or run "
                                    f"'sudo systemctl {' '.join(words)}' on {self.host.name} yourself, then run "
                                    "the task again")

    def stop_stock(self, stock: StockService) -> None:
        self._systemctl("disable", "--now", stock.name, what="stopping the stock ollama.service")

    def restore_stock(self, stock: StockService) -> None:
        if not self.t.sh(q("test", "-f", stock.path), check=False).ok:
            write_bytes(self.t, stock.path, stock.config_b64, root=self._root())
            self._systemctl("daemon-reload", what="restoring the stock ollama.service")
        if stock.enabled:
            self._systemctl("enable", stock.name, what="restoring the stock ollama.service")
        if stock.active:
            self._systemctl("start", stock.name, what="restoring the stock ollama.service")
