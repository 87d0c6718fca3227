"""A random-weight llama model for speed at depth: the shape decides KV cost, the weights do not.

``python -m tests.field.random_gguf TOKENIZER.gguf OUT.gguf`` writes a GQA-4 model (16 layers, 16 query
heads and 4 KV heads of 128, the tokenizer of TOKENIZER, e.g. SmolLM2's), about 0.9 GB in f16. Its text
is noise; its attention does the work of a real model of that shape, so decode and prefill at 8K or 32K
measure what a cache type costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CTX = 16, 16, 4, 128, 4096, 65536


def _copy_tokenizer(reader: object, writer: object) -> int:
    import gguf

    n_vocab = 0
    for name, f in reader.fields.items():  # type: ignore[attr-defined]
        if not name.startswith("tokenizer."):
            continue
        kind = f.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = f.types[1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
            else:
                values = [f.parts[i][0].item() for i in f.data]
            writer.add_array(name, values)  # type: ignore[attr-defined]
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace"))  # type: ignore
        else:
            value = f.parts[f.data[0]][0].item()
            writer.add_key_value(name, value, kind)  # type: ignore[attr-defined]
    return n_vocab


def write(tokenizer: Path, out: Path, seed: int = 1) -> Path:
    import gguf

    reader = gguf.GGUFReader(tokenizer)
    w = gguf.GGUFWriter(str(out), "llama")
    embd = HEADS * HEAD_DIM
    w.add_name("random-gqa4-16L")
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(embd)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = _copy_tokenizer(reader, w)
    w.add_vocab_size(n_vocab)
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", mat(n_vocab, embd))
    w.add_tensor("output_norm.weight", ones)
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", mat(embd, embd))
        w.add_tensor(p + "attn_k.weight", mat(KV_HEADS * HEAD_DIM, embd))
        w.add_tensor(p + "attn_v.weight", mat(KV_HEADS * HEAD_DIM, embd))
        w.add_tensor(p + "attn_output.weight", mat(embd, embd))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", mat(FFN, embd))
        w.add_tensor(p + "ffn_up.weight", mat(FFN, embd))
        w.add_tensor(p + "ffn_down.weight", mat(embd, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), Path(sys.argv[2])))
