"""LIMA as published: LLaMA 65B fine-tuned on the 1,000 LIMA examples (Zhou et al. 2023).

    # on every host of the pod (see launch/tpu_pod.sh):
    python -m lima_jax.train --config configs/lima_65b.py \
        --config.model.init_from=gs://.../llama-65b-lima --config.workdir=gs://.../lima_65b

    # the pod plan check, on any CPU machine with libtpu installed:
    python -m lima_jax.train --config configs/lima_65b.py --config.compile_only=True \
        --config.topology=v5p-64

The recipe's numbers (LIMA, section 3) are get_base_config()'s defaults: AdamW
(0.9, 0.95, weight decay 0.1), 1e-5 decaying linearly to 1e-6, no warmup, batch 32,
2,048 tokens, 15 epochs, residual dropout rising to 0.3, checkpoints kept for epochs
5 to 10. `init_from` is a Hugging Face LLaMA-65B directory or its conversion
(`python -m lima_jax.convert hf-to-lima --hf DIR --out CKPT`); the EOT token is added.
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = "/tmp/lima_65b"
    c.model.preset = "llama1-65b"
    c.model.residual_dropout = 0.3
    c.model.remat = "full"  # 80 layers x 2,048 tokens: keep only each layer's input
    c.data.path = "../shared/data/lima/train.jsonl"
    c.data.tokenizer = "../shared/data/tokenizer/llama/tokenizer.model"
    c.data.global_batch_size = 32
    c.data.max_len = 2048
    c.data.num_epochs = 15
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    return c
