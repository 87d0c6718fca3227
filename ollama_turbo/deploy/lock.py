"""A host's deploy lock: one deploy (or bench, or rollback) at a time changes a host."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Callable, Iterator

from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.services import Layout
from ollama_turbo.deploy.transport import Transport, TransportError, q

Say = Callable[[str], None]


STALE_LOCK_S = 15 * 60


def lock_owner() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} at {dt.datetime.now().isoformat(timespec='seconds')}"


@contextlib.contextmanager
def host_lock(t: Transport, layout: Layout, say: Say, me: str | None = None, *,
              recovers: bool = False) -> Iterator[None]:
    """The host's deploy lock. With ``recovers`` a lost connection leaves it held: the caller's recovery
    keeps it until the host is safe again, then drops it."""
    me = me or lock_owner()
    t.sh(f"mkdir -p {q(layout.prefix)}")
    for attempt in range(2):
        r = t.sh(f"mkdir {q(layout.lock)} && printf %s {q(me)} > {q(layout.lock + '/owner')}", check=False)
        if r.ok:
            break
        owner = t.sh(f"cat {q(layout.lock + '/owner')} 2>/dev/null", check=False).stdout.strip() or "unknown"
        age = t.sh(f"echo $(( $(date +%s) - $(stat -c %Y {q(layout.lock)} 2>/dev/null || "
                   f"stat -f %m {q(layout.lock)}) ))", check=False).stdout.strip()
        if attempt == 0 and age.isdigit() and int(age) > STALE_LOCK_S:
            say(f"WARNING: breaking a stale deploy lock ({owner}, {int(age) // 60} min old)")
            # rename first: of two deployers breaking the same stale lock, only one rename succeeds
            stale = f"{layout.lock}.stale-{os.getpid()}"
            if t.sh(f"mv {q(layout.lock)} {q(stale)}", check=False).ok:
                t.sh(f"rm -rf {q(stale)}", check=False)
            continue
        raise DeployError(f"another deploy holds the lock on this host: {owner}",
                          hint=f"wait for it; if none is running, remove {layout.lock} on the host")
    keep = False
    try:
        yield
    except TransportError:
        keep = recovers
        raise
    finally:
        if not keep:
            with contextlib.suppress(TransportError):
                t.sh(f"rm -rf {q(layout.lock)}", check=False)
