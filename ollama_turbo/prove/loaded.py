"""Which cache each loaded model runs: ``/api/ps`` for what is loaded, ``/api/show`` for the model's own
``kv_cache_type`` and file, the service log for what its llama-server really allocated."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.server_log import kv_lines
from ollama_turbo.prove.smoke import model_file, model_section


@dataclass
class Loaded:
    name: str
    context_length: int
    configured: str   # the K/V the model asks for: its own kv_cache_type, else the host's default
    source: str       # "model" (PARAMETER kv_cache_type) or "host" (OLLAMA_KV_CACHE_TYPE / LLAMA_ARG_*)
    running: str      # what its llama-server allocated (the log's llama_kv_cache line), or why unknown

    def render(self) -> str:
        return (f"{self.name}: ctx {self.context_length:,}, K/V {self.configured} ({self.source}); "
                f"running {self.running}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def own_kv(shown: dict[str, Any]) -> str | None:
    """A model's ``kv_cache_type`` parameter, from ``/api/show``."""
    m = re.search(r"^kv_cache_type\s+\"?([^\s\"]+)", str(shown.get("parameters", "")), re.M)
    return m.group(1) if m else None


def loaded_models(client: Client, log: str, host_default: KVPair) -> list[Loaded]:
    out = []
    for ps in client.get("/api/ps").get("models", []):
        name = str(ps.get("name", ""))
        try:
            shown = client.post("/api/show", {"model": name})
        except ApiError:
            shown = {}
        own = own_kv(shown)
        k, _, v = (own or "").partition("/")
        want = KVPair(k, v or k) if own else host_default
        path = model_file(shown)
        section = model_section(log, path, want) if path else None
        kv = kv_lines(section or "")
        running = (f"K {kv[-1].type_k} V {kv[-1].type_v}, {kv[-1].cells} cells" if kv else
                   "unknown (no llama-server lines for its file in the log)")
        out.append(Loaded(name, int(ps.get("context_length") or 0), want.label, "model" if own else "host",
                          running))
    return out
