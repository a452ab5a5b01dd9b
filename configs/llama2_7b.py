"""The LIMA recipe on Llama 2 7B.

    python -m lima_jax.train --config configs/llama2_7b.py \
        --config.model.init_from=/path/to/Llama-2-7b-hf --config.workdir=/tmp/lima_llama2_7b

Llama 2 shares LLaMA's tokenizer (32,000 pieces), so the LIMA data and EOT token
are the same; batch 64 (the small-model value) over 4 micro-batches.
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = "/tmp/lima_llama2_7b"
    c.model.preset = "llama2-7b"
    c.model.residual_dropout = 0.2
    c.model.remat = "full"
    c.data.path = "../shared/data/lima/train.jsonl"
    c.data.tokenizer = "../shared/data/tokenizer/llama/tokenizer.model"
    c.data.global_batch_size = 64
    c.train.grad_accum_steps = 4
    return c
