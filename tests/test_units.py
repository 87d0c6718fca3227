"""Pure logic without toolchains: the rule engine, launchd's restart sequence, source mirrors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ollama_turbo.core import proc, rules, sources
from ollama_turbo.core import settings as config
from ollama_turbo.core.errors import ConfigError, SourceError
from ollama_turbo.core.kv_types import KVPair
from ollama_turbo.deploy import services
from ollama_turbo.deploy.managers import manager_for
from ollama_turbo.sample.gitrepo import Repo

GO = """package ggml

func kvCacheBytesPerElement(cacheType string) float64 {
	switch cacheType {
	case "q8_0":
		return 1
	default:
		return 2
	}
}

func other() {
	switch x {
	}
}
"""


def test_rule_inserts_inside_the_named_function_only() -> None:
    r = rules.Rule("kv", "fs/ggml/ggml.go", r"^\s*switch \w+ \{\s*$", "insert_after",
                   '\tcase "turbo4":\n\t\treturn 0.5\n', function="kvCacheBytesPerElement",
                   expect=r'case "turbo4":')
    out = rules.apply_rule(GO, r)
    body = out[out.index("func kvCacheBytesPerElement"):out.index("func other")]
    assert 'case "turbo4"' in body and out.count('case "turbo4"') == 1


def test_rule_anchor_must_match_exactly_once() -> None:
    both = rules.Rule("sw", "x.go", r"^\s*switch \w+ \{", "insert_after", "// x\n")
    with pytest.raises(rules.RuleError, match="found 2 times"):
        rules.apply_rule(GO, both)
    gone = rules.Rule("gone", "x.go", r"nothing like this", "delete_line")
    with pytest.raises(rules.RuleError, match="x.go: rule gone: anchor .* not found"):
        rules.apply_rule(GO, gone)
    twice = rules.Rule("dup", "x.go", r"^\s*default:", "insert_after", '\tcase "q8_0":\n', expect=r'case "q8_0":',
                       function="kvCacheBytesPerElement")
    with pytest.raises(rules.RuleError, match="should occur once"):
        rules.apply_rule(GO, twice)


def test_rules_are_all_or_nothing(tmp_path: Path) -> None:
    f = tmp_path / "a.go"
    f.write_text(GO)
    good = rules.Rule("ok", "a.go", r"^\s*default:", "replace", "\tdefault: // changed")
    bad = rules.Rule("bad", "a.go", r"missing anchor", "delete_line")
    with pytest.raises(rules.RuleError):
        rules.apply_rules(tmp_path, [good, bad])
    assert f.read_text() == GO


@dataclass
class Scripted:
    """A transport that answers launchctl the way launchd can: exit 5 once, 'in progress' once."""

    name: str = "mac"
    calls: list[str] = field(default_factory=list)
    bootstrap_codes: list[int] = field(default_factory=lambda: [5, 0])
    bootout_codes: list[int] = field(default_factory=lambda: [36, 0, 0])

    def sh(self, script: str, *, check: bool = True, timeout: float | None = 120) -> proc.Result:
        self.calls.append(script)
        if script.startswith("id -u"):
            return proc.Result([script], 0, "501\n", "")
        if script.startswith("id -un"):
            return proc.Result([script], 0, "me\n", "")
        if script.startswith("ls -ln /dev/console"):
            return proc.Result([script], 0, "0\n", "")
        if script.startswith("launchctl bootout"):
            code = self.bootout_codes.pop(0) if self.bootout_codes else 113
            return proc.Result([script], code, "", "Boot-out failed: 36: Operation now in progress" if code == 36
                               else "")
        if script.startswith("launchctl bootstrap"):
            code = self.bootstrap_codes.pop(0)
            return proc.Result([script], code, "", "Bootstrap failed: 5: Input/output error" if code else "")
        if script.startswith("launchctl print"):
            return proc.Result([script], 0, "\tstate = running\n\tpid = 4711\n", "")
        return proc.Result([script], 0, "", "")


def test_launchd_restart_retries_bootout_in_progress_and_bootstrap_exit_5() -> None:
    host = config.parse({"hosts": {"mac": {}}}).host("mac")
    t = Scripted()
    m = manager_for(t, host, services.Layout("/Users/me", "/Users/me/.ollama-turbo", "/Users/me/m"))  # type: ignore[arg-type]
    m.restart()
    launchctl = [c.split()[1] for c in t.calls if c.startswith("launchctl")]
    # bootout (in progress) -> bootout -> bootstrap (5) -> bootout -> bootstrap -> kickstart -k -> print
    assert launchctl == ["bootout", "bootout", "bootstrap", "bootout", "bootstrap", "kickstart", "print"]
    assert all("user/501" in c for c in t.calls if c.startswith("launchctl bootstrap"))
    assert any("kickstart -k user/501/com.ollama-turbo.ollama" in c for c in t.calls)
    assert m.pid() == 4711


def test_gui_domain_when_the_user_owns_the_console() -> None:
    host = config.parse({"hosts": {"mac": {}}}).host("mac")
    t = Scripted()
    original = t.sh

    def console_owner(script: str, **kw: object) -> proc.Result:
        if script.startswith("ls -ln /dev/console"):
            return proc.Result([script], 0, "501\n", "")
        return original(script)

    t.sh = console_owner  # type: ignore[method-assign]
    m = manager_for(t, host, services.Layout("/Users/me", "/p", "/m"))  # type: ignore[arg-type]
    assert m.domain() == "gui/501"


def test_sources_mirror_a_git_url_once(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "remote")
    repo.write({"README.md": "x\n"})
    sha = repo.commit("first", tag="v1")
    ws = tmp_path / "ws"
    url = f"file://{repo.path}"
    co = sources.open_source("ollama", url, "v1", ws)
    assert co.sha == sha and not co.local and co.git_dir.is_relative_to(ws / "sources")
    repo.write({"README.md": "y\n"})
    sha2 = repo.commit("second", tag="v2")
    assert sources.open_source("ollama", url, "v2", ws).sha == sha2  # fetched again
    with pytest.raises(SourceError, match="ref 'v9' not found .* v2, v1"):
        sources.open_source("ollama", url, "v9", ws)
    with pytest.raises(SourceError, match="cannot fetch"):
        sources.open_source("ollama", f"file://{tmp_path}/nowhere", "main", ws)


ARGV = """package llm

