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
    # hybrid (qwen35-like): full attention every ``interval`` layers, a recurrent state in the others
    interval: int = 0
    ssm: tuple[int, int, int, int] = (0, 0, 0, 0)  # conv kernel, inner size, state size, group count


SAMPLE_GEOMETRY = Geometry()
# 24 query heads share each of 4 KV heads (as in Qwen2.5-7B, 28/4, or Llama-3-70B, 64/8): the fork
# runs symmetric turbo K of such a model at q8_0.
GQA6_GEOMETRY = Geometry(n_head=24, n_head_kv=4, n_embd=24 * 64)
# A hybrid model like Qwen3.5: 8 layers, full attention in layers 3 and 7, gated delta net state elsewhere.
HYBRID_GEOMETRY = Geometry(arch="qwen35", n_layer=8, interval=4, ssm=(4, 256, 32, 4))


def write_model(path: Path, geo: Geometry = SAMPLE_GEOMETRY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), geo.arch)
    w.add_name(path.stem)
    w.add_size_label("1M")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_block_count(geo.n_layer)
    w.add_context_length(geo.n_ctx_train)
    w.add_embedding_length(geo.n_embd)
    w.add_head_count(geo.n_head)
    w.add_head_count_kv(geo.n_head_kv)
    if geo.interval:
        w.add_uint32(f"{geo.arch}.full_attention_interval", geo.interval)
        conv, inner, state, group = geo.ssm
        w.add_ssm_conv_kernel(conv)
        w.add_ssm_inner_size(inner)
        w.add_ssm_state_size(state)
        w.add_ssm_group_count(group)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
