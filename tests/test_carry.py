"""Carrying Ollama's compat patches onto the fork, hunk by hunk: every method, every refusal.

The files here are small texts written for these tests: a "pinned" file, a "fork" of it that moved
elsewhere, and patches made against the pinned file with git (never placed by fuzz).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ollama_turbo.check import carry, placement, unidiff
from ollama_turbo.check.carry import Carrier, CarryError, Upstream
from ollama_turbo.check.placement import PlacementRule
from ollama_turbo.core.errors import SourceError

PINNED = """#include "a.h"
#include "b.h"
#include "c.h"

static int setup(void) {
    int x = 1;
    log("setting up, pass one");
    x += 2;
    x += 3;
    return x;
}

static int loop_a(int n) {
    for (int i = 0; i < n; i++) {
        step(i);
        more(i);
        again(i);
        last(i);
    }
    return n;
}

static int loop_b(int n) {
    for (int i = 0; i < n; i++) {
        step(i);
        more(i);
        again(i);
        last(i);
    }
    return n;
}
"""


def lines(text: str) -> list[str]:
    return text.splitlines()


def make_patch(tmp: Path, name: str, old: str, new: str, path: str = "src/x.c") -> tuple[str, str]:
    """A patch as git writes it: ``old`` -> ``new`` for ``path``."""
    repo = tmp / f"mk-{name.replace('/', '-')}"
    (repo / Path(path).parent).mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / path).write_text(old)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"],
                   check=True)
    (repo / path).write_text(new)
    return name, subprocess.run(["git", "-C", str(repo), "diff"], capture_output=True, text=True, check=True).stdout


def insert_after(text: str, anchor: str, new: str, nth: int = 1) -> str:
    out, seen = [], 0
    for ln in text.splitlines(keepends=True):
        out.append(ln)
        if ln.rstrip("\n") == anchor:
            seen += 1
            if seen == nth:
                out.append(new)
    assert seen >= nth, anchor
    return "".join(out)


def fork_tree(tmp: Path, text: str, path: str = "src/x.c") -> Path:
    tree = tmp / "tree"
    (tree / Path(path).parent).mkdir(parents=True, exist_ok=True)
    (tree / path).write_text(text)
    return tree


def upstream_of(files: dict[str, str]) -> Upstream:
    return Upstream("llama.cpp b9 (test)", read=files.get)


def test_a_patch_parses_into_its_hunks(tmp_path: Path) -> None:
    new = insert_after(insert_after(PINNED, '#include "c.h"', '#include "ours.h"\n'), "        more(i);",
                       "        hook(i);\n")
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", PINNED, new)
    p = unidiff.parse(name, text)
    assert p.targets == ["src/x.c"] and [h.index for h in p.hunks] == [1, 2]
    h1, h2 = p.hunks
    assert h1.insertion_only and h1.added == ['#include "ours.h"'] and h1.lead == 3
    assert h2.header.startswith("@@ -14,6 +15,7 @@") and h2.describe().startswith("hunk 2 (src/x.c @@ -14,6 +15,7 @@")
    assert p.sha256 == carry.sha256_text(text)
    with pytest.raises(unidiff.DiffError, match="no 'diff --git' header"):
        unidiff.parse("x.patch", "hello\n")


def test_context_places_once_and_names_every_line_when_ambiguous(tmp_path: Path) -> None:
    new = insert_after(PINNED, "        more(i);", "        hook(i);\n", nth=2)
    _, text = make_patch(tmp_path, "p.patch", PINNED, new)
    hunk = unidiff.parse("p.patch", text).hunks[0]
    with pytest.raises(placement.Unplaced) as exc:  # the two loops are alike within the hunk's context
        placement.by_context(lines(PINNED), hunk)
    assert exc.value.ambiguous == [17, 27] and "occur 2 times" in exc.value.reason
    unique = PINNED.replace("        again(i);", "        again(i + 1);", 1)
    placed = placement.by_context(lines(unique), hunk)
    assert placed.lines[placed.at] == "        hook(i);" and placed.note == ""
    indented = "\n".join("  " + ln if ln.strip() else ln for ln in lines(unique))
    placed = placement.by_context(lines(indented), hunk)
    assert placed.note == "indentation aside" and placed.lines[placed.at] == "        hook(i);"


def test_plain_apply_when_the_fork_has_the_pinned_lines(tmp_path: Path) -> None:
    new = insert_after(PINNED, "    x += 2;", "    hook();\n")
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", PINNED, new)
    c = Carrier(fork_tree(tmp_path, PINNED), upstream=Upstream("none", absent="none configured"))
    got = c.carry(unidiff.parse(name, text), text)
    assert got.status == carry.APPLIED and got.text == text  # Ollama's own patch, as it is
    assert [(p.method, p.line) for p in got.placements] == [("plain", 9)]


def test_three_way_places_a_hunk_whose_context_the_fork_changed_at_a_distance(tmp_path: Path) -> None:
    new = insert_after(PINNED, "    x += 2;", "    hook();\n")
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", PINNED, new)
    fork = PINNED.replace('log("setting up, pass one");', 'log("set up");').replace("#include \"b.h\"\n", "")
    tree = fork_tree(tmp_path, fork)
    c = Carrier(tree, upstream=upstream_of({"src/x.c": PINNED}))
    got = c.carry(unidiff.parse(name, text), text)
    assert got.status == carry.CARRIED
    assert [(p.method, p.line) for p in got.placements] == [("3-way", 8)]
    assert lines((tree / "src/x.c").read_text())[5:8] == ['    log("set up");', "    x += 2;", "    hook();"]
    # what the build gives Ollama's CMake applies to the fork as it is
    check = tmp_path / "check"
    check.mkdir()
    subprocess.run(["git", "init", "-q", str(check)], check=True)
    (check / "src").mkdir()
    (check / "src/x.c").write_text(fork)
    (check / "carried.patch").write_text(got.text)
    subprocess.run(["git", "apply", "carried.patch"], cwd=check, check=True)
    assert (check / "src/x.c").read_text() == (tree / "src/x.c").read_text()


def test_without_a_base_a_changed_context_is_refused_naming_the_hunk(tmp_path: Path) -> None:
    new = insert_after(PINNED, "    x += 2;", "    hook();\n")
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", PINNED, new)
    fork = PINNED.replace('log("setting up, pass one");', 'log("set up");')
    c = Carrier(fork_tree(tmp_path, fork), upstream=Upstream("none", absent="no tag b9 in ~/llama.cpp"))
    with pytest.raises(CarryError) as exc:
        c.carry(unidiff.parse(name, text), text)
    msg = str(exc.value)
    assert "hunk 1 (src/x.c @@ -6,6 +6,7 @@, adding 'hook();') cannot be placed in the fork" in msg
    assert "3-way merge: no pinned upstream (no tag b9 in ~/llama.cpp)" in msg
    assert "context: its 6 context lines do not occur together" in msg and "placement rule" in msg


def test_a_hunk_that_changes_lines_the_fork_changed_is_refused_naming_both_sides(tmp_path: Path) -> None:
    new = PINNED.replace("    x += 3;", "    x += 30;")
    name, text = make_patch(tmp_path, "llama/compat/001-tune.patch", PINNED, new)
    fork = PINNED.replace("    x += 3;", "    x += 4;")
    c = Carrier(fork_tree(tmp_path, fork), upstream=upstream_of({"src/x.c": PINNED}))
    with pytest.raises(CarryError) as exc:
        c.carry(unidiff.parse(name, text), text)
    msg = str(exc.value)
    assert "beside the hunk the fork has 'x += 4;' where llama.cpp b9 (test) has 'x += 3;'" in msg
    assert "context: it changes lines, so its context alone cannot place it" in msg


def test_a_placement_rule_places_the_hunk_and_a_changed_patch_is_noticed(tmp_path: Path) -> None:
    pinned = PINNED.replace('#include "c.h"\n', '#include "c.h"\n#include "d.h"\n')
    new = insert_after(pinned, '#include "d.h"', '#include "ours.h"\n')
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", pinned, new)
    patch = unidiff.parse(name, text)
    rule = PlacementRule(patch="llama/compat/002-hooks.patch", sha256=(patch.sha256,), hunk=1, file="src/x.c",
                         anchor=r'^#include "c\.h"$', where="after", why="d.h is upstream's, the fork lacks it",
                         source="test rules")
    tree = fork_tree(tmp_path, PINNED)
    got = Carrier(tree, upstream=upstream_of({"src/x.c": pinned}), rules=[rule]).carry(patch, text)
    assert [(p.method, p.line) for p in got.placements] == [("rule", 4)]  # renumbered patches match by name
    assert lines((tree / "src/x.c").read_text())[2:4] == ['#include "c.h"', '#include "ours.h"']
    stale = PlacementRule(**{**rule.__dict__, "sha256": ("0" * 64,)})
    with pytest.raises(CarryError, match=r"checked against other versions of that patch \(sha256 000000000000\)"):
        Carrier(fork_tree(tmp_path / "2", PINNED), upstream=upstream_of({"src/x.c": pinned}),
                rules=[stale]).carry(patch, text)


def test_an_upstream_that_is_not_the_pin_stops_the_carry(tmp_path: Path) -> None:
    new = insert_after(PINNED, "    x += 2;", "    hook();\n")
    name, text = make_patch(tmp_path, "llama/compat/001-hooks.patch", PINNED, new)
    fork = PINNED.replace('log("setting up, pass one");', 'log("set up");')
    other = PINNED.replace("    x += 2;", "    x += 5;")
    c = Carrier(fork_tree(tmp_path, fork), upstream=upstream_of({"src/x.c": other}))
    with pytest.raises(SourceError, match="is not the llama.cpp this Ollama pins: hunk 1"):
        c.carry(unidiff.parse(name, text), text)


def test_a_model_architecture_the_fork_lacks_is_left_out_only_when_named(tmp_path: Path) -> None:
    nova = "int nova(int n) {\n    int s = 1;\n    if (n > 4) {\n        s = 2;\n    }\n    return s * n;\n}\n"
    fixed = nova.replace("        s = 2;\n", "        s = 2;\n        s += 1;\n")
    name, text = make_patch(tmp_path, "llama/compat/models/003-nova.patch", nova, fixed, "src/models/nova.cpp")
    patch = unidiff.parse(name, text)
    assert carry.architectures(patch) == {"nova"}
    with pytest.raises(CarryError) as exc:
        Carrier(fork_tree(tmp_path, PINNED), upstream=upstream_of({}), fork_archs={"llama"}).carry(patch, text)
    assert exc.value.feature == "model architecture nova"
    assert "the fork has no src/models/nova.cpp" in exc.value.message and "--leave-out nova" in str(exc.value)
    got = Carrier(fork_tree(tmp_path / "2", PINNED), upstream=upstream_of({}), fork_archs={"llama"},
                  leave_out=["Nova"], compat_sources=["llama/compat/models/nova.cpp", "llama/compat/other.cpp"]
                  ).carry(patch, text)
    assert got.status == carry.LEFT_OUT and got.feature == "model architecture nova"
    assert got.sources_left_out == ["llama/compat/models/nova.cpp"]
    assert "not supported by this build" in got.why and got.text == ""


def test_web_ui_files_the_fork_lacks_are_not_needed(tmp_path: Path) -> None:
    ui = "const char * assets[] = {\n    0,\n};\n"
    name, text = make_patch(tmp_path, "llama/compat/002-ui.patch", ui, ui.replace("    0,\n", "    0,\n    0,\n"),
                            "tools/ui/embed.cpp")
    got = Carrier(fork_tree(tmp_path, PINNED), upstream=upstream_of({})).carry(unidiff.parse(name, text), text)
    assert got.status == carry.NOT_NEEDED and "web UI" in got.why and got.text == ""
