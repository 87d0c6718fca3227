"""One streamed completion, timed on the client, against the Ollama or the llama-server API."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from ollama_turbo.fork.behaviour import ForkBehaviour
from ollama_turbo.prove.ollama_api import ApiError
from ollama_turbo.prove.server_log import LogReader


@dataclass
class Endpoint:
    label: str       # "f16" or "q8_0/turbo4"
    type_k: str
    type_v: str
    url: str
    api: str
    model: str = ""
    log: LogReader | None = None  # this config's server log (from its start on)
    build: str = ""  # the version of the build the label says runs there ("" where not known)
    era: str | None = None
    fork: ForkBehaviour | None = None  # the fork's knobs that server runs with, where known (a host's deploy record)



# Ollama's llama-server client ends a completion once one token (trimmed of spaces) has come more than 30 times
# in a row after its first (llm/llama_server.go), and answers without timings: 31 tokens are the most it gives
# for text that repeats one token, as a random-weight model at depth does.
REPEAT_LIMIT = 30
OLLAMA_SAFE_PREDICT = REPEAT_LIMIT + 1


def repeats(pieces: list[str]) -> tuple[int, str]:
    """How many times the last token repeated after its first, counted as Ollama counts (trimmed text, an
    empty piece repeating the empty start), and the token."""
    count, last = 0, ""
    for p in pieces:
        t = p.strip()
        if t == last:
            count += 1
        else:
            last, count = t, 0
    return count, last


@dataclass
class Completion:
    text: str
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    ttft_s: float
    itl_s: list[float] = field(default_factory=list)  # inter-token latencies seen by the client
    wall_s: float = 0.0
    tokens: int = 0     # pieces of text that arrived
    done: bool = False  # the server sent its final message
    pieces: list[str] = field(default_factory=list, repr=False)
    done_reason: str = ""

    def why_no_timings(self) -> str:
        """Why the answer carries no timings ("" when it does), from the answer itself."""
        if self.done and self.prompt_n and self.predicted_n:
            return ""
        if not self.done:
            n, tok = repeats(self.pieces)
            if n >= REPEAT_LIMIT:
                return (f"Ollama's repeat guard: the model gave {tok or 'an empty token'!r} {n + 1} times in a row, "
                        f"and Ollama ends a completion after {REPEAT_LIMIT + 1} (no timings); ask at most "
                        f"{OLLAMA_SAFE_PREDICT} tokens")
            return (f"the stream ended after {self.tokens} tokens without its final message (no timings): the "
                    "server closed the answer")
        if not self.predicted_n:
            return f"the final message counts no generated tokens (done_reason {self.done_reason or '?'!r})"
        return f"the final message counts no prompt tokens (done_reason {self.done_reason or '?'!r})"

    @property
    def prefill_tps(self) -> float:
        return self.prompt_n / self.prompt_ms * 1000 if self.prompt_ms else 0.0

    @property
    def decode_tps(self) -> float:
        return self.predicted_n / self.predicted_ms * 1000 if self.predicted_ms else 0.0

    @property
    def client_decode_tps(self) -> float:
        """Decode rate from chunk arrival times (first to last token)."""
        span = sum(self.itl_s)
        return len(self.itl_s) / span if span else 0.0


def complete(url: str, api: str, prompt: str, *, n_predict: int, model: str = "", num_ctx: int | None = None,
             ignore_eos: bool = False, timeout: float = 600) -> Completion:
    """Stream one completion; ``ignore_eos`` (llama-server) makes speed runs generate all n_predict tokens."""
    base = url.rstrip("/")
    if api == "ollama":
        options: dict[str, Any] = {"num_predict": n_predict, "temperature": 0, "seed": 1}
        if num_ctx:
            options["num_ctx"] = num_ctx
        req = (base + "/api/generate", {"model": model, "prompt": prompt, "stream": True, "options": options})
    else:
        req = (base + "/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "seed": 1,
                                      "stream": True, "cache_prompt": False, "ignore_eos": ignore_eos})
    t0 = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    final: dict[str, Any] = {}
    try:
        with requests.post(req[0], json=req[1], stream=True, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise ApiError(f"{req[0]} returned {resp.status_code}: {resp.text[:200]}")
            for line in resp.iter_lines():
                if not line:
                    continue
                if api != "ollama":
                    if not line.startswith(b"data: "):
                        continue
                    line = line[6:]
                c = json.loads(line)
                if "error" in c:
                    raise ApiError(f"{req[0]}: {c['error']}")
                piece = c.get("response") if api == "ollama" else c.get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    pieces.append(piece)
                if c.get("done") or c.get("stop"):
                    final = c
    except requests.RequestException as exc:
        raise ApiError(f"{url} is unreachable: {exc.__class__.__name__}") from exc
    wall = time.perf_counter() - t0
    if api == "ollama":
        pn, pms = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0) / 1e6
        dn, dms = final.get("eval_count", 0), final.get("eval_duration", 0) / 1e6
    else:
        t = final.get("timings", {})
        pn, pms, dn, dms = t.get("prompt_n", 0), t.get("prompt_ms", 0.0), t.get("predicted_n", 0), \
            t.get("predicted_ms", 0.0)
    itl = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return Completion("".join(pieces), int(pn), float(pms), int(dn), float(dms),
                      (stamps[0] - t0) if stamps else wall, itl, wall, len(stamps), bool(final), pieces,
                      str(final.get("done_reason") or final.get("stop_type") or ""))
