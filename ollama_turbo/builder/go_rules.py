"""The edits a build makes to Ollama's Go sources, per era, as anchored rules.

Era C: ``kvCacheBytesPerElement`` learns the fork's cache types (bytes per element from the
fork's block formats) so Ollama's memory estimate is right; flags Ollama always passes but
the fork lacks are dropped from the llama-server argv (loudly).
Era B: additionally the three allowlists (``SupportsKVCacheType``, ``llama/llama.go``
``kvCacheTypeFromStr`` mapping names to the fork's ``GGML_TYPE_*`` constants, and the Go
engine's ``kvCacheTypeFromStr``), so Ollama stops silently falling back to f16.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ollama_turbo.core.rules import Rule
from ollama_turbo.fork.blocks import Block

MARK = "added by ollama-turbo"


def _num(x: float) -> str:
    return repr(float(x)).rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def kv_bytes_rules(blocks: list[Block]) -> list[Rule]:
    return [Rule(
        name=f"kv-bytes-{b.name}", file="fs/ggml/ggml.go", function="kvCacheBytesPerElement",
        anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
        text=f'\tcase "{b.name}":\n\t\treturn {_num(b.bytes_per_element)} // {b.size} bytes per {b.block} '
             f"values ({MARK})\n",
        expect=rf'^\s*case "{re.escape(b.name)}":', why=f"memory estimate for {b.name}: "
        f"{b.size} B / {b.block} values = {_num(b.bytes_per_element)} bytes per element")
        for b in blocks]


def drop_flag_rules(flags: list[str]) -> list[Rule]:
    return [Rule(
        name=f"drop-flag{f}", file="llm/llama_server.go", anchor=rf'^\s*"{re.escape(f)}",[^\n]*$',
        action="delete_line", expect=None,
        why=f"the fork's llama-server does not define {f}, which Ollama always passes") for f in flags]


def rename_flag_rules(renames: list[Any]) -> list[Rule]:
    """Flags Ollama passes under a condition by a name upstream gave them after the fork's base (``--load-mode
    none``): passed by the fork's own name (``--no-mmap``). ``renames``: the contract's, each with ``flag``,
    ``value`` and ``fork_flag``."""
    return [Rule(
        name=f"rename-flag{r.flag}-{r.value}", file="llm/llama_server.go",
        anchor=rf'"{re.escape(r.flag)}", "{re.escape(r.value)}"', action="replace", text=f'"{r.fork_flag}"',
        expect=rf'"{re.escape(r.fork_flag)}"',
        why=f"the fork's llama-server has no {r.flag} (a later name); it takes {r.fork_flag} for "
            f"{r.flag} {r.value}") for r in renames]


SHIFT_SAFE_K = ("f16", "bf16", "f32")  # K types the fork's llama-server shifts without crashing (field record)


def context_shift_rules() -> list[Rule]:
    """Era C: Ollama runs llama-server with ``--context-shift``; the fork's crashes (SIGSEGV) shifting a quantized
    K cache, so a runner whose K is quantized gets no context shift: a generation that reaches the end of the
    context stops there (or a prompt too long for it is refused with Ollama's own message) instead of killing
    the runner."""
    safe = ", ".join(f'"{t}"' for t in SHIFT_SAFE_K)
    helper = (f"// turboContextShiftSafe ({MARK}): the fork's llama-server crashes shifting a quantized K cache;\n"
              "// context shift stays on where K is unquantized (a k/v pair names K first).\n"
              "func turboContextShiftSafe(kvCacheType string) bool {\n"
              '\tk, _, _ := strings.Cut(strings.ToLower(kvCacheType), "/")\n'
              '\tif k == "" {\n\t\tk = strings.ToLower(os.Getenv("LLAMA_ARG_CACHE_TYPE_K"))\n\t}\n'
              f'\treturn k == "" || slices.Contains([]string{{{safe}}}, k)\n'
              "}\n\n")
    return [
        Rule(name="context-shift-helper", file="llm/llama_server.go", anchor=r"^func appendContextShiftArgs\(",
             action="insert_before", text=helper, expect=r"^func turboContextShiftSafe\(",
             why="says whether a runner's K cache can be shifted by the fork's llama-server"),
        Rule(name="context-shift-quantized-k", file="llm/llama_server.go",
             anchor=r"appendContextShiftArgs\(params, (\w+)\.opts, (\w+)\.config\.ContextShift\)", action="replace",
             text=r"appendContextShiftArgs(params, \1.opts, \2.config.ContextShift && "
                  r"turboContextShiftSafe(\1.kvCacheType))",
             expect=r"ContextShift && turboContextShiftSafe\(",
             why="no --context-shift for a quantized K cache: the fork's llama-server crashes (SIGSEGV) shifting "
                 "one, which Ollama reports as HTTP 500 'unexpected EOF'"),
    ]


def era_b_rules(blocks: list[Block]) -> list[Rule]:
    names = ", ".join(f'"{b.name}"' for b in blocks)
    rules = [Rule(
        name="supports-kv-cache-type", file="fs/ggml/ggml.go", function="SupportsKVCacheType",
        anchor=r"\[\]string\{([^}]*)\}", action="replace", text=rf"[]string{{\1, {names}}}",
        why=f"accept {', '.join(b.name for b in blocks)} in OLLAMA_KV_CACHE_TYPE")]
    for b in blocks:
        rules.append(Rule(
            name=f"llama-kv-type-{b.name}", file="llama/llama.go", function="kvCacheTypeFromStr",
            anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
            text=f'\tcase "{b.name}":\n\t\treturn C.{b.ggml_type} // {MARK}\n',
            expect=rf"return C\.{b.ggml_type}\b", why=f"map {b.name} to the fork's {b.ggml_type}"))
    const_names = [f"DType{b.name.capitalize()}" for b in blocks]
    rules.append(Rule(
        name="ml-dtypes", file="ml/backend.go", anchor=r"^(\s*)DTypeQ40\s*$", action="insert_after",
        text="".join(f"\t{n} // {MARK}\n" for n in const_names),
        why="cache types for the Go engine"))
    for b, n in zip(blocks, const_names, strict=True):
        rules.append(Rule(
            name=f"engine-kv-type-{b.name}", file="runner/ollamarunner/cache.go", function="kvCacheTypeFromStr",
            anchor=r"^\s*switch \w+ \{\s*$", action="insert_after",
            text=f'\tcase "{b.name}":\n\t\treturn ml.{n} // {MARK}\n',
            expect=rf"return ml\.{n}\b", why=f"the Go engine's cache type for {b.name}"))
    return rules


PER_MODEL_PARAM = "kv_cache_type"  # the name Ollama's own open proposal uses for a per-model cache type


def _go_list(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def per_model_rules(allowed: list[str]) -> list[Rule]:
    """Era C: ``PARAMETER kv_cache_type <type>`` or ``<k>/<v>`` per model.

    Validated at ``ollama create`` against ``allowed`` (the cache types this build's llama-server
    accepts); at load time the model's own type overrides ``OLLAMA_KV_CACHE_TYPE``; the runner
    passes K and V separately, so a host-wide ``OLLAMA_KV_CACHE_TYPE=q8_0/turbo4`` works too.
    """
    check = (
        f"// turboKvCacheTypeCheck validates PARAMETER {PER_MODEL_PARAM} ({MARK}): a cache type this build's\n"
        "// llama-server accepts, or a K/V pair written k/v.\n"
        "func turboKvCacheTypeCheck(value any) error {\n"
        "\tif value == nil {\n\t\treturn nil\n\t}\n"
        f"\tallowed := []string{{{_go_list(allowed)}}}\n"
        "\ts, ok := value.(string)\n"
        "\tif !ok {\n"
        f'\t\treturn fmt.Errorf("{PER_MODEL_PARAM} must be a string such as turbo4 or q8_0/turbo4, not %v", value)\n'
        "\t}\n"
        '\tk, v, split := strings.Cut(strings.ToLower(strings.TrimSpace(s)), "/")\n'
        "\tif !split {\n\t\tv = k\n\t}\n"
        "\tfor _, t := range []string{k, v} {\n"
        '\t\tif t == "" {\n'
        f'\t\t\treturn fmt.Errorf("{PER_MODEL_PARAM} %q: K and V must both be named, e.g. q8_0/turbo4", s)\n'
        "\t\t}\n"
        "\t\tif !slices.Contains(allowed, t) {\n"
        f'\t\t\treturn fmt.Errorf("{PER_MODEL_PARAM} %q: %q is not a cache type this build\'s llama-server accepts '
        '(allowed: %s; K/V split as k/v, e.g. q8_0/turbo4)", s, t, strings.Join(allowed, ", "))\n'
        "\t\t}\n"
        "\t}\n"
        "\treturn nil\n"
        "}\n\n")
    return [
        Rule(name="per-model-kv-option", file="api/types.go", anchor=r"^type Runner struct \{\s*$",
             action="insert_after",
             text=f'\tKvCacheType string `json:"{PER_MODEL_PARAM},omitempty"` // {MARK}: a cache type per model\n',
             expect=rf'json:"{PER_MODEL_PARAM},omitempty"',
             why=f"PARAMETER {PER_MODEL_PARAM} is a runner option of the model (and reloads its runner when it "
                 "changes)"),
        Rule(name="per-model-kv-check", file="server/create.go", anchor=r"^func setParameters\(",
             action="insert_before", text=check, expect=r"^func turboKvCacheTypeCheck\(",
             why=f"ollama create refuses a {PER_MODEL_PARAM} this build's llama-server does not accept, naming "
                 "the allowed ones"),
        Rule(name="per-model-kv-create", file="server/create.go", function="setParameters",
             anchor=r"^func setParameters\([^\n]*\{\s*$", action="insert_after",
             text=f'\tif err := turboKvCacheTypeCheck(p["{PER_MODEL_PARAM}"]); err != nil {{ // {MARK}\n'
                  "\t\treturn nil, err\n\t}\n",
             expect=r"turboKvCacheTypeCheck\(p\[",
             why="the check runs on the parameters of every ollama create"),
        Rule(name="per-model-kv-load", file="llm/server.go", function="NewLlamaServer",
             anchor=r"^\s*kvct := strings\.ToLower\(envconfig\.KvCacheType\(\)\)\s*$", action="insert_after",
             text=f"\tif opts.KvCacheType != \"\" {{ // {MARK}: the model's own {PER_MODEL_PARAM} wins\n"
                  "\t\tkvct = strings.ToLower(opts.KvCacheType)\n\t}\n",
             expect=r"kvct = strings\.ToLower\(opts\.KvCacheType\)",
             why=f"a model's {PER_MODEL_PARAM} overrides the host-wide OLLAMA_KV_CACHE_TYPE for its runner"),
        Rule(name="per-model-kv-split", file="llm/llama_server.go",
             anchor=r'^(\s*)params = append\(params, "--cache-type-k", (\w+)\.kvCacheType, "--cache-type-v", '
                    r'\2\.kvCacheType\)\s*$',
             action="replace",
             text=f'\\1typeK, typeV, split := strings.Cut(\\2.kvCacheType, "/") // {MARK}: K/V split\n'
                  "\\1if !split {\n\\1\ttypeV = typeK\n\\1}\n"
                  '\\1params = append(params, "--cache-type-k", typeK, "--cache-type-v", typeV)',
             expect=r'"--cache-type-k", typeK, "--cache-type-v", typeV',
             why="k/v runs llama-server with --cache-type-k k --cache-type-v v (one name: both)"),
    ]


Grep = Callable[[str], list[tuple[str, int, str]]]  # extended regex -> (file, line, text) in Ollama's Go code


@dataclass(frozen=True)
class Outcome:
    """What one Go rule did to this Ollama: applied (anchor at file:line) or not needed (why). A rule that fails
    is no outcome: it stops the plan with a RuleError, before anything is built."""

    rule: str
    file: str
    status: str  # applied | not needed
    line: int | None
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "file": self.file, "status": self.status, "line": self.line, "why": self.why}

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"  {self.rule:<28} {self.status:<10} {where}: {self.why}"


def _callers(grep: Grep, name: str) -> list[tuple[str, int, str]]:
    return [hit for hit in grep(rf"\b{name}\(") if not re.match(rf"\s*func\b.*\b{name}\(", hit[2])]


def kv_bytes_needed(grep: Grep, enclosing: Callable[[str, int], str | None]) -> tuple[bool, str]:
    """Does anything that runs use ``kvCacheBytesPerElement``? (era C v0.30+: only ``GraphSize``, which nothing
    calls: Ollama sizes memory from llama-server's log instead)."""
    users = {enclosing(f, n) for f, n, _ in _callers(grep, "kvCacheBytesPerElement")}
    users.discard(None)
    live = [u for u in users if u and _callers(grep, u)]
    if live or not users:
        return True, ""
    return False, (f"kvCacheBytesPerElement is used only by {', '.join(sorted(u for u in users if u))}, which "
                   "nothing calls in this version (Ollama sizes memory from llama-server's log)")


def allowlists_not_needed(grep: Grep, blocks: list[Block]) -> list[Outcome]:
    """Era C: the era B allowlist rules, each with the evidence why this Ollama does not need it."""
    passes = grep(r"envconfig\.KvCacheType\(\)")
    where = next(((f, n) for f, n, _ in passes if f.startswith("llm/")), passes[0][:2] if passes else ("", 0))
    unchecked = (f"{where[0]}:{where[1]} passes OLLAMA_KV_CACHE_TYPE to llama-server unchecked" if where[0]
                 else "this Ollama passes the cache type to llama-server")
    supports = "SupportsKVCacheType has no caller" if not _callers(grep, "SupportsKVCacheType") else \
        "SupportsKVCacheType is not on the llama-server path"
    return [Outcome(r.name, r.file, "not needed", None,
                    f"{unchecked}; {supports}; the fork's own list decides (era B allowlist)")
            for r in era_b_rules(blocks)]


def render_outcomes(outcomes: list[Outcome]) -> list[str]:
    """Applied rules one a line (with file:line); rules not needed grouped by their reason."""
    lines = [o.render() for o in outcomes if o.status != "not needed"]
    reasons: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.status == "not needed":
            reasons.setdefault(o.why, []).append(o)
    for why, group in reasons.items():
        files = sorted({o.file for o in group})
        lines.append(f"  not needed ({len(group)}): {', '.join(o.rule for o in group)} ({', '.join(files)}): {why}")
    return lines
