"""lima_jax: the LIMA recipe (supervised fine-tuning of LLaMA models on ~1,000
curated examples) in JAX, from a laptop CPU to a multi-host TPU pod."""

__version__ = "0.1.0"
