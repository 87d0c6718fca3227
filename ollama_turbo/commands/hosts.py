"""Tasks that change or read a host: deploy, rollback, status, uninstall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invoke.exceptions import Exit

from ollama_turbo.commands.base import settings, specs_dir, turbo_task, write_json
from ollama_turbo.core.errors import UsageError


@turbo_task(
    host="a host under turbo.hosts",
    hosts="a rolling deploy to these hosts, comma-separated: the first is the canary",
    group="a rolling deploy to the hosts of this group (turbo.groups)",
    batch="rolling deploy: hosts per wave after the canary (default 2)",
    dist="the build to deploy (default: the newest in <workspace>/dist)",
    dry_run="print the plan (files to send, service config diff, commands) and change nothing",
    specs="Modelfile specs to create on the host after the switch (default: modelfiles/ in the project; with "
          "none, the server is deployed without models)",
    accept_unmeasured="deploy a K/V config that invoke quality has not measured for the host's models",
    adopt_loaded="take over a stock Ollama even while it has models loaded (they are unloaded; whoever uses them "
                 "is cut off)",
    json="write the result as JSON to this file",
    verbose="echo every command",
)
def deploy(c, host="", hosts="", group="", batch=2, dist="", dry_run=False, specs="", accept_unmeasured=False,
           adopt_loaded=False, json="", verbose=False):
    """Install a build as a service on a host (or a fleet, canary first), switch atomically, verify, roll back."""
    from ollama_turbo.deploy import dists, releases, rolling

    s = settings(c)
    if hosts or group:
        if host:
            raise UsageError("give --host, or --hosts / --group for a rolling deploy, not both",
                             hint="one host: --host H; a rolling deploy: --hosts a,b,c or --group NAME")
        names = rolling.hosts_for(s, hosts, group)
        d = Path(dist) if dist else dists.latest_dist(s)
        out = rolling.rollout(s, names, d, batch=int(batch), dry_run=dry_run, specs_dir=user_specs(c, specs),
                              accept_unmeasured=accept_unmeasured)
        print(out.render())
        write_json(json, out.to_json())
        if not out.ok:
            raise Exit(f"error: rolling deploy stopped at {out.stopped_at}: "
                       + next(o.error for o in out.outcomes if o.host == out.stopped_at), code=1)
        return
    if not host:
        raise UsageError("give --host H (or --hosts / --group for a rolling deploy)",
                         hint="name a host under turbo.hosts (settings-show --key hosts lists them)")
    target = s.host(host)  # an unknown host is named before anything else is looked at
    d = Path(dist) if dist else dists.latest_dist(s)
    r = releases.deploy(s, target, d, dry_run=dry_run, specs_dir=user_specs(c, specs),
                        accept_unmeasured=accept_unmeasured, adopt_loaded=adopt_loaded)
    print(r.render(host))
    write_json(json, r.to_json())


def user_specs(c: Any, given: str) -> Path | None:
    """The user's specs for a deploy; with none, the deploy says so and serves no models."""
    folder, why = specs_dir(c, given)
    if folder is None:
        print(f"{why}: the server is deployed with no models (to add one: invoke spec-init --from MODEL)")
    return folder


@turbo_task(host="a host under turbo.hosts", to="the release to go back to (default: the previous one)",
            dry_run="say which release it would switch to, and change nothing",
            json="write the result as JSON to this file")
def rollback(c, host, to="", dry_run=False, json=""):
    """Switch a host back to the previous (or a given) release and restart it."""
    from ollama_turbo.deploy.rollback import rollback as roll_back

    s = settings(c)
    r = roll_back(s, s.host(host), to or None, dry_run=dry_run)
    if dry_run:
        print(f"would switch {host} from {r['from']} to {r['to']} and restart it; dry run: nothing was changed")
    else:
        print(f"{host} now serves {r['to']} (was {r['from']}); downtime {r['downtime_s']:.2f} s")
    write_json(json, r)


@turbo_task(host="a host under turbo.hosts", json="write the status as JSON to this file")
def status(c, host, json=""):
    """Current and previous releases, service state and KV cache type of a host."""
    from ollama_turbo.deploy import hostview

    st = hostview.status(settings(c), settings(c).host(host))
    for key in ("host", "service", "state", "current", "serving", "previous", "releases", "kv_cache", "kv_running",
                "prefix"):
        value = st[key]
        print(f"{key:<10} {', '.join(value) if isinstance(value, list) else value}")
    dep = st.get("deployed") or {}
    rec = dep.get("record")
    if rec:
        own = ", ".join(f"{n} {m['kv']}" for n, m in rec["models"].items() if m["own"])
        print(f"{'deployed':<10} server K/V {rec['server_kv']}" + (f"; models with their own: {own}" if own else "")
              + f" (deploy record, {rec['deployed_at']}, ollama-turbo {rec['toolkit']})")
    elif dep.get("note"):
        print(f"{'deployed':<10} {dep['note']}")
    for d in [*dep.get("differs", []), *dep.get("problems", [])]:
        print(f"{'NOTE':<10} {d}")
    if st.get("adopted"):
        print(f"{'adopted':<10} {st['adopted']['text']}; invoke uninstall --host {host} gives it back")
    for f in st.get("not_supported") or []:
        print(f"{'unsupported':<10} {f}")
    for i, m in enumerate(st.get("loaded") or []):
        print(f"{'loaded' if i == 0 else '':<10} {m['name']}: ctx {m['context_length']:,}, K/V {m['configured']} "
              f"({'its own kv_cache_type' if m['source'] == 'model' else 'host default'}); running {m['running']}")
    write_json(json, st)


@turbo_task(host="a host under turbo.hosts",
            dry_run="print what would be stopped, restored and removed; change nothing",
            json="write the result as JSON to this file")
def uninstall(c, host, dry_run=False, json=""):
    """Remove ollama-turbo from a host and give back the stock Ollama it took over, as it was; models untouched."""
    from ollama_turbo.deploy.uninstall import uninstall as remove

    s = settings(c)
    r = remove(s.host(host), dry_run=dry_run)
    print(r.render())
    write_json(json, r.to_json())
