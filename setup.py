"""Installs lima_jax: the LIMA fine-tuning recipe for LLaMA models in JAX.

Version ranges, not pins, so the same package runs on this project's CPU
machines and on a GPU image that brings its own jax (0.10 / 0.11) and flax.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.10",
    "sentencepiece>=0.2",
    "tokenizers>=0.19",  # tokenizer.json (Llama 3.x exports, SmolLM, ...), as transformers reads it
    "tiktoken>=0.7",  # Meta's own Llama 3 tokenizer.model
    "jinja2>=3.1",  # chat templates, rendered as transformers renders them
    "tensorflow-datasets>=4.9.8",
    "importlib_resources>=6",  # tensorflow-datasets needs it without TensorFlow
    "ml_collections>=1.0",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "datasketch>=1.6",  # MinHash + LSH for near-duplicate removal (lima_jax.curate)
    "qwix>=0.1.8",  # the quantized frozen base of QLoRA (int8, int4, nf4)
]

EXTRAS_REQUIRE = {
    # torch is pinned to the CPU build these machines carry; an unpinned torch
    # pulls the newest build with several GB of CUDA packages.
    # selenium drives Debian's chromium for the annotation-page test (.ci/run installs it).
    # nbclient + ipykernel execute the notebooks in tests/notebooks/test_notebooks.py.
    # ruff is the lint CI runs (settings in pyproject.toml).
    # peft: the LoRA reference (parity test, lima-to-peft export, the LoRA benchmark row).
    "test": ["pytest>=8", "torch==2.13.0", "transformers>=4.45", "peft>=0.15", "selenium>=4.20",
             "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "ruff>=0.6"],
    # libtpu: runs on TPU VMs, and lets a CPU machine compile ahead of time for a TPU slice.
    "tpu": ["jax[tpu]>=0.6"],
    "gpu": ["jax[cuda13]>=0.7"],  # CUDA 13 wheels, as on the H200 image (jax[cuda12] for older drivers)
}

setup(
    name="lima_jax",
    version="0.1.0",
    description="LIMA (Less Is More for Alignment) supervised fine-tuning of LLaMA models in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lima_jax", "lima_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
