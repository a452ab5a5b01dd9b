"""LIMA's diversity ablation (section 5, Figure 5): at a fixed size, do diverse prompts beat
homogeneous ones? LLaMA 7B fine-tuned with LIMA's 7B recipe (configs/lima_7b.py) on
  - 200 LIMA Stack Exchange examples (heterogeneous prompts) vs 200 LIMA wikiHow examples
    ("How to ..." prompts), the paper's own comparison at the size the released set allows;
  - 800 Dolly examples of one category (open_qa) vs 800 spread over its 8 categories (100 each);
each model answering the 300 LIMA test prompts 5 times, each answer graded 1-6 for helpfulness:

    python -m lima_jax.ablate --config configs/ablations/diversity.py \
        --config.recipe.model.init_from=/path/to/llama-7b-hf \
        --config.judge.spec=openai:gpt-4o@https://api.openai.com/v1 \
        --config.workdir=/tmp/lima_ablate_diversity

Rerun the same command to resume.
"""

import pathlib

from lima_jax.ablate.config import cell, get_base_ablation_config, load_config_file

LIMA = "../shared/data/lima/train.jsonl"
DOLLY = "../shared/data/instruct/dolly_3k.json"
DOLLY_CATEGORIES = ("open_qa", "classification", "general_qa", "brainstorming",
                    "information_extraction", "closed_qa", "summarization", "creative_writing")


def get_config():
    c = get_base_ablation_config()
    c.name = "diversity: homogeneous vs diverse prompts, LLaMA 7B"
    c.workdir = "/tmp/lima_ablate_diversity"
    c.plot = "condition"
    c.cells.stackexchange = cell(LIMA, "random", 200, sources="stackexchange", label="Stack Exchange")
    c.cells.wikihow = cell(LIMA, "random", 200, sources="wikihow", label="wikiHow")
    c.cells.dolly_open_qa = cell(DOLLY, "random", 800, sources="open_qa", label="Dolly open_qa")
    c.cells.dolly_mixed = cell(DOLLY, "stratified", quotas=",".join(f"{k}=100" for k in DOLLY_CATEGORIES),
                               label="Dolly, 8 categories")
    c.recipe = load_config_file(pathlib.Path(__file__).parents[1] / "lima_7b.py")
    # Decode the last epoch; keep only its checkpoint (a 7B train state is ~80 GB), and drop it
    # once the cell's answers are written (--config.keep_checkpoints=True keeps it).
    c.recipe.checkpoint.keep_epochs_from = c.recipe.checkpoint.keep_epochs_to = c.recipe.data.num_epochs
    c.keep_checkpoints = False
    c.decode.batch_size = 32
    return c
