"""``invoke smoke``: prove an endpoint runs the intended build with the intended cache type.

Each check is timed and carries its evidence. The cache type is read where the truth is:
Ollama's ``/api/ps`` does not report it and era B silently replaces unknown types by f16, so
the check reads the service log (era C: the llama-server command line and llama.cpp's KV
cache line; era B: no "unsupported OLLAMA_KV_CACHE_TYPE" and the KV cache line).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from ollama_turbo.core import cpu_variants
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import TurboError, UsageError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.fork.behaviour import ForkBehaviour, effective
from ollama_turbo.kv.geometry import geometry_from_metadata
from ollama_turbo.prove import offload
from ollama_turbo.prove.client import complete
from ollama_turbo.prove.ollama_api import ApiError, Client
from ollama_turbo.prove.prompts import SPEED_PROMPT
from ollama_turbo.prove.server_log import LogReader, kv_lines, model_shape


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped (with the reason in evidence)
    seconds: float
    evidence: str


@dataclass
class Expect:
    version: str | None = None
    type_k: str | None = None  # as configured; the fork may change it for the model (see fork.behaviour)
    type_v: str | None = None
    era: str | None = None  # B or C (from the manifest); None: tell from the log
    fork: ForkBehaviour = field(default_factory=ForkBehaviour)  # from turbo.kv.env
    shape: tuple[int, float] | None = None  # (layers, query heads per KV head); None: read it from the server
    model_path: str | None = None  # the model's file on the server: its own llama-server's lines are read
    source: str = ""  # where the expected K/V comes from (the host's deploy record, --cache-type, the settings)


@dataclass
class Thresholds:
    min_decode_ratio: float = 0.90
    max_ttft_ratio: float = 1.10


@dataclass
class SmokeResult:
    url: str
    api: str
    model: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is False]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "url": self.url, "api": self.api, "model": self.model,
                "metrics": self.metrics, "checks": [asdict(c) for c in self.checks],
                "provenance": self.provenance, "seconds": round(self.seconds, 3)}

    def render(self) -> str:
        lines = [f"smoke {self.url} ({self.api} API), model {self.model or '-'}"]
        for c in self.checks:
            mark = {True: "PASS", False: "FAIL", None: "skip"}[c.ok]
            lines.append(f"  {mark}  {c.name:<18} {c.seconds * 1000:7.0f} ms  {c.evidence}")
        m = self.metrics
        if m:
            lines.append("  " + ", ".join(f"{k} {v:,.1f}" for k, v in m.items()))
        lines.append(("OK" if self.ok else "FAILED: " + ", ".join(self.failed)) + f" ({self.seconds:.1f} s)")
        return "\n".join(lines)


class _Run:
    def __init__(self, result: SmokeResult) -> None:
        self.r = result

    def __call__(self, name: str, fn: Callable[[], tuple[bool | None, str]]) -> bool | None:
        t0 = time.perf_counter()
        try:
            ok, evidence = fn()
        except (ApiError, requests.RequestException, TurboError, KeyError, ValueError) as exc:
            ok, evidence = False, f"{exc.__class__.__name__}: {exc}"
        self.r.checks.append(Check(name, ok, time.perf_counter() - t0, evidence))
        return ok


def is_start_line(line: str) -> bool:
    """Is this the line where Ollama logs a llama-server's command line?"""
    return "starting llama server" in line or "starting llama-server" in line or (
        "llama-server" in line and "--model" in line)


def model_file(shown: dict[str, Any]) -> str | None:
    """The model's file on the server, from ``/api/show``'s Modelfile (its ``FROM /path`` line)."""
    found = re.search(r"^FROM (/\S+)", str(shown.get("modelfile", "")), re.M)
    return found.group(1) if found else None


def model_section(log: str, model_path: str, argv_types: KVPair | None = None) -> str | None:
    """The part of ``log`` that a llama-server started for ``model_path`` wrote (from its command line to the next
    llama-server's), so one model's cache is read when several share a host; None if it never started.

    Two models made from one GGUF share its file: with ``argv_types`` the last server for the file started with
    those types (``--cache-type-k/-v``) is the one, else the last server for the file."""
    lines = log.splitlines()
    starts = [i for i, ln in enumerate(lines) if is_start_line(ln)]
    mine = [i for i in starts if model_path in lines[i]]
    if argv_types:
        k, v = argv_types
        typed = [i for i in mine if f"--cache-type-k {k} " in lines[i] + " " and f"--cache-type-v {v}" in lines[i]]
        mine = typed or mine
    if not mine:
        return None
    nxt = next((i for i in starts if i > mine[-1]), len(lines))
    return "\n".join(lines[mine[-1]:nxt])


