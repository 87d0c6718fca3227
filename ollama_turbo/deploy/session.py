"""A session on one host, opened in one place: the connection, the host's layout and its service manager; the
connection closes when the session ends, however it ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ollama_turbo.core.settings import Host
from ollama_turbo.deploy.managers import manager_for
from ollama_turbo.deploy.services import Layout, ServiceManager
from ollama_turbo.deploy.store import layout_of
from ollama_turbo.deploy.transport import Transport, connect


@dataclass
class HostSession:
    host: Host
    t: Transport
    layout: Layout
    mgr: ServiceManager


def session_on(t: Transport, host: Host) -> HostSession:
    """A session over a connection already open (a reconnection, a caller's own)."""
    layout = layout_of(t, host)
    return HostSession(host, t, layout, manager_for(t, host, layout))


@contextlib.contextmanager
def open_host(host: Host) -> Iterator[HostSession]:
    t = connect(host.name, host.ssh)
    try:
        yield session_on(t, host)
    finally:
        with contextlib.suppress(Exception):
            t.close()