func buildArgs(opts Options) ([]string, error) {
	path, err := find()
	if err != nil {
		return nil, err
	}
	args := []string{
		"--model", path,
		"--port", "0",
	}
	if opts.Threads > 0 {
		args = append(args, "--threads", "4")
	}
	return withProjector(args, opts), nil
}

func withProjector(args []string, opts Options) []string {
	args = append(args, "--log-verbosity", "4")
	if opts.Projector == "" {
		return args
	}
	return append(args, "--mmproj", opts.Projector)
}
"""


def test_flags_after_a_guard_clause_are_conditional() -> None:
    from ollama_turbo.check import contract

    flags = {f.name: f.always for f in contract.server_flags(ARGV)}
    assert flags == {"--model": True, "--port": True, "--threads": False, "--log-verbosity": True,
                     "--mmproj": False}


def test_go_mod_requirements_and_download_errors_are_parsed() -> None:
    from ollama_turbo.builder import go_modules

    mod = ("module x\n\ngo 1.26\n\nrequire a.example/one v1.2.3\n\nrequire (\n\tb.example/two v0.1.0 // indirect\n"
           "\tc.example/three v2.0.0+incompatible\n)\n")
    assert go_modules.required(mod) == ["b.example/two@v0.1.0", "c.example/three@v2.0.0+incompatible",
                                        "a.example/one@v1.2.3"]
    out = ('{\n\t"Path": "a.example/one",\n\t"Version": "v1.2.3",\n\t"Error": "module lookup disabled by '
           'GOPROXY=off"\n}\n{\n\t"Path": "b.example/two",\n\t"Version": "v0.1.0",\n\t"Zip": "/x.zip"\n}\n')
    missing = go_modules.parse_download(out)
    assert [m.module for m in missing] == ["a.example/one@v1.2.3"]
    assert "GOPROXY=off" in missing[0].error


def test_credentials_are_redacted_from_urls_env_and_trees() -> None:
    from ollama_turbo.core import redact

    assert redact.text("cannot fetch https://me:ghp_secret@github.com/x.git: denied") == \
        "cannot fetch https://me:***@github.com/x.git: denied"
    assert redact.text("https://github.com/ollama/ollama.git") == "https://github.com/ollama/ollama.git"
    assert redact.env({"HF_TOKEN": "abc", "TURBO_LAYER_ADAPTIVE": "7", "MIRROR": "https://u:p@m/x"}) == \
        {"HF_TOKEN": "***", "TURBO_LAYER_ADAPTIVE": "7", "MIRROR": "https://u:***@m/x"}
    assert redact.tree({"fork": {"url": "ssh://git:pw@host/f.git"}, "n": 1}) == \
        {"fork": {"url": "ssh://git:***@host/f.git"}, "n": 1}


def test_a_port_out_of_range_and_listening_everywhere() -> None:
    with pytest.raises(ConfigError, match=r"hosts.box.listen.*port 99999 is not a TCP port"):
        config.parse({"hosts": {"box": {"listen": "127.0.0.1:99999"}}})
    s = config.parse({"hosts": {"a": {"listen": "0.0.0.0:11434"}, "b": {"listen": "10.0.0.5:11434"}}})
    assert s.host("a").listens_everywhere and not s.host("b").listens_everywhere


class _Dropping:
    """A Fabric connection whose commands time out or lose the connection."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def run(self, *args: object, **kwargs: object) -> None:
        raise self.exc

    def put(self, *args: object, **kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [EOFError("socket closed"), OSError(104, "Connection reset by peer")])
