"""``invoke api-check``: can this fork replace the llama.cpp that this Ollama pins?

Every finding is a :class:`~ollama_turbo.apidiff.Change` with a classification (``severity``)
and what it means for *this* Ollama (``counts_as``, which decides the verdict):

- C API changes count in full where Ollama's cgo code uses the symbol (era B) or where the
  value is persisted (``ggml_type`` and ``llama_ftype`` ids live in GGUF files and KV state);
  otherwise an incompatible C API change counts as ``review`` and says why (cgo recompiles
  constants; ops are not stored in files, but RPC peers would disagree).
- Contract findings (a missing llama-server flag, an unsupported cache type, a patch that
  does not apply) count in full.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ollama_turbo.check import apidiff, carry, carry_report, carry_rules, contract, fork_contract
from ollama_turbo.check.apidiff import COMPATIBLE, INCOMPATIBLE, REVIEW, Change
from ollama_turbo.check.placement import PlacementRule
from ollama_turbo.core import capi, sources
from ollama_turbo.core.era import Era
from ollama_turbo.core.errors import EXIT_INCOMPATIBLE, EXIT_OK, EXIT_REVIEW, ConfigError, SourceError
from ollama_turbo.core.settings import Settings
from ollama_turbo.fork import sources as fork_sources

PERSISTED_ENUMS = {"ggml_type", "llama_ftype"}


@dataclass
class Suppression:
    symbol: str
    reason: str
    kind: str | None = None

    def matches(self, c: Change) -> bool:
        return fnmatch.fnmatchcase(c.symbol, self.symbol) and (self.kind is None or self.kind == c.kind)


def load_apiignore(path: Path) -> list[Suppression]:
    if not path.exists():
        return []
    if path.is_dir():
        raise ConfigError(f"--apiignore {path}: is a folder, not a file", hint="give the .apiignore file itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}",
                          hint="give a readable UTF-8 .apiignore, or leave --apiignore out") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{symbol, reason, kind}} entries")
    out = []
    for i, e in enumerate(data):
        if not isinstance(e, dict) or not isinstance(e.get("symbol"), str) or not e.get("reason"):
            raise ConfigError(f"{path}: entry {i + 1} needs 'symbol' and a non-empty 'reason'",
                              hint="every accepted change must say why it is accepted")
        unknown = set(e) - {"symbol", "reason", "kind"}
        if unknown:
            raise ConfigError(f"{path}: entry {i + 1} has unknown key {sorted(unknown)[0]!r}")
        out.append(Suppression(e["symbol"], str(e["reason"]), e.get("kind")))
    return out


@dataclass(frozen=True)
class CarryOptions:
    """How Ollama's compat patches are carried onto the fork: the architectures left out, the user's rules."""

    leave_out: tuple[str, ...] = ()
    rules: tuple[PlacementRule, ...] = ()

    @classmethod
    def of(cls, settings: Settings, leave_out: str = "", placements: str = "") -> CarryOptions:
        from ollama_turbo.core.settings import names_flag

        path = placements or settings.build.placements
        return cls(tuple(dict.fromkeys([*settings.build.leave_out, *names_flag(leave_out, "--leave-out")])),
                   tuple(carry_rules.load(Path(path))) if path else ())


@dataclass
class Report:
    era: Era
    ollama: dict[str, str]
    fork: dict[str, str]
    pinned: dict[str, str]
    target: str
    changes: list[Change] = field(default_factory=list)
    flags: list[contract.Flag] = field(default_factory=list)
    cache_types: dict[str, Any] = field(default_factory=dict)
    patches: list[contract.PatchResult] = field(default_factory=list)  # era B: git am -3 on the fork
    carried: list[carry.Carried] = field(default_factory=list)  # era C: compat patches carried onto the fork
    merge_base: str = ""  # era C: the base of 3-way merges
    allowlists: list[contract.Allowlist] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        live = [c for c in self.changes if not c.suppressed]
        if any(c.counts_as == INCOMPATIBLE for c in live):
            return INCOMPATIBLE
        if any(c.counts_as == REVIEW for c in live):
            return REVIEW
        return COMPATIBLE

    def exit_code(self) -> int:
        live = [c for c in self.changes if not c.suppressed]
        code = EXIT_OK
        if any(c.counts_as == REVIEW for c in live):
            code |= EXIT_REVIEW
        if any(c.counts_as == INCOMPATIBLE for c in live):
            code |= EXIT_INCOMPATIBLE
        return code

    def count(self, severity: str) -> int:
        return sum(1 for c in self.changes if c.counts_as == severity and not c.suppressed)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "exit_code": self.exit_code(), "era": self.era,
            "ollama": self.ollama, "fork": self.fork, "pinned": self.pinned, "target": self.target,
            "changes": [c.to_json() for c in self.changes],
            "flags": [vars(f) for f in self.flags],
            "cache_types": self.cache_types,
            "patches": [p.to_json() for p in self.patches] + [c.to_json() for c in self.carried],
            "merge_base": self.merge_base,
            "kv_allowlists": [vars(a) for a in self.allowlists],
            "timings": self.timings,
        }


def _enum_of(c: Change, model: capi.HeaderModel) -> str | None:
    for name, e in model.enums.items():
        if name == c.symbol or any(n == c.symbol for n, _ in e.constants):
            return name
    return None


def assess(changes: list[Change], era: Era, refs: dict[str, list[str]], old: capi.HeaderModel,
           new: capi.HeaderModel) -> None:
    """Set ``used_by_ollama`` and ``counts_as`` on C API changes."""
    for c in changes:
        names = {c.symbol, *c.related}
        enum = _enum_of(c, new) or _enum_of(c, old)
        if enum and not c.kind.endswith("_added"):
            names.add(enum)
        uses = sorted({u for n in names for u in refs.get(n, [])})
        c.used_by_ollama = bool(uses) if era.rules.links_c_api else False
        c.uses = uses[:5]
        counts = c.severity
        if c.severity == INCOMPATIBLE:
            persisted = enum in PERSISTED_ENUMS and c.kind.startswith("enum")
            if persisted:
                c.detail += f"; {enum} ids are stored in GGUF files and KV state"
            elif not era.rules.links_c_api:
                counts = REVIEW
                c.detail += "; era C Ollama does not link the C API (only the fork's own llama-server does)"
            elif c.kind.startswith("enum"):
                counts = REVIEW
                c.detail += ("; cgo compiles the new values into Ollama, so its own calls stay right, "
                             "but ids sent over RPC or stored elsewhere change meaning")
            elif not c.used_by_ollama:
                counts = REVIEW
                c.detail += "; Ollama's cgo code does not use it"
        c.counts_as = counts


def _contract_change(kind: str, symbol: str, where: str, severity: str, detail: str) -> Change:
    return Change(kind, symbol, where, severity, detail, used_by_ollama=True)


def check(settings: Settings, *, ollama: sources.Checkout, fork: sources.Checkout,
          upstream_url: str | None = None, target: str = capi.DEFAULT_TARGET,
          suppressions: list[Suppression] | None = None, carry: CarryOptions | None = None) -> Report:
    import time

    ws = settings.workspace / "api-check"
    info = sources.detect(ollama)
    trees = ws / "trees"
    ollama_dir = ollama.export(trees / f"ollama-{ollama.sha[:12]}")
    fork_dir = fork.export(trees / f"fork-{fork.sha[:12]}", [*fork_sources.FORK_PATHS, "src/llama-arch.h"])
    report = Report(
        era=info.era,
        ollama={"url": ollama.url, "ref": ollama.ref, "sha": ollama.sha, "version": info.version},
        fork={"url": fork.url, "ref": fork.ref, "sha": fork.sha}, pinned={}, target=target)
    upstream: sources.Checkout | None = None
    era = info.era
    if era.rules.pinned_includes:  # the pinned llama.cpp is vendored in Ollama's tree
        pinned_dirs = [ollama_dir / d for d in era.rules.pinned_includes]
        report.pinned = {"kind": "vendored", "fetch_head": info.pin,
                         "source": f"{ollama.url}@{ollama.short}: " + ", ".join(era.rules.pinned_includes)}
    else:
        up_url = upstream_url or settings.sources.upstream.url
        upstream = sources.open_source("upstream", up_url, info.pin, settings.workspace)
        up_dir = upstream.export(trees / f"upstream-{upstream.sha[:12]}", fork_sources.FORK_PATHS)
        pinned_dirs = [up_dir / "include", up_dir / "ggml/include"]
        report.pinned = {"kind": "tag", "tag": info.pin, "sha": upstream.sha, "source": up_url}
    t0 = time.perf_counter()
    old = capi.parse(pinned_dirs, target=target)
    new = capi.parse([fork_dir / "include", fork_dir / "ggml/include"], target=target)
    t1 = time.perf_counter()
    report.changes = apidiff.diff(old, new, old_name="pinned llama.cpp", new_name="fork")
    report.timings = {"parse_s": round(t1 - t0, 3), "diff_s": round(time.perf_counter() - t1, 3)}
    refs = contract.cgo_references(ollama_dir) if era.rules.links_c_api else {}
    assess(report.changes, era, refs, old, new)
    the = _contract(report, info, ollama_dir, fork, fork_dir, ws, upstream, carry or CarryOptions())
    if era.rules.server_argv:  # the fork's llama-server is given the cache types by name
        _cache_types(report, settings, the)
        _server_contract(report, the)
    else:
        _vendored_contract(report, settings, the, ollama_dir, fork, ws)
    for c in report.changes:
        for s in suppressions or []:
            if s.matches(c):
                c.suppressed = s.reason
                break
    return report


def _contract(report: Report, info: sources.OllamaInfo, ollama_dir: Path, fork: sources.Checkout, fork_dir: Path,
              ws: Path, upstream: sources.Checkout | None, opts: CarryOptions) -> fork_contract.Contract:
    """The one evaluation of Ollama's contract with the fork, which the report then reads."""
    if info.era.rules.server_argv and not (ollama_dir / "llm/llama_server.go").exists():
        raise SourceError(f"ollama {report.ollama['ref']}: llm/llama_server.go not found; cannot tell "
                          "which llama-server flags Ollama passes")
    scratch = ws / "scratch" / f"carry-{fork.sha[:12]}"
    if scratch.exists():
        shutil.rmtree(scratch)
    if upstream is None:  # a vendored era: no 3-way merges, Ollama's own mechanism applies its patches
        base = carry.Upstream("", absent=f"era {info.era}: {info.era.rules.patch_mechanism}")
    else:
        pinned = upstream
        base = carry.Upstream(f"llama.cpp {info.pin} ({report.pinned.get('source', '')})",
                              read=lambda p: pinned.read(p) if pinned.exists(p) else None)
    the = fork_contract.evaluate(info, ollama_dir, fork, fork_dir, upstream=base, scratch=scratch,
                                 leave_out=opts.leave_out, rules=opts.rules)
    report.allowlists = the.allowlists
    report.flags, report.carried, report.merge_base = the.flags, the.carried, the.upstream
    if info.era.rules.carries_patches:
        report.timings["carry_s"] = the.carry_seconds
    return the


