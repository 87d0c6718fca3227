"""What a host runs, read without changing it: its state for ``status``, a view for ``smoke`` (a tunnel,
the service log, the deployed manifest), the K/V its service is configured with and the one it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ollama_turbo.core import poll
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.services import Manager
from ollama_turbo.deploy.store import current_manifest, current_release, layout_of, previous_release, releases
from ollama_turbo.deploy.transport import connect, q
from ollama_turbo.fork.behaviour import ForkBehaviour, effective
from ollama_turbo.prove import loaded
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.server_log import kv_lines, model_shape


def env_pair(env_kv: dict[str, str]) -> tuple[str | None, str | None]:
    """The K/V pair a service's environment gives its llama-servers (LLAMA_ARG_* win over OLLAMA_KV_CACHE_TYPE)."""
    one = env_kv.get("OLLAMA_KV_CACHE_TYPE")
    return env_kv.get("LLAMA_ARG_CACHE_TYPE_K") or one, env_kv.get("LLAMA_ARG_CACHE_TYPE_V") or one


def kv_running(log: str, env_kv: dict[str, str], fb: ForkBehaviour) -> str:
    """What the server last allocated (its KV line), and why it differs from the configuration."""
    lines = kv_lines(log)
    if not lines:
        return "unknown (no llama_kv_cache line in the service log yet: load a model)"
    last = lines[-1]
    text = f"K {last.type_k} V {last.type_v}, {last.cells} cells (service log)"
    k, v = env_pair(env_kv)
    shape = model_shape(log)
    if k and v and shape:
        why = effective(k, v, n_layer=shape[0], gqa_ratio=shape[1], fb=fb).explain()
        if why:
            text += f"; {why}"
    return text


def config_env(text: str, service: str) -> dict[str, str]:
    """The environment a rendered service config gives the server."""
    import plistlib
    import re

    if not text.strip():
        return {}
    if service == "launchd":
        try:
            env = plistlib.loads(text.encode()).get("EnvironmentVariables", {})
            return {str(k): str(v) for k, v in env.items()}
        except (plistlib.InvalidFileException, ValueError):
            return {}
    pattern = r'^Environment="([^=]+)=(.*)"$' if service == "systemd" else r"^([A-Z_][A-Z0-9_]*)=(.*)$"
    return dict(re.findall(pattern, text, re.M))


@dataclass
class HostView:
    url: str
    read_log: Callable[[], str]
    current_manifest: Callable[[], Manifest | None]


@contextlib.contextmanager
def host_view(host: Host) -> Iterator[HostView]:
    """A view of a host for the length of a ``with`` block: a tunnelled URL, its service log, its deployed
    manifest. The tunnel and the connection close when the block ends, however it ends."""
    t = connect(host.name, host.ssh)
    try:
        layout = layout_of(t, host)
        if current_release(t, layout) is None:
            raise DeployError(f"{host.name} has no current release under {layout.prefix}: nothing was deployed "
                              "there", hint=f"invoke deploy --host {host.name}; or point --url at a running server")

        with t.forward(host.port, host.probe_host) as url:
            yield HostView(url, lambda: t.read(layout.log), lambda: current_manifest(t, layout, host))
    finally:
        t.close()


def deployed_manifest(host: Host) -> Manifest | None:
    """The manifest of the build a host runs now (None: nothing deployed, or unreadable)."""
    t = connect(host.name, host.ssh)
    try:
        return current_manifest(t, layout_of(t, host), host)
    except (TurboError, OSError):
        return None
    finally:
        t.close()


def status(settings: Settings, host: Host) -> dict[str, Any]:
    t = connect(host.name, host.ssh)
    try:
        layout = layout_of(t, host)
        mgr = Manager(t, host, layout)
        current = current_release(t, layout)
        deployed = current_manifest(t, layout, host) if current else None
        kv = deployed.data.get("kv") if deployed else None
        config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
        with t.forward(host.port, host.probe_host) as url:

            def version() -> str | None:
                try:
                    return str(requests.get(f"{url}/api/version", timeout=3).json().get("version"))
                except (requests.RequestException, ValueError):
                    return None

            served = poll.until(version, interval=0.1, tries=20)  # the tunnel takes a moment to accept
            env_kv = {k: v for k, v in config_env(config, host.service).items()
                      if k in ("OLLAMA_KV_CACHE_TYPE", "LLAMA_ARG_CACHE_TYPE_K", "LLAMA_ARG_CACHE_TYPE_V")}
            log = t.sh(f"tail -n 20000 {q(layout.log)} 2>/dev/null", check=False).stdout
            default_k, default_v = env_pair(env_kv)
            models: list[dict[str, Any]] = []
            if served:
                with contextlib.suppress(ApiError, requests.RequestException):
                    models = [x.to_json() for x in loaded.loaded_models(Client(url, timeout=10), log,
                                                                         (default_k or "f16", default_v or "f16"))]
        return {"host": host.name, "service": host.service, "state": mgr.state(), "current": current,
                "serving": served, "previous": previous_release(t, layout),
                "releases": releases(t, layout), "kv_cache": env_kv or kv,
                "kv_running": kv_running(log, env_kv, settings.kv.fork),
                "loaded": models, "prefix": layout.prefix,
                "not_supported": [f"models of {f} (left out of this build)" for f in deployed.left_out]
                if deployed else []}
    finally:
        t.close()


def wait_version(url: str, version: str, timeout: float) -> tuple[bool, str]:
    last = ["no answer"]

    def serving() -> str | None:
        try:
            if requests.get(url + "/", timeout=2).status_code == 200:
                v = requests.get(url + "/api/version", timeout=2).json().get("version")
                if v == version:
                    return f"/api/version = {v}"
                last[0] = f"/api/version = {v}, expected {version}"
        except (requests.RequestException, ValueError) as exc:
            last[0] = f"{exc.__class__.__name__}"
        return None

    found = poll.until(serving, interval=0.05, timeout=timeout)
    if found:
        return True, found
    return False, f"not serving {version} after {timeout:.0f} s ({last[0]})"
