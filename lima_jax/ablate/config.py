"""The config of an ablation (`python -m lima_jax.ablate --config configs/ablations/X.py`), its
parts, and its validation: every error names the key (`config.cells.n2000.size`, ...).

An ablation is a set of cells; each cell is a training subset (a pool file, a filter on its
sources, a selection rule and a size) trained with one shared recipe (`config.recipe`, a full
`lima_jax.train` run config), decoded on one prompt set and graded by one judge.
"""

from __future__ import annotations

import pathlib

import ml_collections

from lima_jax.cli import load_config
from lima_jax.curate.select import TABLE1_QUOTAS
from lima_jax.errors import LimaError
from lima_jax.model.presets import PRESETS
from lima_jax.train.config import RunConfigError, get_base_config, validate_config

SELECTIONS = ("all", "random", "longest", "stratified")
PLOTS = ("size", "condition")
CELL_KEYS = ("path", "sources", "select", "size", "quotas", "label")
# A `path` or `decode.prompts` of this value is the generated tiny pool (lima_jax.ablate_data).
GENERATED = "generated:tiny"


class AblationConfigError(LimaError, ValueError):
    """A config key with a value that cannot work; the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message, where=f"config.{key}")


def cell(path: str, select: str = "all", size: int = 0, *, sources: str = "", quotas: str = "",
         label: str = "") -> ml_collections.ConfigDict:
    """One cell's training subset.

    path: data file(s), comma-separated, in any format lima_jax.data reads, or 'generated:tiny';
    sources: keep only records whose source (or Dolly category) is in this comma-separated list;
    select: all | random (the first `size` of one permutation by config.seed: cells of one pool
      nest) | longest (the `size` longest responses) | stratified (per-source `quotas`);
    quotas: 'table1' (LIMA's Table 1) or 'source=count,source=count' (stratified only);
    label: the name on the plot ('' = the cell's name).
    """
    return ml_collections.ConfigDict({"path": path, "sources": sources, "select": select, "size": size,
                                      "quotas": quotas, "label": label})


def get_base_ablation_config() -> ml_collections.ConfigDict:
    """Defaults every ablation config starts from; `cells` and `recipe` are filled by the file."""
    c = ml_collections.ConfigDict()
    c.name = "ablation"  # the plot's title and the results' name
    c.workdir = ""  # cells/<name>/{data.jsonl,train/,responses.jsonl,scores.jsonl,result.json}
    c.seed = 0  # subset selection (the training seed is config.recipe.seed)
    c.plot = "size"  # size: score vs examples, log2 axis (LIMA Figure 6); condition: bars (Figure 5)
    # Cells run, and are tabled and plotted, in the order the config file adds them.
    c.cells = ml_collections.ConfigDict(sort_keys=False)
    c.recipe = get_base_config()  # the training run of every cell; workdir and data.path are set per cell
    c.keep_checkpoints = True  # False: delete a cell's checkpoints once its answers are decoded
    c.progress = True  # progress bars of training and decoding

    c.decode = ml_collections.ConfigDict()
    c.decode.prompts = "../shared/data/lima/test.jsonl"  # any format python -m lima_jax.decode reads
    c.decode.limit = 0  # only the first N prompts (0 = all)
    c.decode.num_samples = 5  # LIMA's ablations: 5 samples per prompt
    c.decode.temperature = 0.7
    c.decode.top_p = 0.9
    c.decode.repetition_penalty = 1.2
    c.decode.max_new_tokens = 2048
    c.decode.batch_size = 8
    c.decode.seed = 0
    c.decode.template = "lima"
    c.decode.epoch = 0  # which epoch's checkpoint answers (0 = the last one)

    c.judge = ml_collections.ConfigDict()
    # openai:MODEL@BASE_URL | local:PATH | length (test stand-in) | reference (grades against the
    # prompts file's reference answers; only for tasks with one right answer, like the tiny pool)
    c.judge.spec = ""
    c.judge.max_tokens = 512
    c.judge.concurrency = 4
    c.judge.api_key_env = "OPENAI_API_KEY"
    c.judge.timeout = 120.0
    c.judge.retries = 6
    return c


def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(arg)`) of a config file, e.g. a recipe such as configs/lima_7b.py,
    through `lima_jax.cli.load_config`. It comes back unlocked: the ablation configs build on it."""
    return load_config(str(path) if arg is None else f"{path}:{arg}").unlock()


def parse_quotas(text: str, key: str) -> dict[str, int]:
    """'table1' or 'a=10,b=20' -> {source: count}."""
    if text.strip() == "table1":
        return dict(TABLE1_QUOTAS)
    quotas = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        source, sep, count = item.partition("=")
        if not sep or not source.strip() or not count.strip().isdigit():
            raise AblationConfigError(key, f"{item!r} is not SOURCE=COUNT (e.g. 'wikihow=200,nlp=50' "
                                           "or 'table1')")
        quotas[source.strip()] = int(count)
    if not quotas:
        raise AblationConfigError(key, "stratified selection needs quotas ('table1' or 'source=count,...')")
    return quotas


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise AblationConfigError(key, message)


def _validate_cell(name: str, c: ml_collections.ConfigDict) -> None:
    where = f"cells.{name}"
    _check(isinstance(c, ml_collections.ConfigDict), where,
           "must be a ConfigDict (use lima_jax.ablate_config.cell(...))")
    unknown = sorted(set(c.keys()) - set(CELL_KEYS))
    _check(not unknown, where, f"unknown key(s) {unknown}; a cell has {list(CELL_KEYS)}")
    missing = [k for k in CELL_KEYS if k not in c]
    _check(not missing, where, f"missing key(s) {missing}")
    _check(isinstance(c.path, str) and bool(c.path.strip()), f"{where}.path", "no data file given")
    _check(c.select in SELECTIONS, f"{where}.select", f"{c.select!r} is not one of {SELECTIONS}")
    _check(isinstance(c.size, int) and c.size >= 0, f"{where}.size", "must be an integer >= 0")
    if c.select in ("random", "longest"):
        _check(c.size > 0, f"{where}.size", f"select={c.select} needs a size > 0")
    if c.select == "stratified":
        quotas = parse_quotas(c.quotas, f"{where}.quotas")
        _check(c.size in (0, sum(quotas.values())), f"{where}.size",
               f"{c.size} is not the sum of the quotas ({sum(quotas.values())}); leave it 0")
    else:
        _check(not c.quotas, f"{where}.quotas", f"only used with select=stratified, not {c.select}")
    for path in (p.strip() for p in c.path.split(",") if p.strip()):
        _check(path == GENERATED or pathlib.Path(path).is_file(), f"{where}.path",
               f"{path} not found (paths are relative to the directory you run from)")


def validate_ablation(c: ml_collections.ConfigDict) -> None:
    """Raises AblationConfigError naming the first bad key; the recipe is checked as a cell's run
    config would be (errors name `config.recipe.<key>`)."""
    _check(bool(c.workdir), "workdir", "is required (--config.workdir=DIR)")
    _check(c.plot in PLOTS, "plot", f"{c.plot!r} is not one of {PLOTS}")
    _check(len(c.cells) > 0, "cells", "no cells: an ablation needs at least one training subset")
    for name, spec in c.cells.items():
        _check(name.replace("_", "").replace("-", "").isalnum(), f"cells.{name}",
               "a cell name must be letters, digits, '_' or '-' (it names a directory)")
        _validate_cell(name, spec)
    if c.plot == "size":
        sizes = {name: spec.size for name, spec in c.cells.items()}
        _check(all(sizes.values()), "plot",
               f"plot=size needs every cell's size > 0 (cells: {sizes}); use plot=condition")

    d = c.decode
    _check(bool(d.prompts), "decode.prompts", "no prompt file given")
    _check(d.prompts == GENERATED or pathlib.Path(d.prompts).is_file(), "decode.prompts",
           f"{d.prompts} not found (paths are relative to the directory you run from)")
    for key in ("num_samples", "max_new_tokens", "batch_size"):
        _check(isinstance(d[key], int) and d[key] >= 1, f"decode.{key}", "must be an integer >= 1")
    _check(d.limit >= 0, "decode.limit", "must be >= 0 (0 = every prompt)")
    _check(d.epoch >= 0, "decode.epoch", "must be >= 0 (0 = the last checkpoint)")
    _check(d.temperature >= 0, "decode.temperature", "must be >= 0 (0 = greedy)")
    _check(0 < d.top_p <= 1, "decode.top_p", "must be in (0, 1]")
    _check(d.repetition_penalty > 0, "decode.repetition_penalty", "must be > 0 (1 = off)")
    _check(bool(c.judge.spec), "judge.spec",
           "no judge given; e.g. --config.judge.spec=openai:gpt-4o@https://api.openai.com/v1, "
           "local:/path/to/judge-model, or length (a test stand-in, not a real judge)")
    _check(c.judge.concurrency >= 1, "judge.concurrency", "must be >= 1")

    r = c.recipe
    preset = PRESETS.get(r.model.preset)
    if preset is not None and preset.published_params and not r.model.init_from:
        raise AblationConfigError(
            "recipe.model.init_from",
            f"the {r.model.preset} recipe fine-tunes a pretrained model: set it to a Hugging Face "
            "LLaMA directory (--config.recipe.model.init_from=/path/to/llama-7b-hf)")
    if c.decode.epoch:
        _check(c.decode.epoch <= r.data.num_epochs, "decode.epoch",
               f"the recipe trains {r.data.num_epochs} epochs")
        _check(r.checkpoint.keep_epochs_from <= c.decode.epoch <= r.checkpoint.keep_epochs_to
               or c.decode.epoch == r.data.num_epochs, "decode.epoch",
               f"epoch {c.decode.epoch}'s checkpoint is not kept (recipe.checkpoint.keep_epochs_from/_to "
               f"are {r.checkpoint.keep_epochs_from}-{r.checkpoint.keep_epochs_to})")
    probe = ml_collections.ConfigDict(r.to_dict())
    probe.workdir = str(pathlib.Path(c.workdir) / "cells" / "probe")
    probe.data.path = probe.data.path or "cell-data.jsonl"  # each cell writes its own
    if not (probe.data.tokenizer or probe.model.init_from) and probe.data.train_tokenizer.vocab_size <= 0:
        raise AblationConfigError("recipe.data.tokenizer", "no tokenizer: set it to a tokenizer.json, "
                                  "tokenizer.model or checkpoint directory, set recipe.model.init_from "
                                  "(its tokenizer is used), or recipe.data.train_tokenizer.vocab_size > 0 "
                                  "(one is trained on the pools and shared by every cell)")
    try:
        validate_config(probe)
    except RunConfigError as err:
        raise AblationConfigError(f"recipe.{err.key}", str(err).split(": ", 1)[1]) from None
