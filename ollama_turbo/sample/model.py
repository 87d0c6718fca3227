"""A tiny GGUF model file for the sample world, written with the ``gguf`` package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Geometry:
    arch: str = "llama"
    n_layer: int = 4
    n_head: int = 8
    n_head_kv: int = 2
    n_embd: int = 512          # head dim 64
    n_ctx_train: int = 32768


SAMPLE_GEOMETRY = Geometry()


def write_model(path: Path, geo: Geometry = SAMPLE_GEOMETRY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), geo.arch)
    w.add_name("sample-model")
    w.add_size_label("1M")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_block_count(geo.n_layer)
    w.add_context_length(geo.n_ctx_train)
    w.add_embedding_length(geo.n_embd)
    w.add_head_count(geo.n_head)
    w.add_head_count_kv(geo.n_head_kv)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
