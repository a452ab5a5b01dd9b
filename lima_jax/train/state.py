"""What `lima_jax.train` does before its loop: make the demo data, resolve the model config
against the tokenizer, and load starting weights.

Starting weights (`config.model.init_from`) come from a Hugging Face directory
(`config.json` + safetensors) or a lima_jax checkpoint (`python -m lima_jax.convert
hf-to-lima`). LIMA's EOT token is appended when the checkpoint lacks it: its rows
start as the mean of the others (README "Training").
"""

from __future__ import annotations

import logging
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from lima_jax.checkpoint import (
    HF,
    HF_CONFIG_FILE,
    MODEL,
    MODEL_CONFIG_FILE,
    checkpoint_kind,
    load_model,
    load_model_config,
)
from lima_jax.data import generated as demo_data
from lima_jax.model.config import ConfigError, LlamaConfig
from lima_jax.model.hf import append_vocab_rows, from_hf, load_hf_config
from lima_jax.model.presets import get_preset
from lima_jax.model.vocab_rows import UNTRAINED_FRACTION, reinit_untrained_rows
from lima_jax.train.config import MODEL_SHAPE_FIELDS, RunConfigError, model_config_overrides

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


def _init_from_kind(path: pathlib.Path) -> str:
    """HF or MODEL (`lima_jax.checkpoint.checkpoint_kind`): the kinds training starts from."""
    kind = checkpoint_kind(path)
    if kind not in (HF, MODEL):
        raise RunConfigError("model.init_from", f"{path} is neither a Hugging Face directory "
                             f"({HF_CONFIG_FILE}) nor a lima_jax checkpoint ({MODEL_CONFIG_FILE})")
    return kind


def make_model_config(config: ml_collections.ConfigDict, tokenizer) -> LlamaConfig:
    """The model's config: the preset (or the init_from checkpoint's shape), the
    tokenizer's vocabulary and end of turn, and the run's numerics (dtypes, dropout, remat)."""
    overrides = model_config_overrides(config)
    token_ids = dict(eot_token_id=tokenizer.eot_id, bos_token_id=tokenizer.bos_id,
                     eos_token_id=tokenizer.eos_id)
    try:
        if not config.model.init_from:
            return get_preset(config.model.preset).replace(vocab_size=tokenizer.vocab_size, **token_ids,
                                                           **overrides)
        path = pathlib.Path(config.model.init_from)
        kind = _init_from_kind(path)
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


def initial_params(config: ml_collections.ConfigDict, model_config: LlamaConfig, fns,
                   param_shardings, needed_ids=()):
    """Starting parameters (a pure dict, sharded) from `model.init_from`, or None.

    needed_ids: the token ids the run uses (its end of turn, BOS, EOS, the special tokens of
    its data); those whose rows the checkpoint never trained are initialised like a new EOT
    (`lima_jax.model.vocab_rows`), and logged."""
    if not config.model.init_from:
        return None
    params = _loaded_params(config, model_config, param_shardings)
    params, fixed = reinit_untrained_rows(params, needed_ids, model_config.vocab_size)
    if fixed:
        log.warning("model.init_from: the rows of token ids %s were untrained (norm below %.0f%% of the "
                    "median): initialised to the mean row, as a new EOT is", fixed, UNTRAINED_FRACTION * 100)
    return params


def _loaded_params(config: ml_collections.ConfigDict, model_config: LlamaConfig, param_shardings):
    path = pathlib.Path(config.model.init_from)
    dtype = model_config.param_dtype
    hf = _init_from_kind(path) == HF
    stored = load_hf_config(path) if hf else load_model_config(path)
    add_eot = model_config.vocab_size > stored.vocab_size  # a new EOT the checkpoint lacks
    if hf:
        model = from_hf(path, dtype=dtype, add_eot=add_eot, shardings=param_shardings)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if not add_eot:
        model = load_model(path, shardings=param_shardings, param_dtype=dtype)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # A checkpoint without EOT: restore on the host, append the EOT rows, then place.
    host = nnx.to_pure_dict(nnx.state(load_model(path, param_dtype=dtype), nnx.Param))
    host = jax.tree.map(np.asarray, host)
    v_old, v_new, padded = stored.vocab_size, model_config.vocab_size, model_config.padded_vocab_size
    host["embedding"] = append_vocab_rows(host["embedding"][:v_old], v_old, v_new - v_old, padded)
    if "lm_head" in host:
        head = append_vocab_rows(host["lm_head"][:, :v_old].T, v_old, v_new - v_old, padded)
        host["lm_head"] = np.ascontiguousarray(head.T)
    return jax.tree.map(lambda x, s: jax.device_put(x, s), host, param_shardings)
