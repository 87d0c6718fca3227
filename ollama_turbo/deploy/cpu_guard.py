"""The CPU variants of a release on one host: the ones the host cannot run left out of its release
(``turbo.hosts.<name>.cpu_exclude``), and the pre-switch probe: the host's CPU flags against the variants the
release ships, and a warm-up of the new release on a staged port, so a server that dies of an illegal instruction
(SIGILL) stops the deploy before the switch, naming the variant and the way out.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from ollama_turbo.core import cpu_variants
from ollama_turbo.core.manifest import Manifest
from ollama_turbo.core.settings import Host
from ollama_turbo.deploy.errors import DeployError
from ollama_turbo.deploy.transport import Transport, q

Say = Callable[[str], None]
WHY = "left out of this host's release (turbo.hosts.{host}.cpu_exclude): its CPU reports the variant's flags " \
      "but cannot run it (SIGILL)"


def for_host(m: Manifest, host: Host) -> Manifest:
    """The build as this host gets it: the CPU variants of ``host.cpu_exclude`` left out of its files (and so of
    the upload, the checks and the manifest the release carries), recorded in its ``cpu_variants`` entry."""
    if not host.cpu_exclude:
        return m
    ex = cpu_variants.exclude(host.cpu_exclude, m.files, key=f"turbo.hosts.{host.name}.cpu_exclude")
    files = {f: d for f, d in m.files.items() if f not in ex.excluded.values()}
    cpu = dict(m.data.get("cpu_variants") or {})
    cpu["host"] = {**ex.to_json(WHY.format(host=host.name)), "host": host.name}
    cpu["shipped"] = list(ex.remaining)
    record = dataclasses.replace(m.record, files=files, cpu_variants=cpu)
    return dataclasses.replace(m, record=record, data={**m.data, "files": files, "cpu_variants": cpu})


def host_excluded(m: Manifest) -> dict[str, Any]:
    """What the deploy record says of the CPU variants: left out by the build, left out for the host, shipped."""
    cpu = m.data.get("cpu_variants") or {}
    if not cpu:
        return {}
    host = cpu.get("host") or {}
    return {"build_excluded": list(cpu.get("excluded") or []), "host_excluded": list(host.get("excluded") or []),
            "shipped": list(cpu.get("shipped") or []), **({"why": host["why"]} if host.get("why") else {})}


def step_text(m: Manifest) -> str:
    present = cpu_variants.variants_in(m.files)
    if not present:
        return "probe: no CPU variant libraries in this build, nothing to probe before the switch"
    return (f"probe the new release before the switch: the host's CPU flags against its {len(present)} CPU variants, "
            "a warm-up generate on a staged port (a SIGILL stops here)")


def cpu_flags(t: Transport, host: Host) -> set[str]:
    cmd = "sysctl machdep.cpu 2>/dev/null" if host.os == "darwin" else "grep -m1 '^flags' /proc/cpuinfo 2>/dev/null"
    return cpu_variants.parse_cpu_flags(t.sh(cmd, check=False).stdout)


def check_flags(present: list[str], flags: set[str], host: str, say: Say) -> None:
    """Say which variant the host's loader is expected to pick, and which it cannot run (by their flags)."""
    if not flags:
        say(f"[{host}] CPU flags not readable: the variant the loader picks is known from the warm-up only")
        return
    pick = cpu_variants.expected_pick(present, flags)
    cannot = [f"{v} (lacks {' '.join(cpu_variants.missing(v, flags))})" for v in present
              if cpu_variants.missing(v, flags)]
    say(f"[{host}] CPU: the loader is expected to pick {pick or 'none of them'}"
        + (f"; not runnable here, skipped by the loader: {', '.join(cannot)}" if cannot else ""))


