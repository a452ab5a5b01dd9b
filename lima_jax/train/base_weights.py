"""A run's starting weights: `config.model.init_from` read into the run's shardings.

From a Hugging Face directory (`config.json` + safetensors) or a lima_jax checkpoint (`python -m
lima_jax.convert hf-to-lima`). LIMA's EOT token is appended when the checkpoint lacks it: its rows
start as the mean of the others (README "Training"), and rows of tokens the run needs that the
checkpoint never trained are set the same way (`lima_jax.model.vocab_rows`).

Under LoRA the plain weights become the frozen base (quantized when `lora.base_dtype` asks) with
fresh adapters (`lima_jax.model.lora.attach`). Rows the run re-initialises (`reinitialised_rows`,
read before the model is built) train beside the adapters, as a new EOT's do: a mean row the
base never learnt to read or produce would otherwise stay as it starts. Checkpoints of a LoRA run
hold only what trains, so resuming, decoding and exporting read the base again from here
(`lora_base_params`), with the token ids the run needed recorded in its checkpoints' meta
(`LORA_BASE_META`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable

import jax
import numpy as np
from flax import nnx

from lima_jax import sharding as sharding_lib
from lima_jax.checkpoint import (
    HF,
    HF_CONFIG_FILE,
    MODEL,
    MODEL_CONFIG_FILE,
    checkpoint_kind,
    load_model,
    load_model_config,
    read_model_tables,
)
from lima_jax.errors import LimaError
from lima_jax.model import lora as lora_lib
from lima_jax.model.config import LlamaConfig
from lima_jax.model.hf import NUMPY_DTYPES, SafetensorsReader, append_vocab_rows, from_hf, load_hf_config
from lima_jax.model.llama import abstract_model
from lima_jax.model.vocab_rows import UNTRAINED_FRACTION, reinit_untrained_rows
from lima_jax.train.config import RunConfigError

log = logging.getLogger("lima_jax.train")
# The meta key of a LoRA run's checkpoints that says how to rebuild its frozen base.
LORA_BASE_META = "lora_base"


class BaseWeightsError(LimaError, ValueError):
    """The frozen base of a LoRA checkpoint cannot be read again."""


def init_from_kind(path: pathlib.Path) -> str:
    """HF or MODEL (`lima_jax.checkpoint.checkpoint_kind`): the kinds training starts from."""
    kind = checkpoint_kind(path)
    if kind not in (HF, MODEL):
        raise RunConfigError("model.init_from", f"{path} is neither a Hugging Face directory "
                             f"({HF_CONFIG_FILE}) nor a lima_jax checkpoint ({MODEL_CONFIG_FILE})")
    return kind


def plain_shardings(model_config: LlamaConfig, param_shardings: dict, rules=None) -> dict | None:
    """The shardings of the adapter-free model over the mesh of `param_shardings` (a LoRA
    model's), by `rules` (default: the sharding module's)."""
    leaves = [s for s in jax.tree.leaves(param_shardings) if isinstance(s, jax.sharding.NamedSharding)]
    state = nnx.state(abstract_model(model_config.replace(lora=None)), nnx.Param)
    if not leaves:
        device = jax.tree.leaves(param_shardings)[0]
        return jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
    return nnx.to_pure_dict(sharding_lib.state_shardings(state, leaves[0].mesh, rules or sharding_lib.DEFAULT_RULES))


def initial_params(init_from: str, model_config: LlamaConfig, param_shardings, needed_ids: Iterable[int] = (),
                   rng: jax.Array | None = None, rules=None):
    """Starting parameters (a pure dict, in `param_shardings`) from `init_from`, or None without one.

    needed_ids: the token ids the run uses (its end of turn, BOS, EOS, the special tokens of
    its data); those whose rows the checkpoint never trained are initialised like a new EOT
    (`lima_jax.model.vocab_rows`), and logged. Under LoRA, `rng` draws the fresh adapters and
    `rules` (the run's sharding rules) place the plain weights before they become the base."""
    if not init_from:
        return None
    plain_config = model_config.replace(lora=None)
    shardings = plain_shardings(model_config, param_shardings, rules) if model_config.lora else param_shardings
    params = _loaded_params(pathlib.Path(init_from), plain_config, shardings)
    params, fixed = reinit_untrained_rows(params, needed_ids, model_config.vocab_size)
    if fixed:
        log.warning("model.init_from: the rows of token ids %s were untrained (norm below %.0f%% of the "
                    "median): initialised to the mean row, as a new EOT is%s", fixed, UNTRAINED_FRACTION * 100,
                    "; they train beside the adapters" if model_config.lora else "")
    if model_config.lora is None:
        return params
    rng = jax.random.PRNGKey(0) if rng is None else rng
    attach = jax.jit(lambda plain, key: lora_lib.attach(plain, model_config, key),
                     out_shardings=param_shardings, donate_argnums=0)
    return attach(params, rng)


def base_tables(init_from: str | os.PathLike, model_config: LlamaConfig) -> dict[str, np.ndarray]:
    """The vocabulary tables of `init_from` on the host, as a run of `model_config` builds them
    (in its param_dtype, a new EOT's rows appended as the mean, padding rows zero): ``embedding``
    [V_padded, D] and, untied, ``lm_head`` [D, V_padded]. Only the tables are read."""
    path = pathlib.Path(init_from)
    hf = init_from_kind(path) == HF
    stored = load_hf_config(path) if hf else load_model_config(path)
    v, added, padded = stored.vocab_size, model_config.vocab_size - stored.vocab_size, model_config.padded_vocab_size
    if hf:
        reader, shape = SafetensorsReader(path), (v, model_config.dim)
        rows_vd = {"embedding": reader.get("model.embed_tokens.weight", shape)}
        if not model_config.tie_embeddings:
            rows_vd["lm_head"] = reader.get("lm_head.weight", shape)
    else:
        stored_tables = read_model_tables(path)
        rows_vd = {"embedding": stored_tables["embedding"][:v]}
        if "lm_head" in stored_tables:
            rows_vd["lm_head"] = stored_tables["lm_head"][:, :v].T
    dtype = NUMPY_DTYPES[model_config.param_dtype]
    tables = {name: append_vocab_rows(t.astype(dtype), v, added, padded) for name, t in rows_vd.items()}
    if "lm_head" in tables:
        tables["lm_head"] = np.ascontiguousarray(tables["lm_head"].T)
    return tables


def reinitialised_rows(init_from: str | os.PathLike, model_config: LlamaConfig,
                       needed_ids: Iterable[int]) -> dict | None:
    """The rows among `needed_ids` that a run of `model_config` from `init_from` re-initialises
    (`initial_params`: rows the base never trained), as they start: {"ids": [...], "embedding":
    [n, D], and untied "lm_head": [n, D]}; None when there are none."""
    tables = jax.tree.map(jax.numpy.asarray, base_tables(init_from, model_config))
    fixed_tables, fixed = reinit_untrained_rows(tables, needed_ids, model_config.vocab_size)
    if not fixed:
        return None
    rows = {"ids": fixed, "embedding": np.asarray(fixed_tables["embedding"])[fixed]}
    if "lm_head" in fixed_tables:
        rows["lm_head"] = np.asarray(fixed_tables["lm_head"])[:, fixed].T
    return rows


def lora_base_params(meta: dict, model_config: LlamaConfig, param_shardings=None) -> dict:
    """A LoRA checkpoint's frozen base (with placeholder adapters, for `lora.join`) read again
    from its run's `model.init_from`, as the run built it (`LORA_BASE_META` in `meta`)."""
    init_from = meta.get("config", {}).get("model", {}).get("init_from", "")
    base = meta.get(LORA_BASE_META, {})
    if not init_from or not pathlib.Path(init_from).exists():
        raise BaseWeightsError(
            f"this LoRA checkpoint holds its adapters only, and its base model.init_from "
            f"{init_from!r} is not there", where="meta.config.model.init_from",
            hint="put the base back at that path (the same weights the run started from)")
    if param_shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        pure = nnx.to_pure_dict(nnx.state(abstract_model(model_config), nnx.Param))
        param_shardings = jax.tree.map(lambda _: device, pure)
    return initial_params(init_from, model_config, param_shardings, base.get("needed_ids", ()))


def _loaded_params(path: pathlib.Path, model_config: LlamaConfig, param_shardings):
    dtype = model_config.param_dtype
    hf = init_from_kind(path) == HF
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
    if param_shardings is None:
        return jax.tree.map(jax.numpy.asarray, host)
    return jax.tree.map(lambda x, s: jax.device_put(x, s), host, param_shardings)