def test_a_dropped_connection_is_a_transport_error_not_a_traceback(exc: Exception) -> None:
    from ollama_turbo.deploy.transport import SSHTransport, TransportError

    t = SSHTransport.__new__(SSHTransport)
    t.name, t.conn = "mac", _Dropping(exc)
    with pytest.raises(TransportError, match="mac: the connection failed during 'true'"):
        t.sh("true")
    with pytest.raises(TransportError, match="mac: the connection failed during the upload of x.bin"):
        t.put(Path("/tmp/x.bin"), "/r/x.bin")


def test_a_stalled_command_is_a_transport_error() -> None:
    from invoke.exceptions import CommandTimedOut

    from ollama_turbo.deploy.transport import SSHTransport, TransportError

    class Result:
        command, exited, stdout, stderr, hide = "sleep 999", -1, "", "", ()

    t = SSHTransport.__new__(SSHTransport)
    t.name, t.conn = "mac", _Dropping(CommandTimedOut(Result(), timeout=5))
    with pytest.raises(TransportError, match="mac: no answer within 5 s"):
        t.sh("sleep 999")


def test_local_writes_replace_the_file_in_one_rename(tmp_path: Path) -> None:
    from ollama_turbo.deploy.transport import LocalTransport

    target = tmp_path / "cfg" / "ollama.plist"
    LocalTransport().write(str(target), "one\n")
    inode = target.stat().st_ino
    LocalTransport().write(str(target), "two\n")
    assert target.read_text() == "two\n" and target.stat().st_ino != inode  # a new file renamed over the old
    assert sorted(p.name for p in target.parent.iterdir()) == ["ollama.plist"]


def test_the_command_deadline_caps_every_remote_command_and_rejects_a_bad_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_turbo.core.errors import UsageError
    from ollama_turbo.deploy.transport import command_deadline

    monkeypatch.delenv("TURBO_SSH_COMMAND_TIMEOUT", raising=False)
    assert command_deadline(120) == 120 and command_deadline(None) is None
    monkeypatch.setenv("TURBO_SSH_COMMAND_TIMEOUT", "4")
    assert command_deadline(120) == 4 and command_deadline(None) == 4 and command_deadline(2) == 2
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("TURBO_SSH_COMMAND_TIMEOUT", bad)
        with pytest.raises(UsageError, match=f"TURBO_SSH_COMMAND_TIMEOUT='{bad}' is not a positive number"):
            command_deadline(120)


@pytest.mark.parametrize(("data", "words"), [
    ({"version": "v", "era": "C"}, "not a build manifest (no files)"),
    ({"version": "v", "era": "D", "files": {}}, "era is 'D', expected B or C"),
    ({"version": "v", "era": "C", "files": {"bin/ollama": 3}}, "expected an object of file -> sha256"),
    ({"version": "v", "era": "C", "files": {}, "gpu": {"arch": "90"}}, "expected an object with arch, runner_dir"),
    ({"version": "v", "era": "C", "files": {}, "cache_types": {"turbo4": {"block": "x"}}}, "cache_types is"),
    ({"version": "v", "era": "C", "files": {}, "build_flags": {"tool_paths": ["x"]}}, "whose tool_paths is"),
    ([1, 2], "not a build manifest (a JSON list, not an object)"),
])
def test_a_manifest_is_checked_once_by_its_one_loader(data: object, words: str) -> None:
    import json

    from ollama_turbo.core import manifest

    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse(json.dumps(data), Path("dist/manifest.json"))
    assert str(info.value).startswith("dist/manifest.json: ") and words in str(info.value)
    assert "next step: rebuild with invoke build-ollama" in str(info.value)


