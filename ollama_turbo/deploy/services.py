"""Service managers on a host: launchd (LaunchAgent), systemd (user unit), or none (a detached process with a
pidfile), as one protocol (:class:`ServiceManager`; the three in :mod:`ollama_turbo.deploy.managers`). Here: the
host's layout, the server's environment and the rendering of its config, all pure."""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass
from typing import Protocol

from ollama_turbo.core import server_kv, templates
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.settings import KV, Host
from ollama_turbo.deploy.stock import StockService
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

    @property
    def adopted(self) -> str:
        """The record of the stock Ollama a deploy took over (absent: none was)."""
        return f"{self.prefix}/adopted.json"


def expand(path: str, home: str) -> str:
    return home + path[1:] if path == "~" or path.startswith("~/") else path


def service_env(cache: KV, host: Host, layout: Layout, era: str, kv: KVPair,
                carried: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The server's environment: listen address, models, its K/V cache type ``kv``, the ``carried`` environment
    of an adopted stock Ollama, and from the configured ``cache``: flash attention and the variables of
    ``turbo.kv.env`` (the fork's knobs), which win over what was carried."""
    env = [("OLLAMA_HOST", host.listen), ("OLLAMA_MODELS", layout.models), *server_kv.to_env(era, kv)]
    if cache.flash_attention:
        env.append(("OLLAMA_FLASH_ATTENTION", "1"))
    own = {k for k, _ in env} | set(cache.env)
    env += [(k, v) for k, v in sorted((carried or {}).items()) if k not in own]
    env += sorted(cache.env.items())
    return env


def owned_env(cache: KV) -> set[str]:
    """The variables our service sets itself, whatever a stock config gave."""
    return {"OLLAMA_HOST", "OLLAMA_MODELS", "OLLAMA_FLASH_ATTENTION", *server_kv.NAMES, *cache.env}


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


class ServiceManager(Protocol):
    """One service manager on one host: our service (its config, restart, stop, state, removal) and the stock
    Ollama's service there (found, stopped and disabled when a deploy adopts it, restored by uninstall)."""

    t: Transport
    host: Host
    layout: Layout

    @property
    def config_path(self) -> str: ...
    def install(self, text: str) -> None: ...
    def restart(self) -> None: ...
    def stop(self) -> None: ...
    def remove(self) -> None: ...
    def state(self) -> str: ...
    def pid(self) -> int | None: ...
    def find_stock(self) -> StockService | None: ...
    def stop_stock(self, stock: StockService) -> None: ...
    def restore_stock(self, stock: StockService) -> None: ...


class ManagerBase:
    """What every manager does the same way: install its config file, read its pid from its state, remove it;
    a manager with no stock Ollama of its own finds none."""

    def __init__(self, t: Transport, host: Host, layout: Layout) -> None:
        self.t, self.host, self.layout = t, host, layout

    @property
    def config_path(self) -> str:
        raise NotImplementedError

    def install(self, text: str) -> None:
        self.t.write(self.config_path, text)

    def restart(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def state(self) -> str:
        raise NotImplementedError

    def pid(self) -> int | None:
        m = re.search(r"pid[ =]+(\d+)", self.state())
        return int(m.group(1)) if m else None

    def remove(self) -> None:
        """Stop our service and delete its config: nothing of it starts again."""
        self.stop()
        self.t.sh(q("rm", "-f", self.config_path), check=False)

    def find_stock(self) -> StockService | None:
        return None

    def stop_stock(self, stock: StockService) -> None:
        raise ServiceError(f"{self.host.name}: a {self.host.service} host has no stock Ollama service to stop")

    def restore_stock(self, stock: StockService) -> None:
        raise ServiceError(f"{self.host.name}: a {self.host.service} host cannot start a {stock.manager} service",
                           hint=f"start it by hand: {stock.path}")


def write_bytes(t: Transport, path: str, b64: str, *, root: str = "") -> None:
    """A config file's exact bytes back at ``path`` (written beside it, then renamed); ``root`` is a ``sudo -n ``
    prefix where the file belongs to root."""
    tmp = f"{path}.restore-tmp"
    inner = f"base64 --decode > {q(tmp)} && chmod 644 {q(tmp)} && mv -f {q(tmp)} {q(path)}"
    t.sh(f"printf %s {q(b64)} | {root}sh -c {q(inner)}")
