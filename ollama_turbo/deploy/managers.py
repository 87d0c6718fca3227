"""The service managers, one per platform of :mod:`ollama_turbo.core.platforms`, behind one protocol; and the
third of them, none: the server as a detached process with a pidfile."""

from __future__ import annotations

from ollama_turbo.core.settings import Host
from ollama_turbo.deploy.launchd import Launchd
from ollama_turbo.deploy.services import Layout, ManagerBase, ServiceManager
from ollama_turbo.deploy.systemd import Systemd
from ollama_turbo.deploy.transport import Transport, q


class Detached(ManagerBase):
    @property
    def config_path(self) -> str:
        return f"{self.layout.prefix}/run/ollama.env"

    def restart(self) -> None:
        self.stop()
        lay = self.layout
        env = self.t.read(self.config_path)
        exports = " ".join(q(line) for line in env.splitlines() if "=" in line)
        self.t.sh(f"mkdir -p {q(lay.prefix + '/run', lay.prefix + '/logs')} && cd {q(lay.prefix)} && "
                  f"env {exports} nohup {q(lay.current + '/bin/ollama')} serve >> {q(lay.log)} 2>&1 < /dev/null & "
                  f"echo $! > {q(lay.pidfile)}")

    def stop(self) -> None:
        lay = self.layout
        self.t.sh(f"if [ -f {q(lay.pidfile)} ]; then p=$(cat {q(lay.pidfile)}); "
                  f"if ps -p \"$p\" -o args= 2>/dev/null | grep -q {q(lay.prefix)}; then kill \"$p\"; "
                  f"for i in $(seq 50); do kill -0 \"$p\" 2>/dev/null || break; sleep 0.1; done; fi; "
                  f"rm -f {q(lay.pidfile)}; fi", check=False)

    def state(self) -> str:
        lay = self.layout
        r = self.t.sh(f"p=$(cat {q(lay.pidfile)} 2>/dev/null) && kill -0 \"$p\" 2>/dev/null && echo \"$p\"",
                      check=False)
        return f"state = running, pid = {r.stdout.strip()}" if r.ok and r.stdout.strip() else "state = stopped"


MANAGERS: dict[str, type[ManagerBase]] = {"launchd": Launchd, "systemd": Systemd, "none": Detached}


def manager_for(t: Transport, host: Host, layout: Layout) -> ServiceManager:
    """The host's service manager, by its settings' ``service`` (validated against the same platform names)."""
    return MANAGERS[host.service](t, host, layout)
