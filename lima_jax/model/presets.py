"""Named model shapes: the published LLaMA 1, Llama 2, Llama 3 / 3.1 / 3.2 sizes
and tiny sizes for tests and the CPU demo.

Each preset records the parameter count its authors published, which
`tests/test_presets.py` checks against a count computed from shapes alone.
"""

from __future__ import annotations

import dataclasses

from lima_jax.model.config import LlamaConfig, RopeScaling

_LLAMA3_1_SCALING = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_LLAMA3_2_SCALING = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)


@dataclasses.dataclass(frozen=True)
class Preset:
    config: LlamaConfig
    published_params: float | None  # as published (e.g. 6.74e9); None for test sizes
    description: str


def _llama1(dim, layers, heads, mlp):
    return LlamaConfig(vocab_size=32000, dim=dim, n_layers=layers, n_heads=heads,
                       n_kv_heads=heads, mlp_dim=mlp, norm_eps=1e-6, max_seq_len=2048)


def _llama2(dim, layers, heads, kv_heads, mlp):
    return LlamaConfig(vocab_size=32000, dim=dim, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv_heads, mlp_dim=mlp, norm_eps=1e-5, max_seq_len=4096)


def _llama3(dim, layers, heads, mlp, *, tied=False, scaling=None, max_seq_len=8192):
    return LlamaConfig(vocab_size=128256, dim=dim, n_layers=layers, n_heads=heads,
                       n_kv_heads=8, mlp_dim=mlp, norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling=scaling, max_seq_len=max_seq_len, tie_embeddings=tied,
                       bos_token_id=128000, eos_token_id=128001)


PRESETS: dict[str, Preset] = {
    "llama1-7b": Preset(_llama1(4096, 32, 32, 11008), 6.74e9, "LLaMA 7B (LIMA's ablation model)"),
    "llama1-13b": Preset(_llama1(5120, 40, 40, 13824), 13.0e9, "LLaMA 13B"),
    "llama1-33b": Preset(_llama1(6656, 60, 52, 17920), 32.5e9, "LLaMA 33B"),
    "llama1-65b": Preset(_llama1(8192, 80, 64, 22016), 65.2e9, "LLaMA 65B (LIMA's model)"),
    "llama2-7b": Preset(_llama2(4096, 32, 32, 32, 11008), 6.74e9, "Llama 2 7B"),
    "llama2-13b": Preset(_llama2(5120, 40, 40, 40, 13824), 13.0e9, "Llama 2 13B"),
    "llama2-70b": Preset(_llama2(8192, 80, 64, 8, 28672), 69.0e9, "Llama 2 70B (GQA)"),
    "llama3-8b": Preset(_llama3(4096, 32, 32, 14336), 8.03e9, "Llama 3 8B"),
    "llama3-70b": Preset(_llama3(8192, 80, 64, 28672), 70.6e9, "Llama 3 70B"),
    "llama3.1-8b": Preset(_llama3(4096, 32, 32, 14336, scaling=_LLAMA3_1_SCALING,
                                  max_seq_len=131072), 8.03e9, "Llama 3.1 8B (llama3 RoPE scaling)"),
    "llama3.1-70b": Preset(_llama3(8192, 80, 64, 28672, scaling=_LLAMA3_1_SCALING,
                                   max_seq_len=131072), 70.6e9, "Llama 3.1 70B"),
    "llama3.2-1b": Preset(_llama3(2048, 16, 32, 8192, tied=True, scaling=_LLAMA3_2_SCALING,
                                  max_seq_len=131072), 1.24e9, "Llama 3.2 1B (tied embeddings)"),
    "llama3.2-3b": Preset(_llama3(3072, 28, 24, 8192, tied=True, scaling=_LLAMA3_2_SCALING,
                                  max_seq_len=131072), 3.21e9, "Llama 3.2 3B (tied embeddings)"),
    # Test and demo sizes.
    "tiny": Preset(LlamaConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                               mlp_dim=128, max_seq_len=256), None,
                   "tiny GQA model for tests"),
    "tiny-mha": Preset(LlamaConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4,
                                   mlp_dim=128, max_seq_len=256, tie_embeddings=True), None,
                       "tiny multi-head model with tied embeddings"),
    "small": Preset(LlamaConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=4,
                                mlp_dim=688, max_seq_len=1024), None,
                    "a few million parameters, for the CPU demo"),
    "100m": Preset(LlamaConfig(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=12,
                               mlp_dim=2048, max_seq_len=2048), None,
                   "~110M parameters, LLaMA vocabulary, for CPU benchmarks"),
}


def get_preset(name: str, **overrides) -> LlamaConfig:
    """The preset's config with `overrides` applied (e.g. dtype='bfloat16')."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].config.replace(**overrides)
