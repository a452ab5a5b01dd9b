"""The LIMA recipe on Llama 3 8B (base), reusing Llama 3's own end-of-turn token.

    python -m lima_jax.train --config configs/llama3_8b.py \
        --config.model.init_from=/path/to/Meta-Llama-3-8B --config.workdir=/tmp/lima_llama3_8b

The tokenizer is the checkpoint's own (data.tokenizer = '': its tokenizer.json, else Meta's
original/tokenizer.model). LIMA's template with ``<|eot_id|>`` as the end of turn (data.eot)
instead of a new row: an export then stops where every Llama 3 server stops, and keeps 128,256
rows. The base model never trained the ``<|eot_id|>`` row; the run initialises it like a new EOT
and logs it. With ``--config.data.template=chat`` the run uses Llama 3's chat template instead
(the base checkpoint's tokenizer_config.json may not carry one: give data.tokenizer a Llama 3
Instruct tokenizer directory then).
Batch 64 over 4 micro-batches, residual dropout rising to 0.2. The pod plan check needs no
tokenizer, data or weights:
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
    c.data.tokenizer = ""  # model.init_from's own
    c.data.eot = "<|eot_id|>"
    c.data.global_batch_size = 64
    c.train.grad_accum_steps = 4
    return c
