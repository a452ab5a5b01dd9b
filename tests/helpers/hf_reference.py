"""Helpers that build reference `transformers` LLaMA models for parity tests."""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM


def make_hf_llama(out_dir: pathlib.Path, seed: int = 0, **config) -> LlamaForCausalLM:
    """A random-weight transformers LLaMA saved to `out_dir` as safetensors.

    Weights are drawn wider than transformers' default init (std 0.02) so the
    logits are O(1) and a 1e-4 tolerance is a real check, not a trivial one.
    """
    defaults = dict(
        vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    defaults.update(config)
    hf_config = HFLlamaConfig(**defaults)
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / np.sqrt(param.shape[-1]))
    model.save_pretrained(out_dir)
    return model


def hf_logits(model: LlamaForCausalLM, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def hf_greedy(model: LlamaForCausalLM, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generation; returns the new token ids."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1)
    return out[0, len(prompt):].tolist()