def cache_type_from_log(log: str, type_k: str, type_v: str, era: str | None,
                        fork: ForkBehaviour | None = None, shape: tuple[int, float] | None = None,
                        model_path: str | None = None) -> tuple[bool, str]:
    """Does the service log show the server running ``type_k``/``type_v`` as the fork runs them for this model?

    The command line must carry the configured types; the KV cache line must show what the fork
    makes of them for the model (:func:`ollama_turbo.fork.behaviour.effective`), e.g. q8_0 K for
    symmetric turbo on a model with >= 6 query heads per KV head.
    """
    if model_path:
        section = model_section(log, model_path, KVPair(type_k, type_v))
        if section is None:
            return False, f"no llama-server command line for {model_path} in the log"
        log = section
    shape = shape or model_shape(log)
    eff = effective(type_k, type_v, n_layer=shape[0], gqa_ratio=shape[1], fb=fork or ForkBehaviour()) if shape \
        else None
    era = era or ("C" if "starting llama server" in log or "--cache-type-k" in log else "B")
    evidence = []
    ok = True
    if Era.named(era).rules.server_argv:
        starts = [ln for ln in log.splitlines() if is_start_line(ln)]
        if not starts:
            return False, "no llama-server command line in the log"
        argv = starts[-1]
        k = re.search(r"--cache-type-k (\S+?)[\s\"]", argv + " ")
        v = re.search(r"--cache-type-v (\S+?)[\s\"]", argv + " ")
        if k and v:
            ok &= (k.group(1), v.group(1)) == (type_k, type_v)
            evidence.append(f"argv --cache-type-k {k.group(1)} --cache-type-v {v.group(1)}")
        else:
            evidence.append("argv has no --cache-type-k/-v (set through LLAMA_ARG_CACHE_TYPE_K/V?)")
    else:
        bad = [ln for ln in log.splitlines() if "unsupported OLLAMA_KV_CACHE_TYPE" in ln]
        if bad:
            ok = False
            evidence.append(f"log: {bad[-1].strip()[:160]}")
    kv = kv_lines(log)
    if not kv:
        return False, "; ".join([*evidence, "no llama_kv_cache size line in the log"])
    k_t, v_t = kv[-1].type_k, kv[-1].type_v
    want_k, want_v = (eff.type_k, eff.type_v) if eff else (type_k, type_v)
    ok &= (k_t, v_t) == (want_k, want_v)
    evidence.append(f"llama_kv_cache K ({k_t}) V ({v_t}), {kv[-1].cells} cells")
    if eff is not None and eff.changed:
        evidence.append(eff.explain())
    if eff is None:
        evidence.append("model shape unknown (no print_info lines): the fork's own changes could not be checked")
    if not ok:
        evidence.append(f"expected K {want_k} V {want_v}")
    return ok, "; ".join(evidence)


