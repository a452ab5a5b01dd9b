"""A tiny ablation that runs end to end on a laptop CPU in about a minute (the tests run it):

    python -m lima_jax.ablate --config configs/ablations/tiny.py --config.workdir=/tmp/lima_ablate_tiny
    python -m lima_jax.ablate --config configs/ablations/tiny.py:condition \
        --config.workdir=/tmp/lima_ablate_tiny_condition

No data or weights are needed: the pool is generated (the CPU demo's four tasks, each record's
source naming its task), a ~0.14M-parameter LLaMA is trained from scratch on each cell with a
tokenizer trained once on the pool, and the `reference` judge grades each answer by its
similarity to the task's one right answer. `quantity` (the default): nested random subsets of
16 and 32 examples, plotted against size (--config.cells.n32.size=64 changes one).
`condition`: 32 examples of one task, of all four tasks (stratified), and the 32 longest
answers, one bar each. The numbers show that the plumbing works; a model this small, trained
for a few steps, is no evidence about LIMA.
"""

from lima_jax.ablate.config import GENERATED, cell, get_base_ablation_config


def get_config(kind: str = "quantity"):
    c = get_base_ablation_config()
    c.workdir = f"/tmp/lima_ablate_tiny_{kind}"
    if kind == "quantity":
        c.name = "tiny quantity (generated tasks)"
        c.plot = "size"
        for size in (16, 32):
            c.cells[f"n{size}"] = cell(GENERATED, "random", size)
    elif kind == "condition":
        c.name = "tiny diversity and quality (generated tasks)"
        c.plot = "condition"
        c.cells.one_task = cell(GENERATED, "random", 32, sources="repeat", label="one task")
        c.cells.four_tasks = cell(GENERATED, "stratified", quotas="repeat=8,sort=8,larger=8,last=8",
                                  label="four tasks")
        c.cells.longest = cell(GENERATED, "longest", 32, label="longest answers")
    else:
        raise ValueError(f"configs/ablations/tiny.py: unknown variant {kind!r}; use quantity or condition")

    r = c.recipe
    r.model.preset = "tiny"
    r.model.dim = 64
    r.model.n_layers = 2
    r.model.max_seq_len = 128
    r.model.dtype = "float32"
    r.model.scan_unroll = 0  # 2 layers: unrolled compiles and runs faster on CPU
    r.model.residual_dropout = 0.1
    r.data.train_tokenizer.vocab_size = 512  # trained once on the pool, shared by every cell
    r.data.max_len = 64
    r.data.global_batch_size = 16
    r.data.num_epochs = 3
    r.optimizer.learning_rate = 3e-3  # from scratch: higher than LIMA's fine-tuning 1e-5
    r.optimizer.end_learning_rate = 3e-4
    r.optimizer.weight_decay = 0.01
    r.train.log_every = 100
    r.checkpoint.async_save = False

    c.decode.prompts = GENERATED  # the pool's held-out prompts, with their right answers
    c.decode.limit = 3
    c.decode.num_samples = 5
    c.decode.max_new_tokens = 16
    c.decode.batch_size = 15  # 3 prompts x 5 samples: one batch, one compile
    c.judge.spec = "reference"
    c.progress = False
    return c
