#!/usr/bin/python3
"""A strict stand-in for macOS's launchctl, for deploy tests on Linux (launchd cannot run there).

Supports what deploy uses: bootstrap, bootout, kickstart [-k], print, in the domains gui/<uid>
and user/<uid> of the calling user. It validates the plist with plistlib and launchd's key
types (unknown keys are refused), refuses a second bootstrap of a loaded label with exit 5
like the real one, spawns ProgramArguments with EnvironmentVariables, WorkingDirectory and
the log paths, and keeps its state in ~/.launchctl-emulator/. It does not supervise
(KeepAlive is validated, not enforced).
"""

import json
import os
import plistlib
import signal
import subprocess
import sys
import time

STATE = os.path.expanduser("~/.launchctl-emulator")
KEYS = {
    "Label": str, "ProgramArguments": list, "EnvironmentVariables": dict, "RunAtLoad": bool,
    "KeepAlive": (bool, dict), "ThrottleInterval": int, "ProcessType": str, "WorkingDirectory": str,
    "StandardOutPath": str, "StandardErrorPath": str, "Program": str, "UserName": str,
}
PROCESS_TYPES = {"Background", "Standard", "Adaptive", "Interactive"}


def die(code, message):
    print(message, file=sys.stderr)
    sys.exit(code)


def check_domain(domain):
    kind, _, uid = domain.partition("/")
    if kind not in ("gui", "user") or uid != str(os.getuid()):
        die(125, f"Could not find domain for {domain}: 125: Domain does not support specified action")
    return domain


def split_target(target):
    domain, _, label = target.rpartition("/")
    if not label:
        die(64, f"Unrecognized target specifier: {target}")
    return check_domain(domain), label


def state_path(domain, label):
    return os.path.join(STATE, domain.replace("/", "_"), label + ".json")


def load(domain, label):
    try:
        with open(state_path(domain, label)) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def save(domain, label, st):
    path = state_path(domain, label)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(st, fh)


def validate(plist_path):
    try:
        with open(plist_path, "rb") as fh:
            data = plistlib.load(fh)
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        die(5, f"Bootstrap failed: 5: Input/output error ({plist_path}: {exc})")
    if not isinstance(data, dict):
        die(5, "Bootstrap failed: 5: Input/output error (not a dictionary)")
    for key, value in data.items():
        if key not in KEYS:
            die(5, f"Bootstrap failed: 5: Input/output error (unknown key {key})")
        if not isinstance(value, KEYS[key]):
            die(5, f"Bootstrap failed: 5: Input/output error ({key} has the wrong type)")
    if not data.get("Label"):
        die(5, "Bootstrap failed: 5: Input/output error (no Label)")
    args = data.get("ProgramArguments") or []
    if not args or not all(isinstance(a, str) for a in args):
        die(5, "Bootstrap failed: 5: Input/output error (ProgramArguments must be a non-empty list of strings)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.get("EnvironmentVariables", {}).items()):
        die(5, "Bootstrap failed: 5: Input/output error (EnvironmentVariables must map strings to strings)")
    if "ProcessType" in data and data["ProcessType"] not in PROCESS_TYPES:
        die(5, "Bootstrap failed: 5: Input/output error (bad ProcessType)")
    for key in ("WorkingDirectory", "StandardOutPath", "StandardErrorPath"):
        if key in data and not data[key].startswith("/"):
            die(5, f"Bootstrap failed: 5: Input/output error ({key} must be an absolute path)")
    return data


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def spawn(st):
    cfg = st["config"]
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": os.path.expanduser("~"),
           "USER": os.environ.get("USER", "")}
    env.update(cfg.get("EnvironmentVariables", {}))
    with open(cfg.get("StandardOutPath", "/dev/null"), "ab") as out, \
            open(cfg.get("StandardErrorPath", "/dev/null"), "ab") as err:
        p = subprocess.Popen(cfg["ProgramArguments"], env=env, cwd=cfg.get("WorkingDirectory", "/"), stdout=out,
                             stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    st["pid"] = p.pid
    st["runs"] = st.get("runs", 0) + 1


def stop(st):
    pid = st.get("pid")
    if alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)
        else:
            os.killpg(pid, signal.SIGKILL)
    st["pid"] = None


def main(argv):
    if not argv:
        die(64, "Usage: launchctl <subcommand> ...")
    cmd, args = argv[0], argv[1:]
    if cmd == "bootstrap":
        if len(args) != 2:
            die(64, "Usage: launchctl bootstrap <domain-target> <service-path>")
        domain = check_domain(args[0])
        cfg = validate(args[1])
        label = cfg["Label"]
        if load(domain, label) is not None:
            die(5, "Bootstrap failed: 5: Input/output error")
        st = {"path": os.path.abspath(args[1]), "config": cfg, "pid": None}
        if cfg.get("RunAtLoad"):
            spawn(st)
        save(domain, label, st)
    elif cmd == "bootout":
        if len(args) != 1:
            die(64, "Usage: launchctl bootout <service-target>")
        domain, label = split_target(args[0])
        st = load(domain, label)
        if st is None:
            die(113, "Boot-out failed: 113: Could not find specified service")
        stop(st)
        os.remove(state_path(domain, label))
    elif cmd == "kickstart":
        kill = "-k" in args
        targets = [a for a in args if not a.startswith("-")]
        if len(targets) != 1:
            die(64, "Usage: launchctl kickstart [-k] <service-target>")
        domain, label = split_target(targets[0])
        st = load(domain, label)
        if st is None:
            die(113, "Could not find service")
        if alive(st.get("pid")):
            if not kill:
                return
            stop(st)
        spawn(st)
        save(domain, label, st)
    elif cmd == "print":
        if len(args) != 1:
            die(64, "Usage: launchctl print <domain-target | service-target>")
        domain, label = split_target(args[0])
        st = load(domain, label)
        if st is None:
            die(113, f"Could not find service \"{label}\" in domain for {domain}")
        running = alive(st.get("pid"))
        print(f"{domain}/{label} = {{")
        print("\tactive count = " + ("1" if running else "0"))
        print(f"\tpath = {st['path']}")
        print("\tstate = " + ("running" if running else "not running"))
        print(f"\tprogram = {st['config']['ProgramArguments'][0]}")
        print(f"\truns = {st.get('runs', 0)}")
        if running:
            print(f"\tpid = {st['pid']}")
        print("}")
    else:
        die(64, f"Unrecognized subcommand: {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
