"""llama2.c checkpoints (karpathy/llama2.c's ``stories*.bin``) read as Hugging Face LLaMA weights.

`read_llama2c` reads the float32 formats v0 and v1 into a Hugging Face ``config.json`` dict
and tensors (q and k rows permuted to Hugging Face's rotary layout, `rotary_to_hf`);
`llama2c_to_hf` writes them as a Hugging Face directory, which `from_hf`, training
(``model.init_from``) and decoding then read like any other. The command is
``python -m lima_jax.convert llama2c-to-hf``.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import struct

import numpy as np
from safetensors.numpy import save_file

from lima_jax.model.hf import SAFETENSORS_FILE, TOKENIZER_FILE, CheckpointError

log = logging.getLogger(__name__)

LLAMA2C_MAGIC = 0x616B3432  # "ak42": the header of llama2.c's versioned formats
LLAMA2C_HEADER_BYTES = 256  # v1 and v2 headers are padded to this size
LLAMA2C_EPS = 1e-5  # llama2.c's RMSNorm epsilon (fixed in its model.py and run.c)
LLAMA2C_THETA = 10000.0  # llama2.c's RoPE base (fixed in its model.py)


def rotary_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """A q/k projection [n_heads * H, D] from Meta's rotary layout to Hugging Face's.

    Meta's (and llama2.c's) RoPE rotates the interleaved pairs (0, 1), (2, 3), ... of each
    head; Hugging Face's rotates (i, i + H/2) ("rotate_half"). transformers'
    convert_llama_weights_to_hf.py permutes the output rows to match:
    w.view(n_heads, H // 2, 2, D).transpose(1, 2).reshape(n_heads * H, D).
    """
    rows, d = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def rotary_from_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of `rotary_to_hf`: Hugging Face's q/k rows back to Meta's interleaved pairs."""
    rows, d = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def _rope_theta(cos_th: np.ndarray, sin_th: np.ndarray, path: pathlib.Path) -> float:
    """The RoPE base of llama2.c's stored freq_cis tables [T, H/2], checked entry by entry."""
    seq_len, half = cos_th.shape
    theta = LLAMA2C_THETA
    if seq_len > 1 and half > 1:
        # At position 1 pair i turns by theta ** (-i / half): fit log(theta) over the pairs.
        angles = np.arctan2(sin_th[1, 1:], cos_th[1, 1:]).astype(np.float64)
        if np.all(angles > 0):
            i = np.arange(1, half)
            estimate = float(np.exp(np.mean(-np.log(angles) * half / i)))
            theta = LLAMA2C_THETA if abs(estimate / LLAMA2C_THETA - 1) < 1e-3 else round(estimate)
    freqs = theta ** (-np.arange(half) / half)
    angle = np.arange(seq_len)[:, None] * freqs[None, :]
    if not (np.allclose(cos_th, np.cos(angle), atol=1e-4) and np.allclose(sin_th, np.sin(angle), atol=1e-4)):
        raise CheckpointError(f"{path}: the stored freq_cis tables are not rotary embeddings of any "
                              "base; the header or the weight order does not match the file")
    return float(theta)


def read_llama2c(path: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(Hugging Face config.json dict, {HF tensor name: float32 array}) of a llama2.c checkpoint.

    Formats: v0 (legacy: 7 int32 header dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size (negative = untied classifier), seq_len; then token_embedding, rms_att, wq, wk,
    wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real, freq_cis_imag, [wcls]) and v1
    ("ak42" magic, version, the 7 ints, a shared-classifier byte, padded to 256 bytes; then
    norms, embedding, wq .. w3, [wcls]). Weights are PyTorch [out, in], all layers of one
    kind in a row; q and k rows are permuted to Hugging Face's rotary layout.
    """
    path = pathlib.Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 28:
        raise CheckpointError(f"{path}: {data.size} bytes is too short for a llama2.c header")
    version, offset = 0, 28
    if struct.unpack("<I", data[:4].tobytes())[0] == LLAMA2C_MAGIC:
        version = struct.unpack("<i", data[4:8].tobytes())[0]
        if version != 1:
            raise CheckpointError(f"{path}: llama2.c format version {version} is not supported "
                                  "(only the float32 formats v0 and v1; v2 is int8-quantized)")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[8:36].tobytes())
        shared = bool(data[36])
        offset = LLAMA2C_HEADER_BYTES
    else:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28].tobytes())
        shared, vocab = vocab > 0, abs(vocab)
    header = {"dim": dim, "hidden_dim": hidden, "n_layers": n_layers, "n_heads": n_heads,
              "n_kv_heads": n_kv, "vocab_size": vocab, "seq_len": seq_len}
    if min(header.values()) <= 0 or dim % n_heads or n_heads % n_kv or (dim // n_heads) % 2:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint (header {header})")
    head = dim // n_heads
    kv_dim = n_kv * head

    floats = np.frombuffer(data, dtype="<f4", offset=offset, count=(data.size - offset) // 4)
    position = 0

    def take(*shape: int) -> np.ndarray:
        nonlocal position
        count = int(np.prod(shape))
        if position + count > floats.size:
            raise CheckpointError(f"{path}: the file ends before its weights do (header {header}); "
                                  "it is truncated or not a llama2.c float32 checkpoint")
        array = floats[position:position + count].reshape(shape)
        position += count
        return array

    shapes = {"wq": (dim, dim), "wk": (kv_dim, dim), "wv": (kv_dim, dim), "wo": (dim, dim),
              "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}
    weights: dict[str, np.ndarray] = {}
    if version == 0:
        weights["embed"] = take(vocab, dim)
        weights["rms_att"] = take(n_layers, dim)
        for name in ("wq", "wk", "wv", "wo"):
            weights[name] = take(n_layers, *shapes[name])
        weights["rms_ffn"] = take(n_layers, dim)
        for name in ("w1", "w2", "w3"):
            weights[name] = take(n_layers, *shapes[name])
        weights["rms_final"] = take(dim)
        theta = _rope_theta(take(seq_len, head // 2), take(seq_len, head // 2), path)
    else:
        weights["rms_att"] = take(n_layers, dim)
        weights["rms_ffn"] = take(n_layers, dim)
        weights["rms_final"] = take(dim)
        weights["embed"] = take(vocab, dim)
        for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            weights[name] = take(n_layers, *shapes[name])
        theta = LLAMA2C_THETA
    if not shared:
        weights["wcls"] = take(vocab, dim)
    if position != floats.size:
        raise CheckpointError(f"{path}: {4 * (floats.size - position)} bytes left after the last "
                              f"weight (header {header}); the header does not match the file")

    tensors = {"model.embed_tokens.weight": weights["embed"], "model.norm.weight": weights["rms_final"]}
    hf_names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj",
                "w3": "mlp.up_proj"}
    for i in range(n_layers):
        layer = f"model.layers.{i}."
        tensors[layer + "input_layernorm.weight"] = weights["rms_att"][i]
        tensors[layer + "post_attention_layernorm.weight"] = weights["rms_ffn"][i]
        for name, hf_name in hf_names.items():
            w = weights[name][i]
            if name in ("wq", "wk"):
                w = rotary_to_hf(w, n_heads if name == "wq" else n_kv)
            tensors[f"{layer}{hf_name}.weight"] = w
    if not shared:
        tensors["lm_head.weight"] = weights["wcls"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": dim, "intermediate_size": hidden,
        "num_hidden_layers": n_layers, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
        "head_dim": head, "hidden_act": "silu", "max_position_embeddings": seq_len,
        "rms_norm_eps": LLAMA2C_EPS, "rope_theta": theta, "tie_word_embeddings": shared,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        # llama2.c models use the LLaMA SentencePiece conventions: <s>=1, </s>=2.
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    return config, tensors


def llama2c_to_hf(bin_path: str | pathlib.Path, out: str | pathlib.Path, *,
                  tokenizer_model: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes a llama2.c checkpoint as a Hugging Face LLaMA directory and returns its path.

    llama2.c keeps its tokenizer apart (`tokenizer.bin` is its own format): pass the
    SentencePiece `tokenizer.model` the model was trained with (Llama 2's for stories15M,
    42M and 110M; `tok512.model` for stories260K) to copy it into the directory.
    """
    config, tensors = read_llama2c(bin_path)
    if tokenizer_model is not None:
        import sentencepiece as spm

        pieces = spm.SentencePieceProcessor(model_file=str(tokenizer_model)).get_piece_size()
        if pieces != config["vocab_size"]:
            raise CheckpointError(f"{tokenizer_model}: the tokenizer has {pieces} pieces, the model "
                                  f"{bin_path} has a vocabulary of {config['vocab_size']}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / SAFETENSORS_FILE),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, out / TOKENIZER_FILE)
    log.info("wrote %s: %d layers, dim %d, vocab %d, rope theta %g", out, config["num_hidden_layers"],
             config["hidden_size"], config["vocab_size"], config["rope_theta"])
    return out
