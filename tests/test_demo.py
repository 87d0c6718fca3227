from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import invoke

pytestmark = pytest.mark.sample


def test_invoke_demo_runs_the_fork_with_turbo4(tmp_path: Path) -> None:
    r = invoke("demo", env={"INVOKE_TURBO_WORKSPACE": str(tmp_path / "ws")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "K (turbo4):" in r.stdout and "V (turbo4):" in r.stdout
    result = json.loads((tmp_path / "ws/demo/demo.json").read_text())
    assert result["version"].startswith("0.31.0-turbo+")
    assert "--cache-type-k turbo4 --cache-type-v turbo4" in result["server_argv"]
    assert result["eval_count"] == 12 and result["decode_tps"] > 0
    assert Path(result["llama_server"]).is_file()
