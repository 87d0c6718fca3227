"""Prompts of an exact depth, counted by the server's own tokenizer, and the server's context size.

Tokenizers differ (the sample one counts words, SmolLM2's runs ~1.3 tokens per English word), so a
depth is never guessed from characters: the prompt is grown or cut until the server says it has the
requested number of tokens (llama-server ``POST /tokenize``; Ollama, which has no tokenize endpoint:
the ``prompt_eval_count`` of a one-token generation). Every request starts with a different
``run N`` tag, so a server's prompt cache cannot make a later run cheaper than the first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import requests

from ollama_turbo.core.errors import TurboError
from ollama_turbo.prove.client import Endpoint, complete
from ollama_turbo.prove.ollama_api import ApiError
from ollama_turbo.prove.prompts import FILLER, SPEED_PROMPT

Counter = Callable[[str], int]
PREFILL_TOKENS = 512  # prefill is measured on a fixed prompt of this many tokens, as llama-bench's pp512
_TAGS = itertools.count(1)


class DepthError(TurboError):
    pass


def tag() -> str:
    """A prefix that makes every request's prompt unique (no prompt-cache reuse between runs)."""
    return f"run {next(_TAGS):05d}. "


def filler(words: int) -> str:
    pool = FILLER.split()
    return " ".join((pool * (words // len(pool) + 1))[:words])


def prompt_with(words: int, tail: str = SPEED_PROMPT) -> str:
    return (filler(words) + "\n\n" if words else "") + tail


def fit(target: int, count: Counter, tail: str = SPEED_PROMPT, *, max_calls: int = 16) -> tuple[str, int]:
    """The prompt of filler words + ``tail`` with the most tokens not above ``target``, and its count.

    Starts from a proportional guess, corrects it with the measured tokens per word, then bisects.
    """
    base = count(prompt_with(0, tail))
    if target <= base:
        return prompt_with(0, tail), base
    lo, lo_n, hi = 0, base, None
    words = max(1, round((target - base) / 1.3))
    for _ in range(max_calls):
        n = count(prompt_with(words, tail))
        if n <= target:
            lo, lo_n = words, n
            if n == target:
                break
        else:
            hi = words
        if hi is not None and hi - lo <= 1:
            break
        per_word = (n - base) / words if words and n > base else 1.3
        guess = lo + max(1, round((target - lo_n) / per_word))
        if hi is not None and not lo < guess < hi:
            guess = (lo + hi) // 2
        words = guess
    return prompt_with(lo, tail), lo_n


def counter(ep: Endpoint) -> Counter:
    """The server's token count of a prompt (with the tag every bench request carries)."""
    base = ep.url.rstrip("/")
    fixed_tag = "run 00000. "

    if ep.api == "llama-server":
        def count(text: str) -> int:
            try:
                # add_special: count the BOS token too, when the model's completions get one
                r = requests.post(base + "/tokenize", json={"content": fixed_tag + text, "add_special": True},
                                  timeout=60)
                r.raise_for_status()
                return len(r.json()["tokens"])
            except (requests.RequestException, ValueError, KeyError) as exc:
                raise DepthError(f"{ep.label}: {base}/tokenize failed ({exc.__class__.__name__}: {exc})",
                                 hint="is this a llama-server? pass --api ollama for an Ollama endpoint") from None
        return count

    def count_ollama(text: str) -> int:
        c = complete(ep.url, ep.api, tag() + text, n_predict=1, model=ep.model)
        if not c.prompt_n:
            raise DepthError(f"{ep.label}: the server reported no prompt_eval_count; cannot measure depth")
        return c.prompt_n

    return count_ollama


def context_size(ep: Endpoint) -> int | None:
    """The context the server runs with (per sequence), or None when it does not say."""
    base = ep.url.rstrip("/")
    try:
        if ep.api == "llama-server":
            props: dict[str, Any] = requests.get(base + "/props", timeout=30).json()
            n = props.get("default_generation_settings", {}).get("n_ctx")
            return int(n) if n else None
        complete(ep.url, ep.api, tag() + SPEED_PROMPT, n_predict=1, model=ep.model)  # load the model
        for m in requests.get(base + "/api/ps", timeout=30).json().get("models", []):
            if m.get("name") in (ep.model, ep.model + ":latest") and m.get("context_length"):
                return int(m["context_length"])
    except (requests.RequestException, ValueError, ApiError):
        return None
    return None
