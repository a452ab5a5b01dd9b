"""Hugging Face import and export for the LLaMA model.

`from_hf(dir)` reads `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`) tensor by tensor into a ready `Llama`;
`to_hf(model, dir)` writes a directory `transformers.LlamaForCausalLM` loads.
Neither ever holds a second copy of the whole model: tensors are read, reshaped
and written one at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lima_jax.errors import LimaError
from lima_jax.model.config import ConfigError, LlamaConfig, RopeScaling
from lima_jax.model.llama import Llama, abstract_model

log = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"  # a SentencePiece tokenizer, as Hugging Face directories name it
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(LimaError, ValueError):
    """A Hugging Face checkpoint whose tensors do not fit the model; names the tensor."""


# --------------------------------------------------------------------------- config


def _config_error(path: pathlib.Path, field: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: field {field!r}: {message}")


def _rope_scaling_from_hf(raw: dict | None, path: pathlib.Path, field: str) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "llama3":
        try:
            return RopeScaling(
                kind="llama3",
                factor=float(raw["factor"]),
                low_freq_factor=float(raw["low_freq_factor"]),
                high_freq_factor=float(raw["high_freq_factor"]),
                original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
            )
        except KeyError as missing:
            raise _config_error(path, f"{field}.{missing.args[0]}", "missing for rope type llama3") from None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(raw["factor"]))
    raise _config_error(
        path, f"{field}.rope_type",
        f"rope scaling type {kind!r} is not supported (supported: default, llama3, linear)",
    )


def load_hf_config(hf_dir: str | os.PathLike, **overrides) -> LlamaConfig:
    """A LlamaConfig from a Hugging Face `config.json`, refusing what the model cannot represent."""
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the Hugging Face directory {hf_dir}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None

    model_type = raw.get("model_type")
    if model_type not in ("llama", "mistral"):
        raise _config_error(path, "model_type", f"{model_type!r} is not 'llama' (or 'mistral' without a "
                                                "sliding window)")
    # Mistral is LLaMA plus sliding-window attention; without the window (Mistral 7B v0.2/v0.3 and
    # their fine-tunes: null, or a window as long as the context) the two are the same network.
    window = raw.get("sliding_window") if model_type == "mistral" else None
    if window and int(window) < int(raw.get("max_position_embeddings", 2048)):
        raise _config_error(path, "sliding_window", f"{window} is shorter than the context "
                                                    f"({raw.get('max_position_embeddings')}): sliding-window "
                                                    "attention is not supported")
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field):
            raise _config_error(path, field, "biases are not part of the LLaMA architecture here")
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _config_error(path, "hidden_act", f"{act!r} is not supported (only silu)")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
        if field not in raw:
            raise _config_error(path, field, "missing")

    # transformers >= 5 nests theta and scaling in `rope_parameters`; older files
    # have `rope_theta` and `rope_scaling` at the top level.
    # A non-empty legacy `rope_scaling` wins, as transformers 5 itself reads it.
    rope = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    theta = float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    if raw.get("rope_scaling"):
        scaling = _rope_scaling_from_hf(raw["rope_scaling"], path, "rope_scaling")
    else:
        scaling = _rope_scaling_from_hf(rope, path, "rope_parameters")

    eos = raw.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    values = dict(
        vocab_size=int(raw["vocab_size"]),
        dim=int(raw["hidden_size"]),
        n_layers=int(raw["num_hidden_layers"]),
        n_heads=int(raw["num_attention_heads"]),
        n_kv_heads=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
        mlp_dim=int(raw["intermediate_size"]),
        head_dim=raw.get("head_dim"),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=int(raw.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos,
    )
    values.update(overrides)
    try:
        return LlamaConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _hf_config_dict(config: LlamaConfig, token_ids: dict | None = None) -> dict:
    """config.json of `config`; `token_ids` (`lima_jax.data.tokenizer_export.hf_token_ids`: the
    tokenizer's bos/eos/pad/unk ids, the end of turn first in eos) replace the model config's."""
    eos_ids = [config.eot_token_id] if config.eot_token_id is not None else []
    if config.eos_token_id is not None and config.eos_token_id not in eos_ids:
        eos_ids.append(config.eos_token_id)
    result = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        # With LIMA's EOT appended, generation must stop at it: EOT is named first.
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
        "torch_dtype": config.param_dtype,
    }
    result.update(token_ids or {})
    if config.rope_scaling is not None:
        scaling = config.rope_scaling
        result["rope_scaling"] = (
            {"rope_type": "linear", "factor": scaling.factor}
            if scaling.kind == "linear"
            else {
                "rope_type": "llama3",
                "factor": scaling.factor,
                "low_freq_factor": scaling.low_freq_factor,
                "high_freq_factor": scaling.high_freq_factor,
                "original_max_position_embeddings": scaling.original_max_position_embeddings,
            }
        )
    return result


# --------------------------------------------------------------------------- tensor map


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one of our parameters maps to Hugging Face tensors.

    `ours` is the parameter's path in the model state; `hf` the HF name (with
    `{i}` for per-layer tensors, stacked along our leading `layers` axis);
    `to_ours`/`to_hf` reshape one tensor; `hf_shape` is the HF tensor's shape.
    """

    ours: tuple[str, ...]
    hf: str
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def tensor_maps(config: LlamaConfig) -> list[TensorMap]:
    """Every parameter of a model of `config` with its Hugging Face counterpart."""
    d, n, k, h, f = config.dim, config.n_heads, config.n_kv_heads, config.head_dim, config.mlp_dim
    layer = "model.layers.{i}."

    def identity(w):
        return w

    def linear_in(*out_shape):  # HF [out, in] -> ours [in, *out]
        return lambda w: w.T.reshape(w.shape[1], *out_shape)

    def linear_out(w):  # ours [in, *out] -> HF [out, in]
        return w.reshape(w.shape[0], -1).T

    maps = [
        TensorMap(("layers", "attention_norm", "scale"), layer + "input_layernorm.weight",
                  (d,), identity, identity),
        TensorMap(("layers", "attention", "wq"), layer + "self_attn.q_proj.weight",
                  (n * h, d), linear_in(n, h), linear_out),
        TensorMap(("layers", "attention", "wk"), layer + "self_attn.k_proj.weight",
                  (k * h, d), linear_in(k, h), linear_out),
        TensorMap(("layers", "attention", "wv"), layer + "self_attn.v_proj.weight",
                  (k * h, d), linear_in(k, h), linear_out),
        # o_proj is HF [D, N*H]; ours is [N, H, D].
        TensorMap(("layers", "attention", "wo"), layer + "self_attn.o_proj.weight",
                  (d, n * h), lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T),
        TensorMap(("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight",
                  (d,), identity, identity),
        TensorMap(("layers", "mlp", "w_gate"), layer + "mlp.gate_proj.weight",
                  (f, d), lambda w: w.T, lambda w: w.T),
        TensorMap(("layers", "mlp", "w_up"), layer + "mlp.up_proj.weight",
                  (f, d), lambda w: w.T, lambda w: w.T),
        TensorMap(("layers", "mlp", "w_down"), layer + "mlp.down_proj.weight",
                  (d, f), lambda w: w.T, lambda w: w.T),
        TensorMap(("final_norm", "scale"), "model.norm.weight", (d,), identity, identity),
    ]
    return maps


# --------------------------------------------------------------------------- import


def _open_safetensors(path: pathlib.Path):
    """`safe_open(path)`; a truncated, corrupt or missing file is one CheckpointError naming it."""
    try:
        return safe_open(path, framework="numpy")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); a download or copy "
                              "cut short? fetch the file again") from None


