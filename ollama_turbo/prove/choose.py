"""The rule ``recommend`` chooses by, over the options its table prints (one K/V label each).

In order, a config must

1. fit the host's memory at the context (the planner);
2. stay on the GPU of that host: no CPU fallback found by ``bench`` there, or by a quality run of a CUDA build
   for a Linux host;
3. pass the quality gates (measured by ``quality``); a BORDERLINE one only when no measured config passes,
   and the choice then says so;
4. among those, decode fastest at that depth (measured by ``bench``); without a bench, the lowest mean KL
   divergence.

A config without a quality verdict is chosen only when none of the configs that pass 1 and 2 has one: the
field's guidance then orders them, and the choice says ``UNMEASURED``. Every option gets a reason: why it
was chosen, or the first step of the rule it fails, with its numbers. Pure logic: the options come in read.
"""

from __future__ import annotations

from dataclasses import dataclass

UNMEASURED = "unmeasured"
FALLBACK_PREFIX = "CPU fallback: "
STOCK = "stock "  # the label of a config run by stock Ollama's build


@dataclass
class Option:
    config: str                     # the K/V label (core.kv_types.label): q8_0, q8_0/turbo4
    kv_mib: float                   # the planner's cache at the context
    fits: bool
    quality: str                    # PASS / BORDERLINE / FAIL / unmeasured
    kld: float | None = None        # the numbers behind the verdict
    dppl: float | None = None
    quality_ctx: int | None = None
    decode_tps: float | None = None  # bench, at the depth nearest the context
    decode_depth: int | None = None
    cpu_fallback: str | None = None  # why its attention leaves the GPU on this host (offload.fallback's words)
    fallback_source: str = ""        # what found it (the bench, a quality run on a CUDA build)
    on_gpu: str | None = None        # what showed it staying on the GPU there (graph splits), when known
    note: str = ""                   # what the fork changes of this config on this model; "" when nothing
    reason: str = ""                 # why it was chosen, or the first step of the rule it fails
    max_ctx: int | None = None       # the longest context its cache fits on the host (planner), for comparisons

    @property
    def stock(self) -> bool:
        """A config of stock Ollama (its own build, no fork): chosen, it needs no custom build."""
        return self.config.startswith(STOCK)


@dataclass(frozen=True)
class Situation:
    model: str                   # the model file, for the commands a next step names
    host: str
    ctx: int
    budget_mib: float            # left for the cache on the host (planner)
    guidance: tuple[str, ...]    # the field's order of labels for a model nothing has been measured on
    guidance_why: str = ""       # what in the model makes it protect K ("" when it does not)


@dataclass
class Decision:
    choice: Option | None
    why: str
    next_step: str = ""          # when nothing is chosen: what to do about its reason
    measured: bool = False       # the choice passed (or was borderline in) a quality run


def gate_numbers(o: Option) -> str:
    parts = ([f"mean KLD {o.kld:.5f}"] if o.kld is not None else []) + \
            ([f"ΔPPL {o.dppl:+.4f}"] if o.dppl is not None else [])
    return ", ".join(parts) + (f" at ctx {o.quality_ctx}" if o.quality_ctx is not None else "")


def _fits(o: Option, s: Situation) -> str:
    return f"{o.kv_mib:,.1f} MiB of the {s.budget_mib:,.1f} MiB {s.host} has for the cache at {s.ctx:,} tokens"


def _speed(o: Option) -> str:
    return f"{o.decode_tps:,.1f} tok/s at depth {o.decode_depth:,}"


def _first_failure(o: Option, s: Situation) -> str | None:
    """Steps 1 and 2 of the rule: memory, then the GPU."""
    if not o.fits:
        return (f"does not fit: needs {o.kv_mib:,.1f} MiB at {s.ctx:,} tokens; {s.host} has {s.budget_mib:,.1f} MiB "
                "for the cache")
    if o.cpu_fallback:
        detail = o.cpu_fallback.removeprefix(FALLBACK_PREFIX)
        return f"falls back to the CPU on {s.host}" + (f" ({o.fallback_source})" if o.fallback_source else "") + \
            f": {detail}"
    return None


