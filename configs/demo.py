"""The CPU demo: a tiny LLaMA learns a generated instruction-following set in minutes.

    python -m lima_jax.train --config configs/demo.py --config.workdir=/tmp/lima_demo

No data or weights are needed: `data.path = 'generated:demo'` writes 2,000 training
requests of four kinds (repeat a word, sort words, the larger number, the last word) and
200 held-out ones with unseen combinations, trains a 512-piece SentencePiece model on them,
and trains a ~1M-parameter model from scratch with LIMA's template, loss mask, EOT and
layer-scaled residual dropout. The run ends with the held-out score before and after
training: loss, token accuracy and the exact match of greedy answers (summary.json,
loss_curve.png). From scratch the learning rate
is higher than LIMA's fine-tuning 1e-5; everything else is the recipe.
"""

from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.workdir = "/tmp/lima_demo"
    c.model.preset = "tiny"
    c.model.dim = 128
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.n_kv_heads = 2
    c.model.mlp_dim = 384
    c.model.max_seq_len = 64
    c.model.dtype = "float32"  # bf16 compute is slower than f32 on most CPUs
    c.model.scan_unroll = 0  # 4 layers: unrolled runs ~25% faster on CPU
    c.model.residual_dropout = 0.1

    c.data.path = "generated:demo"
    c.data.train_tokenizer.vocab_size = 512
    c.data.max_len = 64
    c.data.global_batch_size = 32
    c.data.num_epochs = 15
    c.data.pack = True  # short requests: ~3 per 64-token row instead of 30% full rows

    c.optimizer.learning_rate = 3e-3
    c.optimizer.end_learning_rate = 3e-4
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01
    c.optimizer.clip_norm = 1.0

    c.train.log_every = 10
    c.train.eval_every_epochs = 5
    c.train.eval_exact_match = True  # greedy answers to the 200 held-out requests
    return c
