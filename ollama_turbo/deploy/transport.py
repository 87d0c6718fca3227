"""How deploy reaches a host: SSH through Fabric, or the machine you are on.

SSH uses the user's ``~/.ssh/config`` and agent. Host key checking stays on: Fabric would add
unknown keys silently, so an unknown host is an error that shows the key's fingerprint and
how to trust it. ``TURBO_SSH_CONFIG`` and ``TURBO_KNOWN_HOSTS`` point at other files.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ollama_turbo.core import proc
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.ports import free_port


class TransportError(TurboError):
    pass


Out = proc.Result


NETWORK_HINT = "check the host and the network; the deploy was rolled back where it could be"


def command_deadline(timeout: float | None) -> float | None:
    """A remote command's deadline: its own, capped by TURBO_SSH_COMMAND_TIMEOUT (seconds) where set."""
    raw = os.environ.get("TURBO_SSH_COMMAND_TIMEOUT", "")
    if not raw:
        return timeout
    try:
        cap = float(raw)
    except ValueError:
        cap = 0.0
    if not cap > 0:
        raise UsageError(f"TURBO_SSH_COMMAND_TIMEOUT={raw!r} is not a positive number of seconds",
                         hint="unset it, or give one such as TURBO_SSH_COMMAND_TIMEOUT=30")
    return cap if timeout is None else min(timeout, cap)


class Transport(Protocol):
    name: str

    def sh(self, script: str, *, check: bool = True, timeout: float | None = 120) -> Out: ...
    def put(self, local: Path, remote: str) -> None: ...
    def read(self, remote: str) -> str: ...
    def write(self, remote: str, text: str) -> None: ...
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> contextlib.AbstractContextManager[str]: ...
    def close(self) -> None: ...


def url_host(host: str) -> str:
    """A host as a URL writes it (IPv6 in brackets)."""
    return f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host


def q(*parts: str) -> str:
    """Quote words for the remote POSIX shell."""
    return shlex.join(parts)


