"""The host platforms a deploy knows: each service manager, the operating system it runs on, and where the
stock Ollama (as Ollama's own installers leave it) lives there. Settings validate ``turbo.hosts.<name>.os`` and
``.service`` against this table; the deploy's service managers are looked up by the same names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    service: str                      # turbo.hosts.<name>.service
    os: tuple[str, ...]               # the operating systems it runs on
    what: str                         # how a person calls it
    stock: tuple[str, ...] = ()       # where the stock Ollama's service config is found (~ is the login's home)


PLATFORMS: dict[str, Platform] = {
    "launchd": Platform("launchd", ("darwin",), "a launchd LaunchAgent",
                        stock=("~/Library/LaunchAgents/homebrew.mxcl.ollama.plist",
                               "~/Library/LaunchAgents/com.ollama.ollama.plist",
                               "~/Library/LaunchAgents/com.ollama.*.plist")),
    "systemd": Platform("systemd", ("linux",), "a systemd unit",
                        stock=("/etc/systemd/system/ollama.service",)),
    "none": Platform("none", ("darwin", "linux"), "a detached process with a pidfile"),
}

HOST_OS = tuple(sorted({o for p in PLATFORMS.values() for o in p.os}))
SERVICES = tuple(PLATFORMS)


def default_service(os_: str) -> str:
    """The service manager a host of ``os_`` gets when its settings name none."""
    return next(p.service for p in PLATFORMS.values() if os_ in p.os and p.stock)


def runs_on(service: str, os_: str) -> str | None:
    """Why ``service`` cannot run on ``os_`` (None: it can)."""
    p = PLATFORMS[service]
    return None if os_ in p.os else f"{service} runs only on os: {', '.join(p.os)}"
