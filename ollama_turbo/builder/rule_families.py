"""Which Go rules a custom build applies, by family, as its era says (:attr:`EraRules.go_rules`).

Each family makes its rules from the fork contract and Ollama's code; a family the era does not take, or that
this Ollama does not need, is recorded as "not needed" with the evidence, where there is any.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ollama_turbo.builder import go_rules
from ollama_turbo.builder.go_rules import Outcome
from ollama_turbo.check.fork_contract import Contract
from ollama_turbo.core import era as eras
from ollama_turbo.core.era import Era
from ollama_turbo.core.rules import Rule
from ollama_turbo.fork.blocks import Block


@dataclass(frozen=True)
class Context:
    """What the rule families read: the era, the contract, the fork's new cache types, Ollama's Go code."""

    era: Era
    contract: Contract
    cache_blocks: list[Block]
    grep: go_rules.Grep
    enclosing: Callable[[str, int], str | None]
    server_go: str  # llm/llama_server.go ("" where this Ollama has none)


Made = tuple[list[Rule], list[Outcome]]


def _not_needed(rule_list: list[Rule], why: str) -> list[Outcome]:
    return [Outcome(r.name, r.file, "not needed", None, why) for r in rule_list]


def _kv_bytes(ctx: Context) -> Made:
    made = go_rules.kv_bytes_rules(ctx.cache_blocks)
    if ctx.era.rules.links_c_api:  # a vendored era sizes the cache in Go for every runner
        return made, []
    needed, why_not = go_rules.kv_bytes_needed(ctx.grep, ctx.enclosing)
    return (made, []) if needed else ([], _not_needed(made, why_not))


def _context_shift(ctx: Context) -> Made:
    made = go_rules.context_shift_rules()
    if re.search(r"appendContextShiftArgs\(params", ctx.server_go):
        return made, []
    return [], _not_needed(made, "this Ollama does not run llama-server with --context-shift")


MAKE: dict[str, Callable[[Context], Made]] = {
    eras.KV_BYTES: _kv_bytes,
    eras.ALLOWLISTS: lambda ctx: (go_rules.era_b_rules(ctx.cache_blocks), []),
    eras.DROP_FLAGS: lambda ctx: (go_rules.drop_flag_rules(ctx.contract.dropped_flags), []),
    eras.RENAME_FLAGS: lambda ctx: (go_rules.rename_flag_rules(ctx.contract.renamed_flags), []),
    eras.PER_MODEL: lambda ctx: (go_rules.per_model_rules(ctx.contract.fork_types), []),
    eras.CONTEXT_SHIFT: _context_shift,
}

# a family an era does not take, with the evidence why this Ollama needs none of its rules
NOT_TAKEN: dict[str, Callable[[Context], list[Outcome]]] = {
    eras.ALLOWLISTS: lambda ctx: go_rules.allowlists_not_needed(ctx.grep, ctx.cache_blocks),
}


def make(ctx: Context) -> Made:
    """The rules to apply, in family order, and the outcomes of those not needed."""
    applied: list[Rule] = []
    skipped: list[Outcome] = []
    for family in eras.FAMILIES:
        if family in ctx.era.rules.go_rules:
            made, not_needed = MAKE[family](ctx)
            applied += made
            skipped += not_needed
        elif family in NOT_TAKEN:
            skipped += NOT_TAKEN[family](ctx)
    return applied, skipped