class LocalTransport:
    """The machine we are running on."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def sh(self, script: str, *, check: bool = True, timeout: float | None = 120) -> Out:
        out = r = proc.run(["/bin/sh", "-c", script], check=False, timeout=timeout)
        if check and not out.ok:
            raise TransportError(f"{self.name}: command failed ({r.returncode}): {script[:200]}\n"
                                 f"{proc.tail(r.stderr or r.stdout, 10)}")
        return out

    def put(self, local: Path, remote: str) -> None:
        import shutil

        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, remote)

    def read(self, remote: str) -> str:
        return Path(os.path.expanduser(remote)).read_bytes().decode("utf-8", errors="replace")

    def write(self, remote: str, text: str) -> None:
        """Write-temp-then-rename: a reader (launchd, systemd, the next deploy) never sees half a file."""
        p = Path(os.path.expanduser(remote))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, p)

    @contextlib.contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[str]:
        """The base URL of the server listening on ``remote_host:remote_port``."""
        yield f"http://{url_host(remote_host)}:{remote_port}"

    def close(self) -> None:
        pass


class _Reject:
    """A missing-host-key policy that refuses and remembers the key it was offered."""

    def __init__(self) -> None:
        self.offered: Any = None

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        self.offered = (hostname, key)
        raise _UnknownHost(hostname, key)


class _UnknownHost(Exception):
    def __init__(self, hostname: str, key: Any) -> None:
        super().__init__(hostname)
        self.hostname, self.key = hostname, key


def fingerprint(key: Any) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class SSHTransport:
    def __init__(self, name: str, target: str, *, timeout: float = 15) -> None:
        from fabric import Config, Connection

        self.name = name
        cfg_path = os.environ.get("TURBO_SSH_CONFIG")
        config = Config(runtime_ssh_path=cfg_path) if cfg_path else Config()
        if cfg_path:
            config.load_ssh_config()
        self.conn = Connection(target, config=config, connect_timeout=timeout)
        self.policy = _Reject()
        client = self.conn.client
        client.set_missing_host_key_policy(self.policy)
        with contextlib.suppress(OSError):
            client.load_system_host_keys()
        known = os.environ.get("TURBO_KNOWN_HOSTS")
        if known:
            client.load_host_keys(known)
        self._open()

    def _open(self) -> None:
        try:
            self.conn.open()
        except _UnknownHost as exc:
            port = self.conn.port
            shown = f"[{self.conn.host}]:{port}" if port != 22 else self.conn.host
            raise TransportError(
                f"{self.name}: the host key of {shown} is not known "
                f"({exc.key.get_name()} {fingerprint(exc.key)}); refusing to connect",
                hint=f"check the fingerprint with the host's owner, then trust it: ssh-keyscan -p {port} "
                     f"{self.conn.host} >> ~/.ssh/known_hosts (or connect once with: ssh -p {port} "
                     f"{self.conn.user}@{self.conn.host})") from None
        except Exception as exc:  # paramiko and socket errors have no common base worth naming
            raise TransportError(f"{self.name}: cannot connect to {self.conn.user}@{self.conn.host}:"
                                 f"{self.conn.port}: {exc.__class__.__name__}: {exc}",
                                 hint="check turbo.hosts.<name>.ssh, your ~/.ssh/config and agent") from None

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """A dropped or stalled connection is a TransportError (so deploy rolls back), never a traceback."""
        from invoke.exceptions import CommandTimedOut

        try:
            yield
        except TurboError:
            raise
        except CommandTimedOut as exc:  # a command timeout from the user's Fabric configuration
            raise TransportError(f"{self.name}: no answer within {exc.timeout} s during {what}",
                                 hint=NETWORK_HINT) from None
        except (OSError, EOFError, Exception) as exc:  # paramiko's errors have no base worth naming
            raise TransportError(f"{self.name}: the connection failed during {what}: "
                                 f"{exc.__class__.__name__}: {exc}", hint=NETWORK_HINT) from None

    def sh(self, script: str, *, check: bool = True, timeout: float | None = 120) -> Out:
        what = f"'{script[:60]}'"
        with self._guard(what):
            r = self._run(script, command_deadline(timeout), what)
        out = Out([script], r.exited, r.stdout, r.stderr)
        if check and not out.ok:
            raise TransportError(f"{self.name}: remote command failed ({r.exited}): {script[:200]}\n"
                                 f"{proc.tail(r.stderr or r.stdout, 10)}")
        return out

    def _run(self, script: str, timeout: float | None, what: str) -> Any:
        """Run with a deadline of our own: a stalled connection never answers, so Fabric's command timeout
        (which asks the host to close the channel) waits as long as the stall; here the connection is closed."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["r"] = self.conn.run(script, hide=True, warn=True, in_stream=False)
            except BaseException as exc:  # re-raised in the caller's thread
                box["e"] = exc

        th = threading.Thread(target=work, daemon=True)
        th.start()
        th.join(timeout)
        if th.is_alive():
            with contextlib.suppress(Exception):
                self.conn.close()
            th.join(5)
            raise TransportError(f"{self.name}: no answer within {timeout:g} s during {what}", hint=NETWORK_HINT)
        if "e" in box:
            raise box["e"]
        return box["r"]

    def put(self, local: Path, remote: str) -> None:
        with self._guard(f"the upload of {local.name}"):
            self.conn.put(str(local), remote)

    def read(self, remote: str) -> str:
        return self.sh(q("cat", remote), timeout=60).stdout

    def write(self, remote: str, text: str) -> None:
        """Write-temp-then-rename on the host: launchd or systemd never loads half a file."""
        import io

        tmp = f"{remote}.tmp-{os.getpid()}"
        self.sh(q("mkdir", "-p", os.path.dirname(remote) or "."))
        with self._guard(f"the write of {remote}"):
            self.conn.put(io.BytesIO(text.encode()), tmp)
        self.sh(q("mv", "-f", tmp, remote))

    @contextlib.contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[str]:
        """A tunnel from a local port to ``remote_host:remote_port`` as the host sees it; yields its base URL."""
        local_port = free_port()
        with self._guard(f"the tunnel to {remote_host}:{remote_port}"):
            tunnel = self.conn.forward_local(local_port, remote_port=remote_port,
                                             remote_host=remote_host.strip("[]"))
            tunnel.__enter__()
        try:
            yield f"http://127.0.0.1:{local_port}"  # what the caller does here keeps its own errors
        finally:
            with contextlib.suppress(Exception):
                tunnel.__exit__(None, None, None)

    def close(self) -> None:
        self.conn.close()


def connect(name: str, ssh: str) -> Transport:
    if ssh in ("", "local"):
        return LocalTransport(name)
    return SSHTransport(name, ssh)
