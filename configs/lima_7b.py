"""LIMA's ablation recipe: LLaMA 7B on the LIMA set (the paper's section 5 model).

    python -m lima_jax.train --config configs/lima_7b.py \
        --config.model.init_from=/path/to/llama-7b-hf --config.workdir=/tmp/lima_7b

Same recipe as configs/lima_65b.py with the small-model values: residual dropout
rising to 0.2 and a batch of 64 examples (LIMA, section 3), accumulated over 4
micro-batches of 16 rows so it fits one 80-140 GB GPU with float32 master weights.
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = "/tmp/lima_7b"
    c.model.preset = "llama1-7b"
    c.model.residual_dropout = 0.2
    c.model.remat = "full"
    c.data.path = "../shared/data/lima/train.jsonl"
    c.data.tokenizer = "../shared/data/tokenizer/llama/tokenizer.model"
    c.data.global_batch_size = 64
    c.data.max_len = 2048
    c.train.grad_accum_steps = 4
    return c
