"""The planner against the real model and the KV cache size a real llama-server reports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ollama_turbo.kv import geometry, memory

from ..real_assets import RealServer

pytestmark = pytest.mark.real


def test_smollm2_geometry(real_model: Path) -> None:
    geo = geometry.geometry_from_gguf(real_model)
    assert geo.n_layer == 30
    assert set(geo.n_head_kv) == {3} and set(geo.n_head) == {9}
    assert (geo.head_dim_k, geo.head_dim_v) == (64, 64)
    assert geo.n_ctx_train == 8192
    assert geo.weights_bytes == real_model.stat().st_size


@pytest.mark.parametrize("cache_type", ["f16", "q8_0", "q4_0"])
def test_planner_matches_the_kv_buffer_the_real_server_allocates(
        real_servers: Callable[[str], RealServer], real_model: Path, cache_type: str) -> None:
    server = real_servers(cache_type)
    m = re.search(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers", server.log_text())
    assert m, "no KV cache size line in the server log"
    logged_mib, cells, layers = float(m.group(1)), int(m.group(2)), int(m.group(3))
    geo = geometry.geometry_from_gguf(real_model)
    assert layers == geo.n_layer
    planned = memory.estimate(geo, cells, cache_type).mib
    assert abs(planned - logged_mib) / logged_mib < 0.01, (planned, logged_mib)