def _read_weight_map(index: pathlib.Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if isinstance(weight_map, dict):
            return weight_map
    except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, no weight_map
        pass
    raise CheckpointError(f"{index}: not a safetensors index (JSON with a 'weight_map' object); "
                          "a download cut short? fetch the file again")


class SafetensorsReader:
    """Reads named tensors lazily from `model.safetensors` or a sharded index."""

    def __init__(self, hf_dir: pathlib.Path):
        self.hf_dir = hf_dir
        index = hf_dir / SAFETENSORS_INDEX
        single = hf_dir / SAFETENSORS_FILE
        if index.is_file():
            self.weight_map = _read_weight_map(index)
        elif single.is_file():
            with _open_safetensors(single) as f:
                self.weight_map = {name: SAFETENSORS_FILE for name in f.keys()}
        else:
            raise FileNotFoundError(
                f"{hf_dir}: neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} found "
                "(only safetensors checkpoints are read; convert .bin files with transformers first)"
            )
        self._open: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.hf_dir}: tensor {name!r} is missing from the checkpoint")
        filename = self.weight_map[name]
        if filename not in self._open:
            self._open[filename] = _open_safetensors(self.hf_dir / filename)
        try:
            tensor = self._open[filename].get_tensor(name)
        except SafetensorError as err:
            raise CheckpointError(f"{self.hf_dir / filename}: tensor {name!r} cannot be read ({err})") from None
        if tuple(tensor.shape) != tuple(expected_shape):
            raise CheckpointError(
                f"{self.hf_dir / filename}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(expected_shape)}"
            )
        return tensor


