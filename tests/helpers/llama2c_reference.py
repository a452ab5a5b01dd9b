"""A llama2.c reference for tests: a writer of llama2.c checkpoints (export.py's v0 and v1
formats, with its own inverse rotary permutation), a numpy forward with run.c's arithmetic,
and tiny random Hugging Face LLaMA directories to write from."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
from safetensors.numpy import load_file, save_file

TINY = {"dim": 16, "hidden": 40, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 48, "seq_len": 32}


# ----------------------------------------------------------------- a llama2.c writer (test-only)


def meta_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF q/k rows -> Meta's interleaved pairs, written out independently of lima_jax:
    HF row (head, j) for j < H/2 is the first of pair j, row (head, H/2 + j) its second."""
    h = w.shape[0] // n_heads
    out = np.empty_like(w)
    for head in range(n_heads):
        for j in range(h // 2):
            out[head * h + 2 * j] = w[head * h + j]
            out[head * h + 2 * j + 1] = w[head * h + h // 2 + j]
    return out


def _freq_tables(seq_len: int, head: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    freqs = 1.0 / theta ** (np.arange(0, head, 2)[: head // 2] / head)
    angles = np.outer(np.arange(seq_len), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def write_llama2c(hf_dir: pathlib.Path, path: pathlib.Path, *, version: int = 0,
                  theta: float = 10000.0) -> pathlib.Path:
    """Writes a Hugging Face LLaMA directory as llama2.c's export.py would (v0 or v1)."""
    config = json.loads((hf_dir / "config.json").read_text())
    t = load_file(hf_dir / "model.safetensors")
    dim, n_layers = config["hidden_size"], config["num_hidden_layers"]
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    vocab, seq_len = config["vocab_size"], config["max_position_embeddings"]
    hidden = config["intermediate_size"]
    shared = config["tie_word_embeddings"]

    def layers(name, kv=None):
        ws = [t[f"model.layers.{i}.{name}.weight"] for i in range(n_layers)]
        return [meta_rows(w, kv) for w in ws] if kv else ws

    q, k = layers("self_attn.q_proj", n_heads), layers("self_attn.k_proj", n_kv)
    v, o = layers("self_attn.v_proj"), layers("self_attn.o_proj")
    w1, w2, w3 = layers("mlp.gate_proj"), layers("mlp.down_proj"), layers("mlp.up_proj")
    att_norm, ffn_norm = layers("input_layernorm"), layers("post_attention_layernorm")
    embed, final = t["model.embed_tokens.weight"], t["model.norm.weight"]
    params = (dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len)
    if version == 0:
        header = struct.pack("<7i", *params[:5], vocab if shared else -vocab, seq_len)
        cos, sin = _freq_tables(seq_len, dim // n_heads, theta)
        tensors = [embed, *att_norm, *q, *k, *v, *o, *ffn_norm, *w1, *w2, *w3, final, cos, sin]
    else:
        header = struct.pack("<Ii7iB", 0x616B3432, version, *params, int(shared))
        header += b"\0" * (256 - len(header))
        tensors = [*att_norm, *ffn_norm, final, embed, *q, *k, *v, *o, *w1, *w2, *w3]
    if not shared:
        tensors.append(t["lm_head.weight"])
    path.write_bytes(header + b"".join(np.asarray(x, "<f4").tobytes() for x in tensors))
    return path


# ----------------------------------------------------------------- llama2.c's forward, in numpy


def llama2c_logits(path: pathlib.Path, tokens: list[int]) -> np.ndarray:
    """Logits [T, V] of a v0 llama2.c file, computed as run.c does (interleaved RoPE from the
    stored freq_cis tables, GQA by integer division of the head index)."""
    data = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared, vocab = vocab > 0, abs(vocab)
    head = dim // n_heads
    f = np.frombuffer(data, "<f4", offset=28).astype(np.float64)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        pos += n
        return f[pos - n:pos].reshape(shape)

    emb = take(vocab, dim)
    att_norm = take(n_layers, dim)
    wq, wk = take(n_layers, dim, dim), take(n_layers, n_kv * head, dim)
    wv, wo = take(n_layers, n_kv * head, dim), take(n_layers, dim, dim)
    ffn_norm = take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    final = take(dim)
    cos, sin = take(seq_len, head // 2), take(seq_len, head // 2)
    wcls = emb if shared else take(vocab, dim)

    def rmsnorm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w

    def rope(x):  # [T, heads, head]: rotate pairs (2i, 2i + 1)
        t = x.shape[0]
        even, odd = x[..., 0::2], x[..., 1::2]
        c, s = cos[:t, None, :], sin[:t, None, :]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = even * c - odd * s, even * s + odd * c
        return out

    t = len(tokens)
    x = emb[tokens]
    causal = np.tril(np.ones((t, t), bool))
    for layer in range(n_layers):
        xb = rmsnorm(x, att_norm[layer])
        q = rope((xb @ wq[layer].T).reshape(t, n_heads, head))
        k = rope((xb @ wk[layer].T).reshape(t, n_kv, head))
        v = (xb @ wv[layer].T).reshape(t, n_kv, head)
        out = np.empty((t, n_heads, head))
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            scores = np.where(causal, q[:, h] @ k[:, kv].T / np.sqrt(head), -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, h] = (weights / weights.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(t, dim) @ wo[layer].T
        xb = rmsnorm(x, ffn_norm[layer])
        gate = xb @ w1[layer].T
        x = x + ((gate / (1 + np.exp(-gate))) * (xb @ w3[layer].T)) @ w2[layer].T
    return rmsnorm(x, final) @ wcls.T


def tiny_hf(directory: pathlib.Path, *, tied: bool, seed: int = 0) -> pathlib.Path:
    c = TINY
    rng = np.random.default_rng(seed)
    head = c["dim"] // c["heads"]
    shapes = {"self_attn.q_proj": (c["dim"], c["dim"]), "self_attn.k_proj": (c["kv_heads"] * head, c["dim"]),
              "self_attn.v_proj": (c["kv_heads"] * head, c["dim"]), "self_attn.o_proj": (c["dim"], c["dim"]),
              "mlp.gate_proj": (c["hidden"], c["dim"]), "mlp.up_proj": (c["hidden"], c["dim"]),
              "mlp.down_proj": (c["dim"], c["hidden"])}
    tensors = {"model.embed_tokens.weight": rng.normal(0, 0.5, (c["vocab"], c["dim"])),
               "model.norm.weight": 1 + rng.normal(0, 0.1, c["dim"])}
    for i in range(c["layers"]):
        for name, shape in shapes.items():
            tensors[f"model.layers.{i}.{name}.weight"] = rng.normal(0, 0.3, shape)
        for name in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{name}.weight"] = 1 + rng.normal(0, 0.1, c["dim"])
    if not tied:
        tensors["lm_head.weight"] = rng.normal(0, 0.5, (c["vocab"], c["dim"]))
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(directory / "model.safetensors"))
    config = {"model_type": "llama", "vocab_size": c["vocab"], "hidden_size": c["dim"],
              "intermediate_size": c["hidden"], "num_hidden_layers": c["layers"],
              "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"],
              "max_position_embeddings": c["seq_len"], "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2}
    (directory / "config.json").write_text(json.dumps(config))
    return directory
