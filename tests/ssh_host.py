"""A real sshd on 127.0.0.1 for deploy tests, logging in as a test account of this run's own.

The fixture generates a host key and a client key, writes a private sshd_config (its own
port, no passwords, no PAM), creates an account for this test process alone (``turbot-<pid>``)
with a fresh home whose PATH carries the strict launchctl emulator, and hands the client an
ssh_config + known_hosts through TURBO_SSH_CONFIG / TURBO_KNOWN_HOSTS. Two test runs on one
machine (a developer's and CI's) each have their own account, home, port and servers: stopping
one kills nothing of the other. Accounts left by runs that died are removed at the next start.
Creating accounts needs root (CI runs as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ollama_turbo.core import proc
from ollama_turbo.core.ports import free_port

PREFIX = "turbot-"  # the accounts of test runs: PREFIX + the pid of the run's process [+ "-" + a host name]
SSHD = "/usr/sbin/sshd"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(user: str) -> None:
    """End the account's processes and delete it."""
    subprocess.run(["pkill", "-KILL", "-u", user], check=False)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", user], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", user], check=False, capture_output=True)


def reap_stale() -> list[str]:
    """Remove the accounts of test runs whose process is gone (killed before they could clean up)."""
    def pid(name: str) -> str:
        return name[len(PREFIX):].split("-")[0]

    stale = [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(PREFIX)
             and pid(p.pw_name).isdigit() and not _alive(int(pid(p.pw_name)))]
    for user in stale:
        _remove(user)
    return stale


@dataclass
class SSHHost:
    alias: str
    port: int
    home: Path
    user: str
    uid: int
    ssh_config: Path
    known_hosts: Path
    process: object

    def env(self) -> dict[str, str]:
        return {"TURBO_SSH_CONFIG": str(self.ssh_config), "TURBO_KNOWN_HOSTS": str(self.known_hosts)}


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "deploy over SSH needs root to create the test account"
    if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
        return "openssh-server is not installed (ci/system-deps.sh installs it)"
    return None


def start(emulator: Path, name: str = "", alias: str = "turbo-test") -> SSHHost:
    """A host of this process: ``name`` tells apart several hosts of one process (each its own account)."""
    root = Path(tempfile.mkdtemp(prefix="turbo-ssh-", dir="/tmp"))
    root.chmod(0o755)
    home = root / "home"
    reap_stale()
    user = f"{PREFIX}{os.getpid()}" + (f"-{name}" if name else "")
    try:
        pwd.getpwnam(user)  # this process's own account, from an earlier fixture of the same run
    except KeyError:
        proc.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "--home-dir", str(home), user])
    proc.run(["usermod", "-p", "*", "-d", str(home), user])
    info = pwd.getpwnam(user)
    (home / ".ssh").mkdir(parents=True)
    (home / "bin").mkdir()
    shutil.copy(emulator, home / "bin" / "launchctl")
    (home / "bin" / "launchctl").chmod(0o755)
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host"), "-C", "turbo-test-host"])
    proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client"), "-C", "turbo-test"])
    shutil.copy(keys / "client.pub", home / ".ssh" / "authorized_keys")
    for p in [home, *home.rglob("*")]:
        os.chown(p, info.pw_uid, info.pw_gid)
    (home / ".ssh").chmod(0o700)
    port = free_port()
    cfg = root / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {home / '.ssh' / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers {user}
AllowTcpForwarding yes
SetEnv PATH={home / 'bin'}:/usr/local/bin:/usr/bin:/bin
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    p = proc.spawn([SSHD, "-D", "-e", "-f", str(cfg)], log=root / "sshd.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if p.poll() is not None:
            raise RuntimeError("sshd exited: " + (root / "sshd.log").read_text())
        time.sleep(0.05)
    host_pub = (keys / "host.pub").read_text().split()
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    ssh_config = root / "ssh_config"
    ssh_config.write_text(f"""Host {alias}
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {keys / 'client'}
    IdentitiesOnly yes
""")
    return SSHHost(alias, port, home, user, info.pw_uid, ssh_config, known, p)


def stop(h: SSHHost) -> None:
    proc.run(["pkill", "-u", h.user], check=False)
    proc.stop(h.process)  # type: ignore[arg-type]
    time.sleep(0.2)
    _remove(h.user)