def _place(array: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """Host array to device(s); with a sharding each device receives only its slice."""
    if sharding is None:
        return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def append_vocab_rows(table_vd: np.ndarray, real_rows: int, added_rows: int, padded_rows: int) -> np.ndarray:
    """[V_real, D] -> [V_padded, D]: added rows (EOT) are the mean of the real rows
    (as LIMA adds its EOT token), padding rows are zero."""
    out = np.zeros((padded_rows, table_vd.shape[1]), dtype=table_vd.dtype)
    out[:real_rows] = table_vd
    if added_rows:
        mean = table_vd.astype(np.float32).mean(axis=0)
        out[real_rows:real_rows + added_rows] = mean.astype(table_vd.dtype)
    return out


def from_hf(
    hf_dir: str | os.PathLike,
    dtype: str = "float32",
    *,
    compute_dtype: str | None = None,
    add_eot: bool = False,
    shardings=None,
    **config_overrides,
) -> Llama:
    """A ready `Llama` from a Hugging Face LLaMA directory.

    dtype: parameter dtype; compute_dtype defaults to it. add_eot: append LIMA's
    end-of-turn token as id V (its embedding rows start as the mean of the
    others) and record it as `config.eot_token_id`. shardings: optional state
    of `jax.sharding.Sharding`s (see `lima_jax.sharding.model_shardings`) so each
    device receives only its slice. Tensors are read and placed one at a time.
    """
    hf_dir = pathlib.Path(hf_dir)
    config = load_hf_config(hf_dir, param_dtype=dtype, dtype=compute_dtype or dtype,
                            **config_overrides)
    hf_vocab = config.vocab_size
    if add_eot:
        config = config.replace(vocab_size=hf_vocab + 1, eot_token_id=hf_vocab)
    reader = SafetensorsReader(hf_dir)
    np_dtype = NUMPY_DTYPES[dtype]

    graphdef, state = nnx.split(abstract_model(config))

    def sharding_of(path):
        if shardings is None:
            return None
        node = shardings
        for key in path:
            node = node[key]
        return node.get_value() if isinstance(node, nnx.Variable) else node

    def assign(path, array):
        node = state
        for key in path:
            node = node[key]
        node.set_value(_place(array, sharding_of(path)))

    padded, d = config.padded_vocab_size, config.dim
    added = config.vocab_size - hf_vocab
    embed = reader.get("model.embed_tokens.weight", (hf_vocab, d)).astype(np_dtype)
    assign(("embedding",), append_vocab_rows(embed, hf_vocab, added, padded))
    del embed
    if not config.tie_embeddings:
        head = reader.get("lm_head.weight", (hf_vocab, d)).astype(np_dtype)
        assign(("lm_head",), append_vocab_rows(head, hf_vocab, added, padded).T.copy())
        del head
    elif "lm_head.weight" in reader:
        log.info("%s: tie_word_embeddings is true; the lm_head.weight tensor is ignored", hf_dir)

    for tmap in tensor_maps(config):
        if not tmap.per_layer:
            assign(tmap.ours, tmap.to_ours(reader.get(tmap.hf, tmap.hf_shape)).astype(np_dtype))
            continue
        stacked = None
        for i in range(config.n_layers):
            layer_value = tmap.to_ours(reader.get(tmap.hf.format(i=i), tmap.hf_shape))
            if stacked is None:
                stacked = np.empty((config.n_layers,) + layer_value.shape, np_dtype)
            stacked[i] = layer_value
        assign(tmap.ours, stacked)
        del stacked
    return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------- export


def _hf_tensors(model: Llama) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy tensor) pairs, one at a time, true vocabulary rows only."""
    config = model.config
    v = config.vocab_size
    yield "model.embed_tokens.weight", np.asarray(jax.device_get(model.embedding.get_value()))[:v]
    state = nnx.state(model, nnx.Param)
    for tmap in tensor_maps(config):
        node = state
        for key in tmap.ours:
            node = node[key]
        value = np.asarray(jax.device_get(node.get_value()))
        if tmap.per_layer:
            for i in range(config.n_layers):
                yield tmap.hf.format(i=i), np.ascontiguousarray(tmap.to_hf(value[i]))
        else:
            yield tmap.hf, np.ascontiguousarray(tmap.to_hf(value))
        del value
    if not config.tie_embeddings:
        head = np.asarray(jax.device_get(model.lm_head.get_value()))
        yield "lm_head.weight", np.ascontiguousarray(head[:, :v].T)


def to_hf(
    model: Llama,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    tokenizer_model: str | os.PathLike | None = None,
    token_ids: dict | None = None,
) -> pathlib.Path:
    """Writes `model` as a Hugging Face LLaMA directory and returns its path.

    Tensors stream into safetensors shards of at most `max_shard_bytes` (one
    `model.safetensors` when it all fits, else numbered shards and an index),
    so memory holds the model plus one shard. `config.json` and
    `generation_config.json` carry the true vocabulary size and name the EOT
    token (when the model has one) first among the end-of-sequence ids, so that
    generation stops at the end of a turn as at EOS. `token_ids`: the tokenizer's
    ids for both files (`lima_jax.data.tokenizer_export.hf_token_ids`: bos, eos
    with the end of turn first, pad, unk), in place of the model config's bos/eos.
    `tokenizer_model`: a SentencePiece file copied in as tokenizer.model (an
    export's full tokenizer is `lima_jax.data.tokenizer_export.export_tokenizer`'s).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    np_dtype = NUMPY_DTYPES[dtype or config.param_dtype]

    shard_files: list[str] = []
    weight_map: dict[str, str] = {}
    pending: dict[str, np.ndarray] = {}
    pending_bytes = 0
    total_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        name = f"shard-{len(shard_files):05d}.tmp.safetensors"
        save_file(pending, str(out / name), metadata={"format": "pt"})
        shard_files.append(name)
        for key in pending:
            weight_map[key] = name
        pending, pending_bytes = {}, 0

    for name, tensor in _hf_tensors(model):
        tensor = tensor.astype(np_dtype)
        if pending and pending_bytes + tensor.nbytes > max_shard_bytes:
            flush()
        pending[name] = tensor
        pending_bytes += tensor.nbytes
        total_bytes += tensor.nbytes
    flush()

    for stale in [SAFETENSORS_FILE, SAFETENSORS_INDEX, *(p.name for p in out.glob("model-*-of-*.safetensors"))]:
        (out / stale).unlink(missing_ok=True)
    if len(shard_files) == 1:
        os.replace(out / shard_files[0], out / SAFETENSORS_FILE)
    else:
        final = {
            tmp: f"model-{i + 1:05d}-of-{len(shard_files):05d}.safetensors"
            for i, tmp in enumerate(shard_files)
        }
        for tmp, name in final.items():
            os.replace(out / tmp, out / name)
        index = {
            "metadata": {"total_size": total_bytes},
            "weight_map": {k: final[v] for k, v in sorted(weight_map.items())},
        }
        (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))

    hf_config = _hf_config_dict(config, token_ids)
    hf_config["torch_dtype"] = dtype or config.param_dtype
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    generation = {key: hf_config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in hf_config}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, out / TOKENIZER_FILE)
    return out