def _and(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def decide(options: list[Option], s: Situation) -> Decision:
    """The choice and why; sets every option's ``reason``. With no choice, ``why`` names each config's reason."""
    for o in options:
        o.reason = _first_failure(o, s) or ""
    if not any(o.fits for o in options):
        smallest = min(options, key=lambda o: o.kv_mib)
        d = Decision(None, f"no config fits {s.host} at {s.ctx:,} tokens: the smallest, {smallest.config}, needs "
                           f"{smallest.kv_mib:,.1f} MiB and {s.host} has {s.budget_mib:,.1f} MiB for the cache",
                     "choose a shorter --ctx, a smaller model or a host with more memory")
    else:
        viable = [o for o in options if not o.reason]
        measured = [o for o in viable if o.quality != UNMEASURED]
        d = _measured(viable, measured, s) if measured else _guided(viable, s)
    if d.choice is None:
        d.why += ":" + "".join(f"\n    {o.config}: {o.reason}" for o in options)
    return d


def _measured(viable: list[Option], measured: list[Option], s: Situation) -> Decision:
    unmeasured = [o for o in viable if o.quality == UNMEASURED]
    for o in unmeasured:
        o.reason = ("unmeasured (invoke quality has no verdict of this model with it): not chosen while a config "
                    "that fits without a CPU fallback is measured")
    for o in measured:
        if o.quality == "FAIL":
            o.reason = f"fails the quality gate: {gate_numbers(o)}"
    passing = [o for o in measured if o.quality == "PASS"]
    tier = passing or [o for o in measured if o.quality == "BORDERLINE"]
    if not tier:
        return _none_allowed(viable, s)
    if passing and any(o.stock for o in passing):  # stock Ollama does it: no custom build needed
        tier = [o for o in passing if o.stock]
    timed = [o for o in tier if o.decode_tps is not None]
    best = max(timed, key=lambda o: o.decode_tps or 0.0) if timed else min(tier, key=lambda o: o.kld or 0.0)
    for o in tier:
        if o is best:
            continue
        if timed and o.decode_tps is None:
            o.reason = f"not in the bench: its decode speed is unknown ({best.config}: {_speed(best)})"
        elif timed:
            o.reason = f"slower: {_speed(o)}, against {best.config}'s {_speed(best)}"
        else:
            o.reason = (f"higher mean KLD than {best.config} ({o.kld or 0.0:.5f} against {best.kld or 0.0:.5f}); "
                        "no bench to compare decode speed")
    if passing:
        for o in measured:
            if o.quality == "BORDERLINE":
                o.reason = f"BORDERLINE ({gate_numbers(o)}) while {best.config} passes"
        if best.stock:
            for o in passing:
                if not o.stock:
                    o.reason = f"passes too, but needs the custom build, and {best.config} needs none" + \
                        _more_context(o, best)
    clauses = [f"fits ({_fits(best, s)})"] + ([f"stays on the GPU ({best.on_gpu})"] if best.on_gpu else [])
    clauses.append(f"passes the quality gates ({gate_numbers(best)})" if passing else
                   f"is within twice the quality gates ({gate_numbers(best)})")
    if timed:
        clauses.append(f"decodes fastest: {_speed(best)}")
    elif len(tier) > 1:
        clauses.append("has the lowest mean KLD (no bench given)")
    best.reason = _and(clauses)
    if passing and best.stock:
        more = [o for o in passing if not o.stock and (o.max_ctx or 0) > (best.max_ctx or 0)]
        extra = f"; {_more_context(max(more, key=lambda o: o.max_ctx or 0), best).lstrip('; ')}" if more else ""
        return Decision(best, f"{best.config} {best.reason}: no custom build needed for this model on {s.host} "
                              f"at {s.ctx:,} tokens{extra}", measured=True)
    if passing:
        stock_said = [o for o in measured if o.stock]
        needs = ("; it needs the custom build (stock Ollama's: " + "; ".join(f"{o.config} {o.reason}"
                                                                             for o in stock_said) + ")"
                 if stock_said else "")
        return Decision(best, best.reason + needs, measured=True)
    untried = f"; not measured yet: {', '.join(o.config for o in unmeasured)}" if unmeasured else ""
    return Decision(best, "BORDERLINE: no measured config that fits without a CPU fallback passes the quality gates; "
                          f"{best.config} {best.reason}{untried}", measured=True)


def _more_context(o: Option, than: Option) -> str:
    """What a config buys over another: its longest context on the host against the other's."""
    if not (o.max_ctx and than.max_ctx) or o.max_ctx <= than.max_ctx:
        return ""
    return (f"; {o.config} gives {o.max_ctx / than.max_ctx:.1f}x the context of {than.config} on this host "
            f"({o.max_ctx:,} tokens against {than.max_ctx:,}) at {gate_numbers(o)}")


def _guided(viable: list[Option], s: Situation) -> Decision:
    """No config that could run here has a quality verdict: the field's guidance, labelled UNMEASURED."""
    pick = next((o for c in s.guidance for o in viable if o.config == c), None)
    for o in viable:
        if o is pick:
            continue
        o.reason = (f"unmeasured; the field's guidance for this model puts {pick.config} before it"
                    if pick and o.config in s.guidance else
                    f"unmeasured, and not in the field's guidance for this model ({', '.join(s.guidance)})")
    if pick is None:
        return _none_allowed(viable, s)
    advice = (f"the field's guidance ({s.guidance_why}) protects K with q8_0" if s.guidance_why else
              "the field's guidance for this model") + f": {', '.join(s.guidance)}"
    pick.reason = f"UNMEASURED: fits ({_fits(pick, s)}); {advice}; the first of those that fits without a CPU fallback"
    why = (f"UNMEASURED: no config of this model that fits without a CPU fallback has been measured by invoke "
           f"quality yet; {advice}; {pick.config} is the first of those that fits without one "
           f"({pick.kv_mib:,.1f} MiB at {s.ctx:,} tokens). Measure it: invoke quality --model {s.model}")
    return Decision(pick, why)


def _none_allowed(viable: list[Option], s: Situation) -> Decision:
    """Something fits, yet the rule allows none of it; a next step for each reason there is."""
    unmeasured = [o.config for o in viable if o.quality == UNMEASURED]
    steps = []
    if unmeasured:
        steps.append(f"measure the configs that fit without a CPU fallback: invoke quality --model {s.model} "
                     f"--types {','.join(unmeasured)} --manifest <dist>")
    if not viable:
        steps.append(f"keep this model on the f16 cache on {s.host} (leave kv: out of its spec): every config that "
                     "fits falls back to the CPU there")
    elif any(o.quality == "FAIL" for o in viable):
        steps.append("keep this model on the f16 cache (leave kv: out of its spec), or, if the gates are stricter "
                     "than your own criterion, measure again with --max-kld and --max-dppl")
    return Decision(None, f"no K/V config may be chosen for {s.model} on {s.host} at {s.ctx:,} tokens",
                    "; or ".join(steps))
