"""Service managers on a host: launchd (LaunchAgent), systemd (user unit), or none (a detached
process with a pidfile). Rendering is pure; the managers act through a transport."""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass

from ollama_turbo.core import poll, server_kv, templates
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.settings import KV, Host
from ollama_turbo.deploy.transport import Transport, q

LABEL = "com.ollama-turbo.ollama"
UNIT = "ollama-turbo.service"


class ServiceError(TurboError):
    pass


@dataclass(frozen=True)
class Layout:
    """Absolute paths on the host."""

    home: str
    prefix: str
    models: str

    @property
    def releases(self) -> str:
        return f"{self.prefix}/releases"

    @property
    def current(self) -> str:
        return f"{self.prefix}/current"

    @property
    def log(self) -> str:
        return f"{self.prefix}/logs/ollama.log"

    @property
    def lock(self) -> str:
        return f"{self.prefix}/.deploy-lock"

    @property
    def pidfile(self) -> str:
        return f"{self.prefix}/run/ollama.pid"

    @property
    def plist(self) -> str:
        return f"{self.home}/Library/LaunchAgents/{LABEL}.plist"

    @property
    def unit(self) -> str:
        return f"{self.home}/.config/systemd/user/{UNIT}"


def expand(path: str, home: str) -> str:
    return home + path[1:] if path == "~" or path.startswith("~/") else path


def service_env(cache: KV, host: Host, layout: Layout, era: str, kv: KVPair) -> list[tuple[str, str]]:
    """The server's environment: listen address, models, its K/V cache type ``kv``, and from the configured
    ``cache``: flash attention and the variables of ``turbo.kv.env`` (the fork's knobs)."""
    env = [("OLLAMA_HOST", host.listen), ("OLLAMA_MODELS", layout.models), *server_kv.to_env(era, kv)]
    if cache.flash_attention:
        env.append(("OLLAMA_FLASH_ATTENTION", "1"))
    env += sorted(cache.env.items())
    return env


def launchd_plist(layout: Layout, env: list[tuple[str, str]]) -> str:
    """The launchd job, built with plistlib: every value is escaped as XML needs (``&``, ``<``, spaces)."""
    job = {
        "Label": LABEL,
        "ProgramArguments": [f"{layout.prefix}/current/bin/ollama", "serve"],
        "EnvironmentVariables": dict(env),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 5,
        "ProcessType": "Interactive",
        "WorkingDirectory": layout.prefix,
        "StandardOutPath": layout.log,
        "StandardErrorPath": layout.log,
    }
    return plistlib.dumps(job, sort_keys=False).decode()