def smoke_ollama(url: str, *, model: str | None, expect: Expect, log: LogReader | None,
                 num_predict: int = 16, timeout: float = 120) -> SmokeResult:
    t_start = time.perf_counter()
    client = Client(url, timeout=timeout)
    r = SmokeResult(url=url, api="ollama", model=model or "")
    check = _Run(r)

    def reachable() -> tuple[bool, str]:
        resp = requests.get(url.rstrip("/") + "/", timeout=10)
        return resp.status_code == 200, f"GET / -> {resp.status_code} {resp.text.strip()[:40]!r}"

    if not check("reachable", reachable):
        r.seconds = time.perf_counter() - t_start
        return r

    def version() -> tuple[bool | None, str]:
        v = client.version()
        if not expect.version:
            return None, f"{v} (no expected version: pass --manifest or --host)"
        return v == expect.version, f"{v}" + ("" if v == expect.version else f", expected {expect.version}")

    check("version", version)

    def present() -> tuple[bool, str]:
        names = [m["name"] for m in client.get("/api/tags")["models"]]
        if not r.model:
            if not names:
                return False, "no models on the server"
            r.model = names[0]
        full = r.model if ":" in r.model else r.model + ":latest"
        return full in names or r.model in names, f"{r.model} in {len(names)} models"

    if not check("model present", present):
        r.seconds = time.perf_counter() - t_start
        return r

    def gguf() -> tuple[bool, str]:
        shown = client.post("/api/show", {"model": r.model})
        details = shown["details"]
        if expect.shape is None and shown.get("model_info"):
            with contextlib.suppress(TurboError):
                g = geometry_from_metadata(shown["model_info"], source=r.model)
                expect.shape = (g.n_layer, g.gqa_ratio)
        if expect.model_path is None:
            expect.model_path = model_file(shown)
        fmt = details.get("format")
        return fmt == "gguf", f"details.format = {fmt!r}" + ("" if fmt == "gguf" else
                                                             " (only GGUF models use the KV cache type)")

    check("gguf", gguf)
    opts = {"num_predict": num_predict, "temperature": 0, "seed": 1}

    def generate() -> tuple[bool, str]:
        out = client.generate(r.model, SPEED_PROMPT, **opts)
        ok = bool(out.get("done")) and out.get("eval_count", 0) > 0
        if out.get("eval_duration"):
            r.metrics["decode_tps"] = out["eval_count"] / out["eval_duration"] * 1e9
        if out.get("prompt_eval_duration"):
            r.metrics["prefill_tps"] = out["prompt_eval_count"] / out["prompt_eval_duration"] * 1e9
        return ok, f"done={out.get('done')} eval_count={out.get('eval_count')} " \
                   f"eval_duration={out.get('eval_duration')} ns"

    check("generate", generate)

    check("generate stream", _stream(r, url, "ollama", num_predict, timeout))

    def ps() -> tuple[bool, str]:
        models = client.get("/api/ps")["models"]
        m = next((x for x in models if x["name"] in (r.model, r.model + ":latest")), None)
        if m is None:
            return False, f"{r.model} not loaded ({[x['name'] for x in models]})"
        r.metrics["context_length"] = float(m.get("context_length", 0))
        # size is the model in memory; size_vram the part on a GPU (0 on a CPU-only host)
        return m.get("context_length", 0) > 0 and (m.get("size", 0) or m.get("size_vram", 0)) > 0, \
            f"context_length={m.get('context_length')} size={m.get('size')} size_vram={m.get('size_vram')}"

    check("ps", ps)
    _cache_check(check, expect, log)
    sigill(r, log)
    r.seconds = time.perf_counter() - t_start
    return r


def sigill(r: SmokeResult, log: LogReader | None, where: str = "the server's llama-server", host: str = "") -> None:
    """A check that failed because the runner died of an illegal instruction gets a check of its own naming it:
    the CPU variant it loaded (from the log), the flags that variant needs, the way out."""
    died = next((c for c in r.checks if c.ok is False and cpu_variants.is_sigill(c.evidence)), None)
    if died is None:
        return
    text = log() if log is not None else ""
    r.checks.append(Check("cpu variant", False, 0.0,
                          cpu_variants.explain_sigill(text + "\n" + died.evidence, where=where, host=host)))


def _stream(r: SmokeResult, url: str, api: str, num_predict: int, timeout: float
            ) -> Callable[[], tuple[bool, str]]:
    """The streamed generation check: time to first token, and the client's own decode rate."""

    def stream() -> tuple[bool, str]:
        # llama-server: generate every requested token, as the non-streamed check does
        c = complete(url, api, SPEED_PROMPT, n_predict=num_predict, model=r.model, ignore_eos=api == "llama-server",
                     timeout=timeout)
        if c.tokens:
            r.metrics["ttft_ms"] = c.ttft_s * 1000
        if api == "llama-server" and c.tokens > 2:
            r.metrics["client_decode_tps"] = c.client_decode_tps
        return c.done and c.tokens > 0, f"{c.tokens} tokens streamed, first after {c.ttft_s * 1000:.0f} ms"

    return stream


