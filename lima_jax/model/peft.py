"""A LoRA run's adapters as a PEFT adapter directory (`python -m lima_jax.convert lima-to-peft`).

`write_peft(adapters, config, out_dir, base_model=...)` writes what ``peft.PeftModel.from_pretrained``
reads: ``adapter_config.json`` (a LORA config for CAUSAL_LM: r, lora_alpha, lora_dropout, the
adapted modules by their Hugging Face names, no rslora, no bias) and ``adapter_model.safetensors``
under PEFT's key names, ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` [R, in]
and ``...lora_B.weight`` [out, R]; how our [in..., out...] weights lie in Hugging Face's [out, in]
is `lima_jax.model.hf.tensor_maps`' (`_hf_order`), so the adapters follow the weights they adapt.
Scaling is PEFT's alpha / R on both sides.

New token rows (a new end of turn, `config.lora.token_ids`) become PEFT's trainable tokens:
``trainable_token_indices = {"embed_tokens": ids}`` with the trained rows in
``base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`` [R_tok, D] and, for an
untied output layer, ``"lm_head": ids`` with its rows in
``base_model.model.lm_head.token_adapter.trainable_tokens_delta`` (tied embeddings: PEFT ties the
output layer to the embedding's rows itself). Rows the run changed in its frozen base (a reused
token the base never trained, initialised as a new EOT is: `lima_jax.model.vocab_rows`) are not in
PEFT's copy of the base, so they travel as trainable tokens too (`base_rows`). A run with a new
EOT has a larger vocabulary than its base, so the base must be resized before the adapter loads::

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(n)  # n: the run's vocabulary (its tokenizer's length)
    model = PeftModel.from_pretrained(base, adapter_dir)

The trainable tokens replace the resized rows wholesale, so how transformers initialises them does
not matter. Tensors are numpy (safetensors.numpy), float32 unless a dtype is asked for. A base the
run kept quantized (`lora.base_dtype` int8, int4, nf4) still exports, with a warning: PEFT adds
the adapters to whatever base it is given, typically the unquantized one, which is not the base
they were trained on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from collections.abc import Iterator

import numpy as np
from safetensors.numpy import save_file

from lima_jax.model import lora as lora_lib
from lima_jax.model.config import LlamaConfig
from lima_jax.model.hf import NUMPY_DTYPES, TensorMap, tensor_maps

log = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_BIN_FILE = "adapter_model.bin"  # PEFT's older format: an earlier export's is replaced
PREFIX = "base_model.model."  # PeftModel (CAUSAL_LM) -> LlamaForCausalLM
EMBED_MODULE, HEAD_MODULE = "model.embed_tokens", "lm_head"  # LlamaForCausalLM's module paths
TOKEN_DELTA = ".token_adapter.trainable_tokens_delta"


def is_adapter_dir(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a PEFT adapter (its config and weights): what an export replaces."""
    folder = pathlib.Path(folder)
    return (folder / ADAPTER_CONFIG_FILE).is_file() and any(
        (folder / name).is_file() for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_BIN_FILE))


def _targets(config: LlamaConfig) -> Iterator[tuple[str, str, str, TensorMap]]:
    """(module, our weight name, HF module path with `{i}`, tensor map) of every adapted projection."""
    maps = {tmap.ours: tmap for tmap in tensor_maps(config)}
    for target in config.lora.targets:
        module, name, _ = lora_lib.TARGET_WEIGHTS[target]
        tmap = maps[("layers", module, name)]
        yield module, name, tmap.hf.removesuffix(".weight"), tmap


def target_modules(config: LlamaConfig) -> list[str]:
    """The adapted projections as PEFT names them (q_proj, ..., down_proj)."""
    return [hf.rsplit(".", 1)[-1] for _, _, hf, _ in _targets(config)]