def probe(t: Transport, host: Host, release: str, log: str, env: list[tuple[str, str]], models: list[str],
          say: Say, timeout: float = 120) -> None:
    """Warm the new release up before the switch: its server on a free port of the host (the service's
    environment, the same models folder), one token from the first of ``models`` already there. A SIGILL (in
    its answer or its log) is a :class:`DeployError` naming the variant; the host is not touched otherwise."""
    present = sorted(cpu_variants.variants_in(t.sh(f"cd {q(release)} && find . -type f", check=False)
                                              .stdout.replace("./", "").split()))
    if not present:
        return
    check_flags(present, cpu_flags(t, host), host.name, say)
    port = _free_port(t, host.port)
    staged = dict(env, OLLAMA_HOST=f"127.0.0.1:{port}")
    t.sh(f"mkdir -p \"$(dirname {q(log)})\"")
    start = ("nohup env "
             + " ".join(q(f"{k}={v}") for k, v in staged.items())
             + f" {q(release + '/bin/ollama')} serve > {q(log)} 2>&1 < /dev/null & echo $!")
    pid = t.sh(start).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        if not _wait(t, url, host.health_timeout):
            text = t.read(log)
            _judge(text, "", host, release)
            last = (text.strip().splitlines() or ["nothing"])[-1][:200]
            say(f"[{host.name}] probe: the new release did not answer on the staged port {port} (its log {log} "
                f"ends: {last}); the restart after the switch checks it")
            return
        tags = t.sh(f"curl -s -m 10 {q(url + '/api/tags')}", check=False).stdout
        names = {m.get("name") for m in _json(tags).get("models", [])}
        model = next((m for m in models if m in names or f"{m}:latest" in names), None)
        if model is None:
            say(f"[{host.name}] probe: none of this deploy's models is on the host yet, so the warm-up runs in the "
                "smoke after the switch")
            return
        body = json.dumps({"model": model, "prompt": "hi", "stream": False, "keep_alive": 0,
                           "options": {"num_predict": 1, "num_ctx": 256}})
        answer = t.sh(f"curl -s -m {int(timeout)} {q(url + '/api/generate')} -d {q(body)}", check=False,
                      timeout=timeout + 10).stdout
        _judge(t.read(log), answer, host, release)
        err = _json(answer).get("error")
        say(f"[{host.name}] probe: {model} warmed up on the staged port {port}" if not err else
            f"[{host.name}] probe: {model} on the staged port {port} answered {str(err)[:200]!r} (not a SIGILL; the "
            "smoke after the switch decides)")
    finally:
        t.sh(f"kill {pid} 2>/dev/null; for i in $(seq 50); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done; "
             f"kill -9 {pid} 2>/dev/null; true", check=False)


def _judge(log: str, answer: str, host: Host, release: str) -> None:
    if cpu_variants.is_sigill(answer) or cpu_variants.is_sigill(log):
        version = release.rstrip("/").rsplit("/", 1)[-1]
        raise DeployError(
            cpu_variants.explain_sigill(log + "\n" + answer, where=f"{version}'s server on {host.name} (pre-switch "
                                                                   "probe)", host=host.name)
            + f"; nothing was switched: {host.name} keeps the release it served",
            hint=f"add the variant to turbo.hosts.{host.name}.cpu_exclude and deploy again "
                 "(docs/cpu-variants.md)")


def _json(text: str) -> dict[str, Any]:
    try:
        out = json.loads(text)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _wait(t: Transport, url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if t.sh(f"curl -s -m 2 {q(url + '/api/version')}", check=False).stdout.strip().startswith("{"):
            return True
        time.sleep(0.3)
    return False


def _free_port(t: Transport, near: int) -> int:
    """A port nothing on the host listens on, above the service's own."""
    for port in range(near + 101, near + 200):
        if port < 65536 and t.sh(f"curl -s -m 1 -o /dev/null -w '%{{http_code}}' "
                                 f"http://127.0.0.1:{port}/", check=False).stdout.strip() in ("", "000"):
            return port
    raise DeployError(f"no free port on the host above {near} for the pre-switch probe",
                      hint="free one of the ports above the service's, or leave the CPU variants out of the build")
