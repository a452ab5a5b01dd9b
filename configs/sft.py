"""LIMA's recipe for any Llama-architecture checkpoint and any instruction file.

    python -m lima_jax.train --config configs/sft.py --config.workdir=/tmp/my_sft \
        --config.model.init_from=/path/to/hf_checkpoint --config.data.path=my_data.jsonl

The checkpoint's own tokenizer (tokenizer.json or tokenizer.model) and, when it ships one, its
own chat template (data.template = chat; its end of turn is the stop token: data.eot = auto). For a
base model without a chat template use ``--config.data.template=lima`` (LIMA's EOT is appended).
Check what will be trained first:
    python -m lima_jax.data check-template --tokenizer /path/to/hf_checkpoint --template chat \
        --data my_data.jsonl
The paper's numbers: AdamW (0.9, 0.95), weight decay 0.1, learning rate 1e-5 falling linearly to
1e-6, no warmup, 15 epochs, 2,048 tokens, batch 32, loss on the answers only. model.preset is
unused when init_from is set (the checkpoint gives the shape).

Small models: LIMA's residual dropout (0.0 at the first layer rising to 0.3 at the last) was
tuned for 7B-65B. On a 135M model (SmolLM-style, 30 layers of 576) it was found, when this
config was written, to cost 2-6 nats of training loss a step against a dropout-free step; keep it at 0.0-0.1
(``--config.model.residual_dropout=0.05``) below ~1B parameters, and consider more epochs or a
higher learning rate (1e-4) for models that small.
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = ""  # required: --config.workdir=DIR
    c.model.init_from = ""  # required: a Hugging Face directory or a lima_jax checkpoint
    c.model.residual_dropout = 0.3  # LIMA's; lower it for small models (docstring)
    c.model.remat = "full"
    c.data.path = ""  # required: a .jsonl/.json file (LIMA, Alpaca, FastChat or OpenAI messages)
    c.data.tokenizer = ""  # the checkpoint's own
    c.data.template = "chat"
    c.data.eot = "auto"  # the chat template's end of turn
    return c