def _vendored_contract(report: Report, settings: Settings, the: fork_contract.Contract, ollama_dir: Path,
                       fork: sources.Checkout, ws: Path) -> None:
    """A vendored era: the Go allowlists the build must extend, and Ollama's patches tried on the fork with its
    own mechanism (``git am -3``)."""
    wanted = {settings.kv.type_k, settings.kv.type_v}
    for a in report.allowlists:
        lacking = sorted(t for t in wanted if t not in a.types and t != "f16")
        if lacking:
            report.changes.append(_contract_change(
                "kv_allowlist", a.function, a.file, REVIEW,
                f"{a.file}:{a.line} {a.function} knows {', '.join(a.types) or 'nothing'}; the build's Go "
                f"rules must add {', '.join(lacking)} or Ollama silently falls back to f16"))
    patches = [ollama_dir / p for p in the.patches]
    report.patches = contract.try_am_patches(patches, fork, ws / "scratch" / f"am-{fork.sha[:12]}",
                                             ollama_dir)
    _patch_changes(report, f"{the.era.rules.patch_dir} (git am -3)")


def _cache_types(report: Report, settings: Settings, the: fork_contract.Contract) -> None:
    """The configured K/V types against the cache types the fork's llama-server accepts."""
    types = the.fork_types
    wanted = [settings.kv.type_k, settings.kv.type_v]
    report.cache_types = {"configured": {"k": wanted[0], "v": wanted[1]}, "fork": types,
                          "ok": all(t in types for t in wanted)}
    for t in sorted(set(wanted)):
        if t not in types:
            report.changes.append(_contract_change(
                "cache_type_unsupported", t, "common/arg.cpp", INCOMPATIBLE,
                f"the fork's --cache-type-k/-v accept {', '.join(types) or 'nothing'}; {t} is not among them"))


