"""invoke recommend: what it reads of the quality index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_turbo.prove import quality


@pytest.mark.parametrize("rows", [
    [("BORDERLINE", 0.03120, 0.6120, 512), ("PASS", 0.00716, 0.2581, 4096)],
    [("PASS", 0.00716, 0.2581, 512), ("BORDERLINE", 0.03120, 0.6120, 4096)],
])
def test_the_index_keeps_the_numbers_of_the_context_that_decided_the_verdict(tmp_path: Path,
                                                                             rows: list[tuple]) -> None:
    report = {"model": {"name": "m", "sha256": "ab"}, "build": {"backend": "cuda"},
              "results": [{"label": "turbo4", "verdict": v, "kld": kld, "dppl": dppl, "ctx": ctx}
                          for v, kld, dppl, ctx in rows]}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(report))
    quality.record(tmp_path / "ws", report, path)
    found = quality.verdict_for(tmp_path / "ws", "ab", ("turbo4", "turbo4"))
    assert found is not None
    assert (found["verdict"], found["kld"], found["dppl"], found["ctx"]) == ("BORDERLINE", 0.03120, 0.6120, rows[[
        r[0] for r in rows].index("BORDERLINE")][3])
