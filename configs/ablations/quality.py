"""LIMA's quality ablation (section 5, Figure 5): at a fixed size, does filtered data beat
unfiltered data? LLaMA 7B fine-tuned with LIMA's 7B recipe (configs/lima_7b.py) on 2,000
Alpaca examples each: a random sample of the unfiltered set, of two LLM-filtered sets
(claude_t45, helpfulness_t45), and the 2,000 longest answers ("Long Is More", Zhao et al. 2024);
each model answers the 300 LIMA test prompts 5 times, each answer graded 1-6 for helpfulness:

    python -m lima_jax.ablate --config configs/ablations/quality.py \
        --config.recipe.model.init_from=/path/to/llama-7b-hf \
        --config.judge.spec=openai:gpt-4o@https://api.openai.com/v1 \
        --config.workdir=/tmp/lima_ablate_quality

The paper compared filtered and unfiltered Stack Exchange; the Alpaca sets in ../shared/data
are the filtered / unfiltered pairs available here. Rerun the same command to resume.
"""

import pathlib

from lima_jax.ablate.config import cell, get_base_ablation_config, load_config_file

INSTRUCT = "../shared/data/instruct"
SIZE = 2000


def get_config():
    c = get_base_ablation_config()
    c.name = f"quality: {SIZE:,} Alpaca examples, filtered vs unfiltered, LLaMA 7B"
    c.workdir = "/tmp/lima_ablate_quality"
    c.plot = "condition"
    c.cells.unfiltered = cell(f"{INSTRUCT}/random_9k.json", "random", SIZE, label="unfiltered")
    c.cells.claude_t45 = cell(f"{INSTRUCT}/claude_t45.json", "random", SIZE, label="Claude filter")
    c.cells.helpfulness_t45 = cell(f"{INSTRUCT}/helpfulness_t45.json", "random", SIZE,
                                   label="helpfulness filter")
    c.cells.longest = cell(f"{INSTRUCT}/random_9k.json", "longest", SIZE, label="longest answers")
    c.recipe = load_config_file(pathlib.Path(__file__).parents[1] / "lima_7b.py")
    # Decode the last epoch; keep only its checkpoint (a 7B train state is ~80 GB), and drop it
    # once the cell's answers are written (--config.keep_checkpoints=True keeps it).
    c.recipe.checkpoint.keep_epochs_from = c.recipe.checkpoint.keep_epochs_to = c.recipe.data.num_epochs
    c.keep_checkpoints = False
    c.decode.batch_size = 32
    return c