def _server_contract(report: Report, the: fork_contract.Contract) -> None:
    """An era whose contract is llama-server's command line: each flag the fork lacks, and each compat patch
    that had to be carried, refused or left out."""
    renamed = {r.flag: r for r in the.renamed_flags}
    for f in report.flags:
        if not f.in_fork and f.name in renamed:
            r = renamed[f.name]
            report.changes.append(_contract_change(
                "flag_renamed", f.name, "llm/llama_server.go", REVIEW,
                f"Ollama passes {f.name} {r.value} under a condition (llm/llama_server.go:{f.line}); the fork "
                f"has it as {r.fork_flag}, which the build passes instead (Go rule)"))
        elif not f.in_fork:
            report.changes.append(_contract_change(
                "flag_missing", f.name, "llm/llama_server.go", REVIEW,
                f"Ollama passes {f.name} ({'always' if f.always else 'under a condition'}, "
                f"llm/llama_server.go:{f.line}) but the fork's common/arg.cpp does not define it; "
                + ("the build drops it from the argv (Go rule drop-flag" + f.name + "), else llama-server would "
                   "exit with 'invalid argument'" if f.always else
                   "llama-server exits with 'invalid argument' when that condition holds")))
    for c in report.carried:
        if c.status == carry.REFUSED:
            report.changes.append(_contract_change(
                "patch_refused", Path(c.patch).name, c.patch, INCOMPATIBLE, c.why + (f"; next step: {c.hint}"
                                                                                    if c.hint else "")))
        elif c.status == carry.CARRIED:
            report.changes.append(_contract_change(
                "patch_carried", Path(c.patch).name, c.patch, REVIEW,
                f"{c.patch} does not apply to the fork as it is; carried hunk by hunk: {c.summary()} "
                "(each hunk's method and file:line below)"))
        elif c.status == carry.LEFT_OUT:
            report.changes.append(_contract_change(
                "feature_left_out", c.feature or Path(c.patch).name, c.patch, REVIEW, c.why))


