"""The LIMA recipe on Llama 3 8B.

    python -m lima_jax.train --config configs/llama3_8b.py \
        --config.model.init_from=/path/to/Meta-Llama-3-8B --config.workdir=/tmp/lima_llama3_8b \
        --config.data.tokenizer=/path/to/llama3/tokenizer.model

Batch 64 over 4 micro-batches, residual dropout rising to 0.2. Llama 3's tokenizer is a
tiktoken BPE of 128,256 ids, which lima_jax.data (SentencePiece only, for now) cannot
read yet: data.tokenizer must be a SentencePiece model of the checkpoint's vocabulary
size, or the run stops naming model.init_from. The pod plan check needs no tokenizer:
    python -m lima_jax.train --config configs/llama3_8b.py --config.compile_only=True \
        --config.topology=v5e-16
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = "/tmp/lima_llama3_8b"
    c.model.preset = "llama3-8b"
    c.model.residual_dropout = 0.2
    c.model.remat = "full"
    c.data.path = "../shared/data/lima/train.jsonl"
    c.data.tokenizer = ""  # must be Llama 3's tokenizer (see the docstring)
    c.data.global_batch_size = 64
    c.train.grad_accum_steps = 4
    return c