def systemd_value(value: str) -> str:
    """A value inside a double-quoted systemd setting: backslash, quote and ``%`` (a specifier) escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def render(host: Host, layout: Layout, env: list[tuple[str, str]]) -> str:
    if host.service == "launchd":
        return launchd_plist(layout, env)
    if host.service == "systemd":
        return templates.render("systemd.service.j2", host=host.name, prefix=layout.prefix, log=layout.log,
                                env=[(k, systemd_value(v)) for k, v in env], quote=systemd_value)
    return "".join(f"{k}={v}\n" for k, v in env)


class Manager:
    def __init__(self, t: Transport, host: Host, layout: Layout) -> None:
        self.t, self.host, self.layout = t, host, layout

    @property
    def config_path(self) -> str:
        if self.host.service == "launchd":
            return self.layout.plist
        if self.host.service == "systemd":
            return self.layout.unit
        return f"{self.layout.prefix}/run/ollama.env"

    def install(self, text: str) -> None:
        self.t.write(self.config_path, text)

    def restart(self) -> None:
        getattr(self, f"_restart_{self.host.service}")()

    def stop(self) -> None:
        getattr(self, f"_stop_{self.host.service}")()

    def state(self) -> str:
        result: str = getattr(self, f"_state_{self.host.service}")()
        return result

    def pid(self) -> int | None:
        m = re.search(r"pid[ =]+(\d+)", self.state())
        return int(m.group(1)) if m else None

    # --- launchd --------------------------------------------------------------------------

    def domain(self) -> str:
        uid = self.t.sh("id -u").stdout.strip()
        me = self.t.sh("id -un").stdout.strip()
        console = self.t.sh("ls -ln /dev/console 2>/dev/null | awk '{print $3}'", check=False).stdout.strip()
        return f"gui/{uid}" if console == uid and me else f"user/{uid}"

    def _restart_launchd(self) -> None:
        d = self.domain()
        self._bootout(d)
        r = self.t.sh(q("launchctl", "bootstrap", d, self.layout.plist), check=False)
        if r.returncode == 5:  # "Input/output error": a stale registration; bootout and retry once
            self._bootout(d)
            r = self.t.sh(q("launchctl", "bootstrap", d, self.layout.plist), check=False)
        if not r.ok:
            raise ServiceError(f"{self.host.name}: launchctl bootstrap {d} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()}")
        self.t.sh(q("launchctl", "kickstart", "-k", f"{d}/{LABEL}"))
        if "state = running" not in self._state_launchd():
            raise ServiceError(f"{self.host.name}: {LABEL} is not running after kickstart")

    def _bootout(self, d: str) -> None:
        def done() -> bool | None:
            r = self.t.sh(q("launchctl", "bootout", f"{d}/{LABEL}"), check=False)
            text = (r.stderr + r.stdout).lower()
            return None if r.returncode in (36, 37) or "in progress" in text else True

        poll.until(done, interval=0.25, tries=20)

    def _stop_launchd(self) -> None:
        self._bootout(self.domain())

    def _state_launchd(self) -> str:
        r = self.t.sh(q("launchctl", "print", f"{self.domain()}/{LABEL}"), check=False)
        if not r.ok:
            return "not loaded"
        state = re.search(r"state = (\w+)", r.stdout)
        pid = re.search(r"pid = (\d+)", r.stdout)
        return f"state = {state.group(1) if state else 'unknown'}" + (f", pid = {pid.group(1)}" if pid else "")

    # --- systemd --------------------------------------------------------------------------

    def _restart_systemd(self) -> None:
        self.t.sh("systemctl --user daemon-reload")
        self.t.sh(q("systemctl", "--user", "enable", UNIT), check=False)
        self.t.sh(q("systemctl", "--user", "restart", UNIT))
        if self.t.sh(q("systemctl", "--user", "is-active", UNIT), check=False).stdout.strip() != "active":
            raise ServiceError(f"{self.host.name}: {UNIT} is not active after restart")

    def _stop_systemd(self) -> None:
        self.t.sh(q("systemctl", "--user", "stop", UNIT), check=False)

    def _state_systemd(self) -> str:
        active = self.t.sh(q("systemctl", "--user", "is-active", UNIT), check=False).stdout.strip()
        pid = self.t.sh(q("systemctl", "--user", "show", "-p", "MainPID", "--value", UNIT), check=False)
        return f"state = {active}" + (f", pid = {pid.stdout.strip()}" if pid.stdout.strip() not in ("", "0") else "")

    # --- none: a detached process ----------------------------------------------------------

    def _restart_none(self) -> None:
        self._stop_none()
        lay = self.layout
        env = self.t.read(self.config_path)
        exports = " ".join(q(line) for line in env.splitlines() if "=" in line)
        self.t.sh(f"mkdir -p {q(lay.prefix + '/run', lay.prefix + '/logs')} && cd {q(lay.prefix)} && "
                  f"env {exports} nohup {q(lay.current + '/bin/ollama')} serve >> {q(lay.log)} 2>&1 < /dev/null & "
                  f"echo $! > {q(lay.pidfile)}")

    def _stop_none(self) -> None:
        lay = self.layout
        self.t.sh(f"if [ -f {q(lay.pidfile)} ]; then p=$(cat {q(lay.pidfile)}); "
                  f"if ps -p \"$p\" -o args= 2>/dev/null | grep -q {q(lay.prefix)}; then kill \"$p\"; "
                  f"for i in $(seq 50); do kill -0 \"$p\" 2>/dev/null || break; sleep 0.1; done; fi; "
                  f"rm -f {q(lay.pidfile)}; fi", check=False)

    def _state_none(self) -> str:
        lay = self.layout
        r = self.t.sh(f"p=$(cat {q(lay.pidfile)} 2>/dev/null) && kill -0 \"$p\" 2>/dev/null && echo \"$p\"",
                      check=False)
        return f"state = running, pid = {r.stdout.strip()}" if r.ok and r.stdout.strip() else "state = stopped"
