"""Which server produced a measurement, from that server's own answers and log: the build (``/api/version``), the
model (``/api/ps``) and the K/V cache it runs (its command line and ``llama_kv_cache`` line). Checked before a
config is measured and again after, so a number is never filed under a label it does not belong to."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.prove import smoke
from ollama_turbo.prove.client import Endpoint
from ollama_turbo.prove.ollama_api import Client


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: cannot be told (no log to read)
    evidence: str

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "evidence": self.evidence}


def check(ep: Endpoint, fork: ForkBehaviour, *, when: str) -> Verdict:
    """Is the server at ``ep.url`` the build, model and K/V its label says? ``when`` ("before", "after") is said
    in the evidence."""
    found: list[str] = []
    model_path = None
    try:
        if ep.api == "ollama":
            c = Client(ep.url, timeout=30)
            served = c.version()
            if ep.build and served != ep.build:
                return Verdict(False, f"{when}: {ep.url} serves Ollama {served}, the label's build is {ep.build}")
            found.append(f"/api/version {served}")
            loaded = [m.get("name", "") for m in c.get("/api/ps").get("models", [])]
            if ep.model and not {ep.model, f"{ep.model}:latest"} & set(loaded):
                return Verdict(False, f"{when}: {ep.model} is not loaded on {ep.url} (/api/ps: "
                                      f"{', '.join(loaded) or 'nothing'})")
            model_path = smoke.model_file(c.post("/api/show", {"model": ep.model})) if ep.model else None
    except ValueError as exc:  # an answer, but not Ollama's (unreachable servers are faults, raised as they are)
        return Verdict(False, f"{when}: {ep.url} did not answer as an Ollama server ({exc})")
    if ep.log is None:
        return Verdict(None, f"{when}: " + "; ".join([*found, "no server log: the K/V it runs is not checked "
                                                              "(give its log)"]))
    ok, evidence = smoke.cache_type_from_log(ep.log(), ep.type_k, ep.type_v, ep.era if ep.api == "ollama" else "B",
                                             ep.fork or fork, model_path=model_path)
    if not ok:
        return Verdict(False, f"{when}: the label says {ep.label}, the server's log shows {evidence}")
    return Verdict(True, f"{when}: " + "; ".join([*found, evidence]))