def test_a_manifests_fields_are_typed() -> None:
    import json

    from ollama_turbo.core import manifest

    m = manifest.parse(json.dumps({
        "version": "0.30.0-turbo+a.cuda.b", "era": "C", "backend": "cuda", "files": {"bin/ollama": "ab"},
        "platform": {"os": "linux", "arch": None},
        "gpu": {"arch": "90", "runner_dir": "lib/ollama/cuda_v13", "module": "lib/ollama/cuda_v13/libggml-cuda.so"},
        "cache_types": {"turbo4": {"block": 128, "bytes": 68}},
        "per_model_kv": {"supported": True, "allowed": ["f16", "turbo4"]},
        "build_flags": {"tool_paths": {"llama-bench": "lib/ollama/llama-bench"}}}), Path("/d/manifest.json"))
    assert (m.dist, m.platform, m.cache_types["turbo4"]) == (Path("/d"), {"os": "linux"}, (128, 68))
    assert m.gpu is not None and m.gpu.arch == "90" and m.per_model_kv.allowed == ("f16", "turbo4")
    assert m.tool_path("llama-bench") == Path("/d/lib/ollama/llama-bench")
    assert m.tool_env()["GGML_BACKEND_PATH"] == "/d/lib/ollama/cuda_v13/libggml-cuda.so"


def test_a_hosts_manifest_has_no_files_here() -> None:
    import json

    from ollama_turbo.core import manifest

    m = manifest.parse(json.dumps({"version": "v", "era": "C", "files": {}}), Path("/p/current/manifest.json"),
                       host="mac")
    assert (m.version, m.summary()["era"]) == ("v", "C")
    for files_here in (m.verify, lambda: m.tool_path("llama-bench")):
        with pytest.raises(manifest.ManifestError, match="the manifest of a release on mac, not a build here"):
            files_here()


def test_an_era_b_build_with_two_cache_types_is_refused_before_any_host() -> None:
    import json

    from ollama_turbo.core import manifest
    from ollama_turbo.deploy import deploy_plan

    s = config.parse({"kv": {"type_k": "q8_0", "type_v": "turbo4"},
                      "hosts": {"box": {"ssh": "nowhere.invalid", "os": "linux"}}})
    era_b = manifest.parse(json.dumps({"version": "0.24.0-turbo+x", "era": "B", "files": {}}), Path("d/manifest.json"))
    from ollama_turbo.core import server_kv

    with pytest.raises(server_kv.PairNotPossible, match="era B Ollama has one cache type for K and V; q8_0/turbo4 is "
                                                        "not"):
        deploy_plan.decide(s, s.host("box"), era_b)


def test_ollamas_repeat_guard_is_named_when_an_answer_has_no_timings() -> None:
    from ollama_turbo.prove.client import OLLAMA_SAFE_PREDICT, Completion, repeats

    assert repeats(["a", "b", "b", " b"]) == (2, "b") and repeats([" ", "\n"]) == (2, "")
    stuck = Completion("", 0, 0.0, 0, 0.0, 0.1, tokens=31, done=False, pieces=[" the"] * 31)
    why = stuck.why_no_timings()
    assert why.startswith("Ollama's repeat guard: the model gave 'the' 31 times in a row") and "31" in why
    assert OLLAMA_SAFE_PREDICT == 31
    cut = Completion("", 0, 0.0, 0, 0.0, 0.1, tokens=3, done=False, pieces=["a", "b", "c"])
    assert cut.why_no_timings().startswith("the stream ended after 3 tokens without its final message")
    ok = Completion("x", 5, 1.0, 2, 1.0, 0.1, tokens=2, done=True, pieces=["x", "y"])
    assert ok.why_no_timings() == ""


def test_quality_refuses_a_pass_that_ran_another_cache_than_its_label() -> None:
    from ollama_turbo.fork.behaviour import ForkBehaviour
    from ollama_turbo.prove import quality

    out = ("print_info: n_layer          = 4\nprint_info: n_head           = 8\nprint_info: n_head_kv        = 2\n"
           "llama_kv_cache: size =    8.50 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    4.25 MiB, "
           "V (f16):    4.25 MiB\n")
    assert quality.ran_with(out, KVPair("f16", "f16"), ForkBehaviour()).startswith("llama_kv_cache K (f16) V (f16)")
    with pytest.raises(quality.QualityError, match=r"was asked for q8_0/turbo4 and its output shows llama_kv_cache "
                                                   r"K \(f16\) V \(f16\), 4096 cells; expected K q8_0 V turbo4"):
        quality.ran_with(out, KVPair("q8_0", "turbo4"), ForkBehaviour())
    assert quality.ran_with("no cache lines", KVPair("turbo4", "turbo4"), ForkBehaviour()).startswith("not in")