def _hf_order(tmap: TensorMap, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(in_order, out_order): column j of the HF weight [out, in] is our flattened input
    `in_order[j]`, row o our flattened output `out_order[o]`, read off `tmap.to_hf` applied to
    index grids (broadcast views: no weight-sized array for the reshapes tensor_maps does)."""
    shape = (*in_shape, *out_shape)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    ins = np.broadcast_to(np.arange(n_in).reshape(*in_shape, *(1,) * len(out_shape)), shape)
    outs = np.broadcast_to(np.arange(n_out).reshape(*(1,) * len(in_shape), *out_shape), shape)
    hf_ins, hf_outs = np.asarray(tmap.to_hf(ins)), np.asarray(tmap.to_hf(outs))
    if hf_ins.shape != tuple(tmap.hf_shape) or hf_outs.shape != tuple(tmap.hf_shape):
        raise ValueError(f"{tmap.hf}: tensor_maps gives {hf_ins.shape}, expected {tmap.hf_shape}")
    in_order, out_order = hf_ins[0], hf_outs[:, 0]
    # A layout that mixed inputs and outputs could not carry low-rank factors apart.
    if not ((hf_ins[-1] == in_order).all() and (hf_outs[:, -1] == out_order).all()):
        raise ValueError(f"{tmap.hf}: its layout mixes input and output axes")
    return in_order, out_order


def adapter_tensors(adapters: dict, config: LlamaConfig, base_rows: dict | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(PEFT key, float32 array) of every adapter and trained token row in `adapters` (the
    trainable params of a LoRA model, `lora.trainable`), and of `base_rows` (`write_peft`)."""
    lora = config.lora
    for module, name, hf_module, tmap in _targets(config):
        a = np.asarray(adapters["layers"][module][name + lora_lib.LORA_A], np.float32)  # [L, in..., R]
        b = np.asarray(adapters["layers"][module][name + lora_lib.LORA_B], np.float32)  # [L, R, out...]
        in_shape, out_shape = a.shape[1:-1], b.shape[2:]
        in_order, out_order = _hf_order(tmap, in_shape, out_shape)
        for i in range(config.n_layers):
            a_ir = a[i].reshape(-1, lora.rank)[in_order]
            b_ro = b[i].reshape(lora.rank, -1)[:, out_order]
            key = PREFIX + hf_module.format(i=i)
            yield key + ".lora_A.weight", np.ascontiguousarray(a_ir.T)  # [R, in]
            yield key + ".lora_B.weight", np.ascontiguousarray(b_ro.T)  # [out, R]
    ids, embed_rows, head_rows = _token_rows(adapters, config, base_rows)
    if ids:
        yield PREFIX + EMBED_MODULE + TOKEN_DELTA, embed_rows
        if not config.tie_embeddings:
            yield PREFIX + HEAD_MODULE + TOKEN_DELTA, head_rows


def _token_rows(adapters: dict, config: LlamaConfig, base_rows: dict | None):
    """(ids, embedding rows [n, D], output rows [n, D] or None when tied) of every trainable token:
    the run's trained rows (`lora.token_ids`), then `base_rows`' ids."""
    lora = config.lora
    ids, embed, head = [], [], []
    if lora.token_ids:
        ids += list(lora.token_ids)
        embed.append(np.asarray(adapters[lora_lib.TOKEN_ROWS], np.float32))
        if not config.tie_embeddings:
            head.append(np.asarray(adapters[lora_lib.TOKEN_HEAD], np.float32).T)  # [D, R_tok] -> [R_tok, D]
    if base_rows and base_rows["ids"]:
        ids += [int(i) for i in base_rows["ids"]]
        embed.append(np.asarray(base_rows["embedding"], np.float32))
        if not config.tie_embeddings:
            head.append(np.asarray(base_rows["lm_head"], np.float32))
    if not ids:
        return [], None, None
    return ids, np.concatenate(embed), (None if config.tie_embeddings else np.ascontiguousarray(np.concatenate(head)))


def adapter_config(config: LlamaConfig, base_model: str, base_rows: dict | None = None) -> dict:
    """adapter_config.json of `config.lora`, for the base at `base_model` (`base_rows`: `write_peft`)."""
    lora = config.lora
    result = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules(config),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "trainable_token_indices": None,
    }
    ids = list(lora.token_ids) + [int(i) for i in (base_rows or {}).get("ids", ())]
    if ids:
        indices = {EMBED_MODULE.rsplit(".", 1)[-1]: ids}
        if not config.tie_embeddings:
            indices[HEAD_MODULE] = ids
        result["trainable_token_indices"] = indices
    return result


def write_peft(adapters: dict, config: LlamaConfig, out_dir: str | os.PathLike, *, base_model: str,
               dtype: str | None = None, base_rows: dict | None = None) -> pathlib.Path:
    """Writes `adapters` (a LoRA model's trainable params) as a PEFT adapter directory; returns it.
    dtype: of the tensors written (float32 by default). base_rows: rows of the frozen base that
    differ from `base_model`'s, written as trainable tokens too: {"ids": [...], "embedding":
    [n, D], "lm_head": [n, D] (untied only)} (the rows a run re-initialises, convert.py)."""
    lora = config.lora
    if lora is None:
        raise ValueError("write_peft needs a LoRA model config (config.lora)")
    if lora.quantized:
        log.warning("the run trained its adapters on a %s-quantized base; PEFT applies them to the "
                    "base it is given (usually the unquantized %s): outputs will differ a little from "
                    "the run's", lora.base_dtype, base_model)
    np_dtype = NUMPY_DTYPES[dtype or "float32"]
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.astype(np_dtype) for key, value in adapter_tensors(adapters, config, base_rows)}
    partial = out / (ADAPTER_WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    (out / ADAPTER_BIN_FILE).unlink(missing_ok=True)
    os.replace(partial, out / ADAPTER_WEIGHTS_FILE)
    (out / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config(config, base_model, base_rows), indent=2))
    if lora.token_ids:
        log.info("%s: the rows of token ids %s trained beside the adapters (PEFT trainable tokens); a base "
                 "with fewer than %d rows needs base.resize_token_embeddings(%d) before "
                 "PeftModel.from_pretrained", out, list(lora.token_ids), config.vocab_size, config.vocab_size)
    return out