def _patch_changes(report: Report, what: str) -> None:
    for p in report.patches:
        if p.status in ("applied", "already-applied"):
            continue
        detail = f"{p.patch} does not apply to the fork ({what}): " + ", ".join(p.files)
        if p.missing:
            detail += f"; files the fork lacks: {', '.join(p.missing)}"
        report.changes.append(_contract_change("patch_conflict", Path(p.patch).name, p.patch,
                                               INCOMPATIBLE, detail))


# --- rendering ----------------------------------------------------------------------------

MARK = {INCOMPATIBLE: "INCOMPATIBLE", REVIEW: "review", COMPATIBLE: "ok"}


def render(r: Report, markdown: bool = False) -> str:
    lines: list[str] = []
    def h(title: str) -> str:
        return f"## {title}" if markdown else title

    o, f = r.ollama, r.fork
    pin = r.pinned.get("tag") or f"FETCH_HEAD {r.pinned.get('fetch_head', '')[:12]} (vendored)"
    lines.append(("# " if markdown else "") + f"api-check: {f['url']} @ {f['ref']} ({f['sha'][:9]})")
    lines.append(f"against Ollama {o['version']} ({o['ref']} @ {o['sha'][:9]}, era {r.era}), which pins "
                 f"llama.cpp {pin}; layouts for {r.target}")
    lines.append("")
    lines.append(f"verdict: {r.verdict.upper()} (exit {r.exit_code()}): {r.count(INCOMPATIBLE)} incompatible, "
                 f"{r.count(REVIEW)} to review, "
                 f"{sum(1 for c in r.changes if c.suppressed)} accepted in .apiignore")
    lines.append("")
    capi_changes = [c for c in r.changes if c.kind not in CONTRACT_KINDS]
    lines.append(h(f"C API ({len(capi_changes)} changes; parse {r.timings.get('parse_s', 0):.2f} s)"))
    if markdown:
        lines += ["", "| counts as | kind | symbol | header | used by Ollama | detail |", "|---|---|---|---|---|---|"]
    for c in capi_changes:
        if c.suppressed:
            continue
        used = "yes: " + ", ".join(c.uses[:2]) if c.used_by_ollama else "no"
        counts = c.counts_as
        if markdown:
            lines.append(f"| {MARK[counts]} | {c.kind} | `{c.symbol}` | {c.header} | {used} | {c.detail} |")
        else:
            lines.append(f"  {MARK[counts]:<13} {c.kind:<22} {c.symbol}  [{c.header}; used by Ollama: {used}]")
            if counts != COMPATIBLE:
                lines.append(f"                {c.detail}")
    lines.append("")
    if r.era.rules.server_argv:
        lines.append(h("llama-server flags Ollama passes (llm/llama_server.go)"))
        renamed = {c.symbol for c in r.changes if c.kind == "flag_renamed"}
        for fl in r.flags:
            state = "ok" if fl.in_fork else ("passed by the fork's older name (Go rule)" if fl.name in renamed else
                                              "MISSING: dropped by the build (Go rule)" if fl.always else
                                              "missing: fails when its condition holds")
            lines.append(f"  {fl.name:<18} {'always' if fl.always else 'conditional':<12} {state}")
        ct = r.cache_types
        lines.append("")
        lines.append(h("cache types"))
        lines.append(f"  configured K={ct['configured']['k']} V={ct['configured']['v']}: "
                     f"{'accepted' if ct['ok'] else 'NOT accepted'} by the fork ({', '.join(ct['fork'])})")
        lines.append("")
    else:
        lines.append(h("Go KV-cache allowlists the build must extend"))
        for a in r.allowlists:
            lines.append(f"  {a.file}:{a.line} {a.function}: {', '.join(a.types)}")
        lines.append("")
    if r.era.rules.carries_patches:
        lines.append(h(f"Ollama's compat patches carried onto the fork ({r.era.rules.patch_dir}; 3-way base: "
                       f"{r.merge_base})"))
        lines += carry_report.render(r.carried)
    else:
        lines.append(h(f"Ollama's patches on the fork ({r.era.rules.patch_dir})"))
        for p in r.patches:
            extra = f" ({', '.join(p.files)})" if p.status not in ("applied", "already-applied") else ""
            lines.append(f"  {p.status:<16} {p.patch}{extra}")
        if not r.patches:
            lines.append("  (none)")
    supp = [c for c in r.changes if c.suppressed]
    if supp:
        lines.append("")
        lines.append(h("accepted in .apiignore"))
        for c in supp:
            lines.append(f"  {c.kind:<22} {c.symbol}: {c.suppressed}")
    return "\n".join(lines) + "\n"


CONTRACT_KINDS = {"flag_missing", "flag_renamed", "cache_type_unsupported", "patch_conflict", "patch_refused",
                  "patch_carried", "feature_left_out", "kv_allowlist"}