def _cache_check(check: _Run, expect: Expect, log: LogReader | None) -> None:
    def cache() -> tuple[bool | None, str]:
        if not (expect.type_k and expect.type_v):
            return None, "no expected cache type"
        if log is None:
            return None, "no service log to read (pass --log FILE or --host)"
        ok, evidence = cache_type_from_log(log(), expect.type_k, expect.type_v, expect.era, expect.fork, expect.shape,
                                           expect.model_path)
        return ok, evidence + (f" (expected from {expect.source})" if expect.source and not ok else "")

    check("cache type", cache)

    def on_gpu() -> tuple[bool | None, str]:
        if log is None:
            return None, "no service log to read"
        text = log()
        section = (model_section(text, expect.model_path, KVPair(expect.type_k, expect.type_v))
                   if expect.model_path and expect.type_k and expect.type_v else None) or text
        where = offload.placement(section)
        if not where.on_gpu:
            return None, "no layer on a GPU (a CPU host, or the model did not offload)"
        why = offload.fallback(where)
        return why is None, why or (f"{where.splits} graph splits, {where.layers[0]}/{where.layers[1]} layers on the "
                                    "GPU" if where.layers else f"{where.splits} graph splits")

    check("attention on GPU", on_gpu)


def smoke_llama_server(url: str, *, expect: Expect, log: LogReader | None, num_predict: int = 16,
                       timeout: float = 120) -> SmokeResult:
    """The same proof against a bare llama-server (hosts that run the fork's server directly)."""
    t_start = time.perf_counter()
    base = url.rstrip("/")
    r = SmokeResult(url=url, api="llama-server", model="")
    check = _Run(r)

    def health() -> tuple[bool, str]:
        resp = requests.get(base + "/health", timeout=10)
        return resp.status_code == 200, f"GET /health -> {resp.status_code} {resp.text.strip()[:60]}"

    if not check("reachable", health):
        r.seconds = time.perf_counter() - t_start
        return r

    def props() -> tuple[bool | None, str]:
        p = requests.get(base + "/props", timeout=10).json()
        r.model = str(p.get("model_path", "")).rsplit("/", 1)[-1]
        build = str(p.get("build_info", ""))
        if expect.version:
            return expect.version in build, f"build_info {build!r}, expected {expect.version}"
        return None, f"build_info {build!r}, model {r.model}"

    check("version", props)
    body = {"prompt": SPEED_PROMPT, "n_predict": num_predict, "temperature": 0, "seed": 1, "cache_prompt": False,
            "ignore_eos": True}

    def generate() -> tuple[bool, str]:
        out = requests.post(base + "/completion", json=body, timeout=timeout).json()
        t = out.get("timings", {})
        if t.get("predicted_ms"):
            # llama.cpp's convention: the first token comes out of prefill, so n - 1 over the decode time
            r.metrics["decode_tps"] = max(t["predicted_n"] - 1, 1) / t["predicted_ms"] * 1000
        if t.get("prompt_ms"):
            r.metrics["prefill_tps"] = t["prompt_n"] / t["prompt_ms"] * 1000
        r.metrics["server_decode_tps"] = float(t.get("predicted_per_second", 0.0))
        return t.get("predicted_n", 0) > 0, f"predicted_n={t.get('predicted_n')} prompt_n={t.get('prompt_n')}"

    check("generate", generate)

    check("generate stream", _stream(r, url, "llama-server", num_predict, timeout))
    _cache_check(check, Expect(type_k=expect.type_k, type_v=expect.type_v, era="B"), log)
    r.seconds = time.perf_counter() - t_start
    return r


def load_baseline(path: Path) -> dict[str, Any]:
    """A previous ``smoke --json`` result."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the baseline {path}: {exc}",
                         hint="pass a file written by invoke smoke --json") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a smoke --json result")
    return data


def apply_gates(r: SmokeResult, baseline: dict[str, Any], th: Thresholds) -> None:
    """Compare with a baseline smoke result (e.g. the f16 run): the TurboQuant plan's gates."""
    base = baseline.get("metrics", {})
    b_dec, dec = base.get("decode_tps"), r.metrics.get("decode_tps")
    if b_dec and dec is not None:
        ratio = dec / b_dec
        r.checks.append(Check("decode vs baseline", ratio >= th.min_decode_ratio, 0.0,
                              f"{dec:,.1f} tok/s = {ratio:.0%} of {b_dec:,.1f} (gate >= "
                              f"{th.min_decode_ratio:.0%})"))
    b_ttft, ttft = base.get("ttft_ms"), r.metrics.get("ttft_ms")
    if b_ttft and ttft is not None:
        ratio = ttft / b_ttft
        r.checks.append(Check("ttft vs baseline", ratio <= th.max_ttft_ratio, 0.0,
                              f"{ttft:,.0f} ms = {ratio:.0%} of {b_ttft:,.0f} ms (gate <= {th.max_ttft_ratio:.0%})"))
    r.provenance["baseline"] = {k: baseline.get(k) for k in ("url", "model", "metrics")}
