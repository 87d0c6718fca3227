"""The server's K/V contract, in one place: how a K/V pair is given to an Ollama server (its environment), how
that server is read back (which pair an environment gives), and how llama-server is asked for it (its argv)
and says what it was asked (the command line Ollama logs). The cache llama.cpp then allocates is its
``llama_kv_cache`` line (:mod:`ollama_turbo.prove.server_log`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import UsageError
from ollama_turbo.core.kv_types import KVPair

ONE = "OLLAMA_KV_CACHE_TYPE"  # Ollama: one type, passed to llama-server as both K and V
K, V = "LLAMA_ARG_CACHE_TYPE_K", "LLAMA_ARG_CACHE_TYPE_V"  # llama-server's own, when no flag is given
NAMES = (ONE, K, V)


class PairNotPossible(UsageError):
    """A pair this server cannot be given (era B Ollama: one type for K and V)."""


def to_env(era: str | Era, pair: KVPair) -> list[tuple[str, str]]:
    """The variables that give an Ollama server of ``era`` this pair."""
    if pair.symmetric:
        return [(ONE, pair.k)]
    # era C: Ollama passes one OLLAMA_KV_CACHE_TYPE to both; llama-server reads these when it passes none
    if Era.named(era).rules.kv_split:
        return [(K, pair.k), (V, pair.v)]
    raise PairNotPossible(f"era B Ollama has one cache type for K and V; {pair.label} is not possible",
                          hint="set turbo.kv.type_k and type_v to the same type")


def from_env(env: Mapping[str, str]) -> KVPair | None:
    """The pair an Ollama server's environment gives its llama-servers (``LLAMA_ARG_*`` win over
    ``OLLAMA_KV_CACHE_TYPE``, as llama-server reads them); None where it gives none (f16, Ollama's default)."""
    one = env.get(ONE)
    k, v = env.get(K) or one, env.get(V) or one
    return KVPair(k.lower(), v.lower()) if k and v else None


def argv(pair: KVPair) -> list[str]:
    """llama-server's flags for this pair."""
    return ["--cache-type-k", pair.k, "--cache-type-v", pair.v]


def from_argv(command_line: str) -> KVPair | None:
    """The pair a logged llama-server command line asks for; None where it names none (set through the
    environment, or llama.cpp's default)."""
    k = re.search(r"--cache-type-k (\S+?)[\s\"]", command_line + " ")
    v = re.search(r"--cache-type-v (\S+?)[\s\"]", command_line + " ")
    return KVPair(k.group(1), v.group(1)) if k and v else None
