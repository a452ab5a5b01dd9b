"""LIMA's quantity ablation (section 5, Figure 6): does more data of the same kind help? LLaMA 7B
fine-tuned with LIMA's 7B recipe (configs/lima_7b.py) on nested random subsets of Alpaca
(1,000 within 2,000 within 4,000 within 8,000 examples of instruct/random_9k.json), each model
answering the 300 LIMA test prompts 5 times, each answer graded 1-6 for helpfulness:

    python -m lima_jax.ablate --config configs/ablations/quantity.py \
        --config.recipe.model.init_from=/path/to/llama-7b-hf \
        --config.judge.spec=openai:gpt-4o@https://api.openai.com/v1 \
        --config.workdir=/tmp/lima_ablate_quantity

The paper doubled Stack Exchange data from 2,000 to 32,000 examples; the Stack Exchange dump is
not in ../shared/data, so this runs the same experiment on the Alpaca sample that is. Each cell
is a prefix of one permutation (config.seed), so the subsets nest. Rerun the same command to
resume after an interruption. One H200 trains the 8,000-example cell (1,875 steps) in a few hours.
"""

import pathlib

from lima_jax.ablate.config import cell, get_base_ablation_config, load_config_file

POOL = "../shared/data/instruct/random_9k.json"


def get_config():
    c = get_base_ablation_config()
    c.name = "quantity: nested random Alpaca subsets, LLaMA 7B"
    c.workdir = "/tmp/lima_ablate_quantity"
    c.plot = "size"
    for size in (1000, 2000, 4000, 8000):
        c.cells[f"n{size}"] = cell(POOL, "random", size)
    c.recipe = load_config_file(pathlib.Path(__file__).parents[1] / "lima_7b.py")
    # Decode the last epoch; keep only its checkpoint (a 7B train state is ~80 GB), and drop it
    # once the cell's answers are written (--config.keep_checkpoints=True keeps it).
    c.recipe.checkpoint.keep_epochs_from = c.recipe.checkpoint.keep_epochs_to = c.recipe.data.num_epochs
    c.keep_checkpoints = False
    c.decode.batch_size = 32
    return c
