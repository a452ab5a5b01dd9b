"""The logic behind `notebooks/lima_quickstart.ipynb`: where it runs, which model it brings,
how LIMA's recipe is scaled to that runtime, the data subset, and answers before and after.

The notebook stays a sequence of calls; everything here is importable and tested.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import pathlib
import sys
import urllib.request
from collections.abc import Sequence

import jax

from lima_jax.data.readers import USER, read_conversations
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.decode import Answerer, SamplingConfig, encode_for_template
from lima_jax.jsonl import write_jsonl

# Models the notebook offers when none is named: karpathy's llama2.c TinyStories models
# (public, Llama-architecture, MIT) through `lima_jax.model.llama2c`; the Llama 2 tokenizer they
# were trained with is the one in the llama2.c repository.
TINYLLAMAS = "karpathy/tinyllamas"
LLAMA2C_TOKENIZER_URL = "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model"
DEFAULT_MODELS = {"cpu": "llama2c:stories15M.bin", "gpu": "llama2c:stories110M.bin",
                  "tpu": "llama2c:stories110M.bin"}
HF_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.model"]
# LIMA's batch (examples per step) for smaller models (the LIMA paper, section 2), and what a
# Colab CPU can take in minutes.
LIMA_BATCH = 64
CPU_BATCH = 8
CPU_MAX_LEN = 512
CPU_MAX_STEPS = 200  # about 10 minutes of a 15M-parameter model on a Colab CPU


def in_colab() -> bool:
    return "google.colab" in sys.modules


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where the notebook runs: platform (cpu | gpu | tpu), chip name, chips, bytes per chip."""

    platform: str
    device_kind: str
    devices: int
    memory_per_device: int

    def describe(self) -> str:
        return (f"{self.devices} x {self.device_kind} ({self.platform}), "
                f"{self.memory_per_device / 2**30:.1f} GiB each")


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 8 * 2**30


def detect_runtime() -> Runtime:
    """The accelerator JAX sees (Colab: CPU, a GPU, or a TPU's chips) and its memory."""
    devices = jax.devices()
    device = devices[0]
    platform = device.platform if device.platform in ("cpu", "gpu", "tpu") else "gpu"
    memory = 0
    try:
        memory = int((device.memory_stats() or {}).get("bytes_limit", 0))
    except Exception:  # noqa: BLE001 (memory_stats is unimplemented on some backends)
        memory = 0
    if platform == "cpu" or not memory:
        memory = _host_memory() // (len(devices) if platform == "cpu" else 1)
    return Runtime(platform, device.device_kind, len(devices), memory)


# --------------------------------------------------------------------------- the model


def _download(url: str, path: pathlib.Path) -> pathlib.Path:
    from tqdm.auto import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        with tqdm(total=total or None, unit="B", unit_scale=True, desc=path.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    return path


def fetch_model(source: str, workdir: str | os.PathLike, *, tokenizer: str = "") -> pathlib.Path:
    """A Hugging Face LLaMA directory for `source`, which is one of:

    - a local directory with config.json and safetensors (an uploaded model);
    - `llama2c:FILE.bin`: a llama2.c checkpoint, local or in the hub repo karpathy/tinyllamas,
      converted with `lima_jax.model.llama2c` (tokenizer: a local tokenizer.model or URL; default
      the Llama 2 tokenizer of the llama2.c repository, or tok512 for stories260K);
    - a hub repo id such as `meta-llama/Llama-2-7b-hf` (gated repos need `huggingface-cli
      login` first), of which only the config, safetensors and tokenizer are downloaded.
    """
    from lima_jax.model.llama2c import llama2c_to_hf

    workdir = pathlib.Path(workdir)
    local = pathlib.Path(source)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local}: no config.json; upload a Hugging Face LLaMA directory")
        return local
    if source.startswith("llama2c:"):
        name = source.removeprefix("llama2c:")
        binary = pathlib.Path(name)
        if not binary.is_file():
            from huggingface_hub import hf_hub_download

            binary = pathlib.Path(hf_hub_download(TINYLLAMAS, name))
        if not tokenizer:
            tokenizer = (str(binary.parent / "tok512.model") if "260K" in binary.name
                         else LLAMA2C_TOKENIZER_URL)
        if tokenizer.startswith("https://"):
            tokenizer = str(_download(tokenizer, workdir / "downloads" / pathlib.Path(tokenizer).name))
        elif not pathlib.Path(tokenizer).is_file() and "260K" in binary.name:
            from huggingface_hub import hf_hub_download

            tokenizer = hf_hub_download(TINYLLAMAS, "stories260K/tok512.model")
        return llama2c_to_hf(binary, workdir / "models" / binary.stem, tokenizer_model=tokenizer)
    from huggingface_hub import snapshot_download

    path = pathlib.Path(snapshot_download(source, allow_patterns=HF_FILES))
    if not (path / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{source}: the repo has no SentencePiece tokenizer.model; lima_jax "
                                "reads LLaMA 1/2 tokenizers (put one in the directory by hand)")
    return path


