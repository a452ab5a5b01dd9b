"""Flax NNX LLaMA (LLaMA 1, Llama 2, Llama 3.x) with presets and Hugging Face import/export
(`hf`); llama2.c checkpoints are read as Hugging Face weights by `lima_jax.model.llama2c`
(imported on its own, as only the converter and the notebooks need it)."""

from lima_jax.model.config import ConfigError, LlamaConfig, RopeScaling
from lima_jax.model.hf import from_hf, load_hf_config, to_hf
from lima_jax.model.llama import Llama, abstract_model, count_parameters
from lima_jax.model.presets import PRESETS, get_preset

__all__ = [
    "ConfigError",
    "Llama",
    "LlamaConfig",
    "PRESETS",
    "RopeScaling",
    "abstract_model",
    "count_parameters",
    "from_hf",
    "get_preset",
    "load_hf_config",
    "to_hf",
]
