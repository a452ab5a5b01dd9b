"""What `lima_jax.train` does before its loop: make the demo data, check that training matches
serving, and resolve the model config against the checkpoint and the tokenizer (with its LoRA
adapters, `config.lora`). The starting weights are `lima_jax.train.base_weights`'.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable

import jax
import ml_collections
import numpy as np

from lima_jax.checkpoint import (
    HF,
    load_model_config,
)
from lima_jax.data import generated as demo_data
from lima_jax.model.config import ConfigError, LlamaConfig, LoraSpec
from lima_jax.model.hf import load_hf_config
from lima_jax.model.presets import get_preset
from lima_jax.train.base_weights import init_from_kind, reinitialised_rows
from lima_jax.train.config import MODEL_SHAPE_FIELDS, RunConfigError, lora_targets, model_config_overrides

DEMO_DATA = "generated:demo"
log = logging.getLogger("lima_jax.train")


def prepare_demo_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """`data.path = 'generated:demo'`: writes the generated instruction set into the
    workdir and points `data.path` (and `train.eval_data`) at it."""
    if config.data.path != DEMO_DATA:
        return
    train_path, held_out_path = demo_data.write_demo_data(workdir / "demo_data", seed=config.seed)
    config.data.path = str(train_path)
    if config.train.eval_data in ("", DEMO_DATA):
        config.train.eval_data = str(held_out_path)


# Conversations of the data the train/serve check reads (plus its probes): enough for every
# layout a file mixes (system prompts, several rounds), few enough to cost nothing.
CHECKED_CONVERSATIONS = 32


def check_train_serve(config: ml_collections.ConfigDict, tokenizer) -> None:
    """Refuses a tokenizer + template + end of turn that would train what decoding or an export
    does not serve (`lima_jax.data.check_template`), naming the failed checks."""
    from lima_jax.data.check_template import PROBES, check_setup
    from lima_jax.data.readers import read_conversations

    conversations = list(PROBES)
    if not config.data.path.startswith("tfds:"):
        read = read_conversations(config.data.path, config.data.format, "skip")
        conversations += [c.turns for c in read.conversations[:CHECKED_CONVERSATIONS]]
    result = check_setup(tokenizer, config.data.template, conversations, config.data.loss_on)
    if not result.ok:
        raise RunConfigError("data.template", "training would not match serving: " + "; ".join(result.problems)
                             + f" (see python -m lima_jax.data check-template --tokenizer ... "
                             f"--template {config.data.template})")


def make_model_config(config: ml_collections.ConfigDict, tokenizer, needed_ids: Iterable[int] = ()) -> LlamaConfig:
    """The model's config: the preset (or the init_from checkpoint's shape), the
    tokenizer's vocabulary and end of turn, the run's numerics (dtypes, dropout, remat) and its
    LoRA adapters (`config.lora`). Under LoRA the rows of a new end of turn, and those of the
    `needed_ids` (`ids_the_run_needs`) that the base never trained, train beside the adapters:
    the run starts them all as a mean row (`lima_jax.train.base_weights.initial_params`)."""
    model_config = _model_config(config, tokenizer)
    if not config.lora.rank:
        return model_config
    trained = {tokenizer.eot_id} if tokenizer.eot_is_new else set()
    if config.model.init_from:
        rows = reinitialised_rows(config.model.init_from, model_config, needed_ids)
        trained |= set(rows["ids"] if rows else ())
    return with_lora(config, model_config, trained_token_ids=sorted(trained))


def with_lora(config: ml_collections.ConfigDict, model_config: LlamaConfig, trained_token_ids=()) -> LlamaConfig:
    """`model_config` with the run's `config.lora` (rank 0: unchanged), the rows of
    `trained_token_ids` training beside the adapters; a value that cannot work stops the run
    naming its key."""
    lora = config.lora
    if not lora.rank:
        return model_config
    try:
        # XLA:CPU cannot run a step on packed int4 (LoraSpec.packed_4bit); a TPU topology compiled
        # from here can.
        packed = bool(config.get("topology")) or jax.default_backend() != "cpu"
        spec = LoraSpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora_targets(lora.targets),
                        base_dtype=lora.base_dtype, token_ids=tuple(trained_token_ids), packed_4bit=packed)
        return model_config.replace(lora=spec)
    except ConfigError as err:
        key = str(err).split()[0].split("=")[0].rstrip(":")
        raise RunConfigError(key, str(err).split(" ", 1)[1]) from None


def _model_config(config: ml_collections.ConfigDict, tokenizer) -> LlamaConfig:
    overrides = model_config_overrides(config)
    token_ids = dict(eot_token_id=tokenizer.eot_id, bos_token_id=tokenizer.bos_id,
                     eos_token_id=tokenizer.eos_id)
    try:
        if not config.model.init_from:
            return get_preset(config.model.preset).replace(vocab_size=tokenizer.vocab_size, **token_ids,
                                                           **overrides)
        path = pathlib.Path(config.model.init_from)
        kind = init_from_kind(path)
        base = load_hf_config(path) if kind == HF else load_model_config(path)
    except ConfigError as err:
        raise RunConfigError("model", str(err)) from None
    # max_seq_len shapes no parameter: a checkpoint may be trained at another length.
    changed = [f for f in MODEL_SHAPE_FIELDS if f in overrides and f != "max_seq_len"]
    if changed:
        raise RunConfigError(f"model.{changed[0]}", "cannot change the shape of an init_from checkpoint")
    return base.replace(vocab_size=_checked_vocab(base, tokenizer, path), **token_ids, **overrides)


def _checked_vocab(base: LlamaConfig, tokenizer, path: pathlib.Path) -> int:
    """The run's vocabulary size from the checkpoint's and the tokenizer's.

    A new EOT takes the id after the tokenizer's vocabulary, which must then be the checkpoint's
    (or the checkpoint already has that EOT). A reused end of turn adds no row; the checkpoint may
    have more rows than the tokenizer has ids (they are never produced)."""
    name = f"the tokenizer {tokenizer.path}" if tokenizer.path else "the tokenizer"
    if not tokenizer.eot_is_new:
        if base.vocab_size < tokenizer.base_vocab_size:
            raise RunConfigError("model.init_from", f"{path} has a vocabulary of {base.vocab_size} ids, "
                                 f"{name} has {tokenizer.base_vocab_size}: it is not this model's tokenizer")
        return base.vocab_size
    with_eot = base.eot_token_id is not None
    expected = tokenizer.vocab_size if with_eot else tokenizer.base_vocab_size
    if base.vocab_size != expected:
        raise RunConfigError(
            "model.init_from",
            f"{path} has a vocabulary of {base.vocab_size} ids, {name} "
            f"has {tokenizer.base_vocab_size} (+ EOT): they must match")
    return tokenizer.vocab_size


def ids_the_run_needs(tokenizer, token_ids: np.ndarray) -> set[int]:
    """The end of turn, BOS, EOS, and every special token the encoded data holds: the ids whose
    rows must be usable (`initial_params`)."""
    special = np.asarray(sorted(tokenizer.special_tokens.values()), np.int64)
    present = special[np.isin(special, token_ids)] if special.size else special
    return {int(i) for i in (tokenizer.eot_id, tokenizer.bos_id, tokenizer.eos_id, *present) if i is not None}