# --------------------------------------------------------------------------- the recipe


def _activation_bytes_per_row(model_config, max_len: int, compute_bytes: int) -> float:
    """A rough upper bound on what one training row keeps for the backward pass: per layer
    about 16 D + 3 F values per token, plus the f32 attention scores (XLA materialises them)."""
    c = model_config
    per_token = c.n_layers * (16 * c.dim + 3 * c.mlp_dim) * compute_bytes
    scores = c.n_layers * c.n_heads * max_len * max_len * 4 * 2
    logits = max_len * c.padded_vocab_size * 4 * 3
    return max_len * per_token + scores + logits


def scale_recipe(config, runtime: Runtime, model_config, n_params: int) -> list[str]:
    """Fits LIMA's recipe (`config`, a run config) to `runtime` and the model; returns what was
    changed, and why, one line each.

    Kept: template, EOT, loss mask, AdamW betas and weight decay, linear decay to a tenth,
    epochs, layer-scaled dropout. Scaled: compute dtype (bf16 on accelerators), sequence
    length (the model's context, 512 on CPU), examples per step (64, 8 on CPU), the
    micro-batch and gradient accumulation so one step fits in memory, the learning rate for
    models smaller than LIMA's 7B (1e-5 x sqrt(7B / params), at most 100 times), and on a CPU
    the number of steps (`train.max_steps`, unless a smaller one is set).
    """
    notes = []
    accelerator = runtime.platform != "cpu"
    config.model.dtype = "bfloat16" if accelerator else "float32"
    config.model.param_dtype = "float32"
    notes.append(f"compute in {config.model.dtype} ({'accelerator' if accelerator else 'CPU'}), "
                 "float32 master weights and optimizer state")
    max_len = min(2048, model_config.max_seq_len, CPU_MAX_LEN if not accelerator else 2048)
    config.data.max_len = max_len
    notes.append(f"max_len {max_len} (LIMA 2048; the model's context is {model_config.max_seq_len})")
    batch = LIMA_BATCH if accelerator else CPU_BATCH
    batch = max(batch // runtime.devices, 1) * runtime.devices  # rows split evenly over chips
    config.data.global_batch_size = batch

    state_bytes = 16 * n_params  # f32 params, gradients, two Adam moments
    budget = 0.8 * runtime.memory_per_device * (runtime.devices if accelerator else 1)
    if state_bytes > budget:
        raise MemoryError(
            f"a {n_params / 1e9:.2f}B-parameter model needs about {state_bytes / 2**30:.1f} GiB for "
            f"full fine-tuning (weights, gradients, AdamW), more than this runtime's "
            f"{budget / 2**30:.1f} GiB ({runtime.describe()}): choose a smaller MODEL or a larger "
            "runtime (a TPU v5e-8 or an A100 80GB for 7B)")
    compute_bytes = 2 if accelerator else 4
    per_row = _activation_bytes_per_row(model_config, max_len, compute_bytes)
    rows_fit = max(int((budget - state_bytes) / per_row), 1) * (runtime.devices if accelerator else 1)
    micro = batch
    while micro > runtime.devices and micro > rows_fit:
        micro //= 2
    config.train.grad_accum_steps = max(batch // micro, 1)
    notes.append(f"{batch} examples per step (LIMA {LIMA_BATCH} for smaller models)"
                 + (f", as {config.train.grad_accum_steps} micro-batches of {micro} to fit memory"
                    if config.train.grad_accum_steps > 1 else ""))
    scale = min(max(math.sqrt(7e9 / n_params), 1.0), 100.0)
    config.optimizer.learning_rate = 1e-5 * scale
    config.optimizer.end_learning_rate = 1e-6 * scale
    notes.append(f"learning rate {config.optimizer.learning_rate:.2g} -> "
                 f"{config.optimizer.end_learning_rate:.2g} (LIMA 1e-5 -> 1e-6 at 7B-65B; "
                 f"{n_params / 1e6:.1f}M parameters here)")
    config.model.residual_dropout = 0.3 if n_params >= 30e9 else 0.2
    notes.append(f"residual dropout up to {config.model.residual_dropout} at the top layer")
    if not accelerator and not 0 < config.train.max_steps <= CPU_MAX_STEPS:
        config.train.max_steps = CPU_MAX_STEPS
        notes.append(f"CPU: the run stops after {CPU_MAX_STEPS} steps (the schedule still spans "
                     "all epochs); a GPU or TPU runtime runs all of them")
    return notes


# --------------------------------------------------------------------------- data


def write_subset(path: str, out: str | os.PathLike, limit: int = 0, *, tfds_data_dir: str = "",
                 tfds_manual_dir: str = "") -> pathlib.Path:
    """Writes the first `limit` conversations (all when 0) of `path` (any reader format, or
    'tfds:lima/<split>') as LIMA JSON Lines, which the trainer and the data report read."""
    from lima_jax.data.tfds_lima import (
        lima_data_source,
        parse_tfds_path,
        record_to_conversation,
    )

    tfds = parse_tfds_path(path)
    if tfds is not None:
        source = lima_data_source(tfds[1], tfds_data_dir, tfds_manual_dir)
        count = len(source) if not limit else min(limit, len(source))
        conversations = [record_to_conversation(source[i]) for i in range(count)]
    else:
        conversations = read_conversations(path).conversations
        conversations = conversations[:limit] if limit else conversations
    for c in conversations:
        if c.turns and c.turns[0].role != USER:
            raise ValueError(f"{path}: conversation {c.id} does not start with a user turn; "
                             "LIMA's format alternates user and assistant from the user")
    return write_jsonl(out, ({"conversations": [t.text for t in c.turns], "source": c.source}
                             for c in conversations))


# --------------------------------------------------------------------------- answers


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer as the before/after table shows it."""

    text: str
    stop_reason: str  # eot | eos | stop_string | length | context
    tokens: int


def short_prompts(prompts: Sequence[str], tokenizer: Tokenizer, count: int, max_tokens: int,
                  template: str = "lima") -> list[str]:
    """The first `count` prompts whose templated ids fit in `max_tokens` (leaving the rest of a
    small model's context for the answer)."""
    fitting = [p for p in prompts if len(encode_for_template(p, tokenizer, template)) <= max_tokens]
    if len(fitting) < count:
        raise ValueError(f"only {len(fitting)} of {len(prompts)} prompts fit in {max_tokens} tokens; "
                         f"{count} were asked for (ask for fewer, or give shorter prompts)")
    return fitting[:count]


def answer(model, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128,
           sampling: SamplingConfig | None = None, template: str = "lima", seed: int = 0) -> list[Answer]:
    """Each prompt answered as a single user turn under `template` (LIMA's decoding by
    default), stopping at the template's end of turn or EOS (`lima_jax.decode.answer`)."""
    answerer = Answerer(model, tokenizer, template)
    ids = [answerer.encode(p) for p in prompts]
    room = answerer.room(ids)
    if room < 1:
        raise ValueError(f"the longest prompt has {answerer.max_seq_len - room} tokens: no room "
                         f"to answer within the model's context of {answerer.max_seq_len}")
    answers = answerer.answer(ids, sampling=sampling, max_new_tokens=min(max_new_tokens, room), seed=seed)
    return [Answer(a.text.strip(), a.stop_reason, len(a.tokens)) for a in answers]


def side_by_side_html(prompts: Sequence[str], before: Sequence[Answer], after: Sequence[Answer],
                      *, max_chars: int = 600) -> str:
    """An HTML table: prompt | base model | fine-tuned, with each answer's stop reason."""
    def cell(a: Answer) -> str:
        text = a.text if len(a.text) <= max_chars else a.text[:max_chars] + " ..."
        return (f"<td style='vertical-align:top;white-space:pre-wrap;text-align:left'>"
                f"{html.escape(text)}<br><i>[{a.tokens} tokens, stop: {a.stop_reason}]</i></td>")

    rows = "".join(
        f"<tr><td style='vertical-align:top;text-align:left'><b>{html.escape(p)}</b></td>"
        f"{cell(b)}{cell(a)}</tr>"
        for p, b, a in zip(prompts, before, after, strict=True))
    return ("<table><tr><th>prompt</th><th>base model</th><th>fine-tuned</th></tr>"
            f"{rows}</table>")
