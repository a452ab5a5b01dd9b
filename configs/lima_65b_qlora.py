"""LIMA's 65B recipe as QLoRA: rank-16 adapters on an nf4 LLaMA 65B, for a small TPU slice.

    # the plan check, on any CPU machine with libtpu installed (no TPU needed):
    python -m lima_jax.train --config configs/lima_65b_qlora.py --config.compile_only=True \
        --config.topology=v5p-8
    python -m lima_jax.train --config configs/lima_65b_qlora.py --config.compile_only=True \
        --config.topology=v5e-8

    # training, on every host of the slice (see launch/tpu_pod.sh):
    python -m lima_jax.train --config configs/lima_65b_qlora.py \
        --config.model.init_from=gs://.../llama-65b-hf --config.workdir=gs://.../lima_65b_qlora

What changes from configs/lima_65b.py (the paper's full fine-tuning, which needs a pod: its
float32 weights and AdamW moments alone are ~780 GB): the seven projections of every layer are
frozen and stored in nf4 (QLoRA's 4-bit NormalFloat, one scale per block of 64 inputs), and
only rank-16 adapters on all seven (alpha 32, dropout 0.05: QLoRA's 65B settings) and the new
end-of-turn token's rows train, ~200M parameters. The optimizer state is then the adapters' (two
float32 moments each, ~1.6 GB in all) and a checkpoint holds the adapters and that state only
(the frozen base is read again from model.init_from, which must be set: a Hugging Face
LLaMA-65B directory or its conversion).

The slice: FSDP over all chips (v5p-8 is 4 chips of 95 GiB, v5e-8 8 chips of 16 GiB). LIMA's
batch of 32 examples of 2,048 tokens is kept as 4 micro-batches of 8 rows (one or two rows a
chip at a time), with full remat. The learning rate is LoRA's usual 10x the paper's full
fine-tuning one (1e-4 decaying linearly to 1e-5, QLoRA's 65B rate); the rest (AdamW 0.9/0.95,
weight decay 0.1, 15 epochs, residual dropout 0.3, snapshots of epochs 5 to 10) is LIMA's.
Measured per-chip memory (bench/RESULTS.md, "LoRA plan", one micro-batch of 8 rows, the rows a chip
holds at a time here): v5p-8 peak 21.2 GiB of 95, v5e-8 12.8 GiB of 16 (int8 14.5, bfloat16 does not fit);
this config as it is (4 micro-batches, the adapters' gradients accumulated) on v5e-8: 13.5 GiB of 16.
"""

import pathlib

from lima_jax.cli import load_config

RECIPE = pathlib.Path(__file__).resolve().parent / "lima_65b.py"


def get_config():
    c = load_config(str(RECIPE)).unlock()  # LIMA's 65B recipe, then what QLoRA changes
    c.workdir = "/tmp/lima_65b_qlora"
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.lora.targets = "q,k,v,o,gate,up,down"
    c.lora.base_dtype = "nf4"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.end_learning_rate = 1e-5
    c.data.global_batch_size = 32
    c.train.grad_accum_steps = 4  # micro-batches of 8 rows: 2 a chip on v5p-8, 1 on v5e-8
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    return c
