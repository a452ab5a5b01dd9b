"""Pallas attention kernels for GPU (Triton) and TPU (Mosaic), with their jnp reference."""

from lima_jax.kernels.blocks import BlockSizes, default_block_sizes
from lima_jax.kernels.flash_attention import default_backend, flash_attention
from lima_jax.kernels.reference import attention_reference

__all__ = ["BlockSizes", "attention_reference", "default_backend", "default_block_sizes",
           "flash_attention"]
