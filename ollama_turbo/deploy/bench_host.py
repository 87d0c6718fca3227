"""``bench --host``: per cache type, the host's service rewritten to that type and restarted (under the
host's lock), measured, and restored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ollama_turbo.core.errors import TurboError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.core.settings import Host, Settings
from ollama_turbo.deploy.adopt import carried_env
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.hostview import wait_version
from ollama_turbo.deploy.lock import host_lock
from ollama_turbo.deploy.services import render, service_env
from ollama_turbo.deploy.session import open_host
from ollama_turbo.deploy.store import current_manifest, current_record, current_release
from ollama_turbo.deploy.transport import Transport
from ollama_turbo.fork.cache_types import label
from ollama_turbo.prove.client import Endpoint


def _logged(t: Transport, path: str) -> int:
    """How much the service log holds now (0 when there is none yet)."""
    try:
        return len(t.read(path))
    except (OSError, TurboError):
        return 0


def bench_targets(settings: Settings, host: Host, pairs: list[KVPair], model: str,
                  say: Callable[[str], None] = print) -> list[Any]:
    """For bench --host: per cache type, rewrite the service's KV setting, restart, and restore it after. The rest
    of the service (flash attention, the fork's knobs, the server's variables) is what the host was deployed with
    (its deploy record), not today's settings."""
    def starter(k: str, v: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        @contextlib.contextmanager
        def start() -> Iterator[Any]:
            with open_host(host) as s:
                t, layout, mgr = s.t, s.layout, s.mgr
                if current_release(t, layout) is None:
                    raise DeployError(f"{host.name} has no current release under {layout.prefix}: nothing to bench",
                                      hint=f"invoke deploy --host {host.name} first")
                # the host's lock, held from the rewrite to the restore: a deploy cannot run in between
                with host_lock(t, layout, print):
                    m = current_manifest(t, layout, host)
                    if m is None:
                        raise DeployError(f"{host.name}: the current release has no readable manifest.json",
                                          hint=f"deploy again: invoke deploy --host {host.name}")
                    original = t.read(mgr.config_path)
                    deployed = current_record(t, layout, host)
                    if deployed is None:
                        say(f"NOTE: {host.name} has no deploy record (deployed by an older ollama-turbo): its service "
                            "is rendered from today's settings (turbo.kv.env, flash attention)")
                    cache = deployed.cache() if deployed else settings.kv
                    try:
                        mgr.install(render(host, layout, service_env(cache, host, layout, m.era, KVPair(k, v),
                                                                     carried_env(s, cache))))
                        start = _logged(t, layout.log)
                        mgr.restart()
                        with t.forward(host.port, host.probe_host) as url:
                            ok, why = wait_version(url, m.version, host.health_timeout)
                            if not ok:
                                raise DeployError(f"{host.name} with {k}/{v}: {why}")
                            # the evidence of this config is what its server logged from its restart on
                            yield Endpoint(label(k, v), k, v, url, "ollama", model, lambda: t.read(layout.log)[start:],
                                           build=m.version, era=m.era, fork=cache.fork)
                    finally:
                        mgr.install(original)
                        mgr.restart()

        return start

    return [(Endpoint(label(k, v), k, v, "", "ollama", model), starter(k, v)) for k, v in pairs]
