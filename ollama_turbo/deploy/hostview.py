"""What a host runs, read without changing it: its state for ``status``, a view for ``smoke`` (a tunnel,
the service log, the deployed manifest), the K/V its service is configured with and the one it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ollama_turbo.core import poll, server_kv
from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy import adopt
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.record import DeployRecord
from ollama_turbo.deploy.session import open_host
from ollama_turbo.deploy.store import current_manifest, current_record, current_release, previous_release, releases
from ollama_turbo.deploy.transport import q
from ollama_turbo.fork.behaviour import ForkBehaviour, effective
from ollama_turbo.prove import loaded
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.server_log import kv_lines, model_shape


def kv_running(log: str, env_kv: dict[str, str], fb: ForkBehaviour) -> str:
    """What the server last allocated (its KV line), and why it differs from the configuration."""
    lines = kv_lines(log)
    if not lines:
        return "unknown (no llama_kv_cache line in the service log yet: load a model)"
    last = lines[-1]
    text = f"K {last.type_k} V {last.type_v}, {last.cells} cells (service log)"
    pair = server_kv.from_env(env_kv)
    shape = model_shape(log)
    if pair and shape:
        why = effective(pair.k, pair.v, n_layer=shape[0], gqa_ratio=shape[1], fb=fb).explain()
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
    record: Callable[[], DeployRecord | None]


@contextlib.contextmanager
def host_view(host: Host) -> Iterator[HostView]:
    """A view of a host for the length of a ``with`` block: a tunnelled URL, its service log, its deployed
    manifest. The tunnel and the connection close when the block ends, however it ends."""
    with open_host(host) as s:
        t, layout = s.t, s.layout
        if current_release(t, layout) is None:
            raise DeployError(f"{host.name} has no current release under {layout.prefix}: nothing was deployed "
                              "there", hint=f"invoke deploy --host {host.name}; or point --url at a running server")

        with t.forward(host.port, host.probe_host) as url:
            yield HostView(url, lambda: t.read(layout.log), lambda: current_manifest(t, layout, host),
                           lambda: current_record(t, layout, host))


def deployed_manifest(host: Host) -> Manifest | None:
    """The manifest of the build a host runs now (None: nothing deployed, or unreadable)."""
    try:
        with open_host(host) as s:
            return current_manifest(s.t, s.layout, host)
    except (TurboError, OSError):
        return None


def status(settings: Settings, host: Host) -> dict[str, Any]:
    with open_host(host) as s:
        t, layout, mgr = s.t, s.layout, s.mgr
        current = current_release(t, layout)
        deployed = current_manifest(t, layout, host) if current else None
        rec = current_record(t, layout, host) if current else None
        config = t.sh(f"cat {q(mgr.config_path)} 2>/dev/null", check=False).stdout
        with t.forward(host.port, host.probe_host) as url:

            def version() -> str | None:
                try:
                    return str(requests.get(f"{url}/api/version", timeout=3).json().get("version"))
                except (requests.RequestException, ValueError):
                    return None

            served = poll.until(version, interval=0.1, tries=20)  # the tunnel takes a moment to accept
            env_kv = {k: v for k, v in config_env(config, host.service).items() if k in server_kv.NAMES}
            log = t.sh(f"tail -n 20000 {q(layout.log)} 2>/dev/null", check=False).stdout
            default = server_kv.from_env(env_kv) or KVPair("f16", "f16")
            models: list[dict[str, Any]] = []
            if served:
                with contextlib.suppress(ApiError, requests.RequestException):
                    models = [x.to_json() for x in loaded.loaded_models(Client(url, timeout=10), log,
                                                                         default)]
        fork = rec.fork if rec else settings.kv.fork
        stock = adopt.read_record(s)
        return {"host": host.name, "service": host.service, "state": mgr.state(), "current": current,
                "serving": served, "previous": previous_release(t, layout),
                "releases": releases(t, layout), "kv_cache": env_kv,
                "deployed": _deployed(rec, settings) if current else None,
                "kv_running": kv_running(log, env_kv, fork),
                "loaded": models, "prefix": layout.prefix,
                "adopted": {**stock.to_json(), "text": f"adopted stock Ollama ({stock.describe()})",
                            "config_b64": None} if stock else None,
                "not_supported": [f"models of {f} (left out of this build)" for f in deployed.left_out]
                if deployed else []}


def _deployed(rec: DeployRecord | None, settings: Settings) -> dict[str, Any]:
    """The host's deploy record as status shows it, with where today's settings differ from it."""
    if rec is None:
        return {"record": None, "note": "no deploy record in the current release (deployed by an older "
                                        "ollama-turbo): what the host was given is read from its service config"}
    return {"record": rec.to_json(), "differs": rec.differs_from(settings), "problems": list(rec.problems)}


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
