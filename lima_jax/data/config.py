"""The data section of a run config (``config.data``) and its validation.

Defaults are LIMA's (the paper, section 3): LIMA template, 2,048-token rows, 32 examples per
step, 15 epochs, loss on assistant tokens. Every error names the key (``config.data.<key>``).
"""

from __future__ import annotations

import ml_collections

from lima_jax.data.errors import DataError, check_on_error
from lima_jax.data.packing import ALGORITHMS
from lima_jax.data.readers import check_format
from lima_jax.data.templates import check_template


def get_default_data_config() -> ml_collections.ConfigDict:
    """Returns the data config with LIMA's defaults; override keys with ``--config.data.x=y``."""
    c = ml_collections.ConfigDict()
    # One file, several comma-separated files, or 'tfds:lima/train' (the TFDS builder `lima`).
    c.path = ""
    c.format = "auto"  # auto | lima | alpaca | fastchat | openai
    c.tfds_data_dir = ""  # where TFDS keeps prepared data ('' = TFDS's default, ~/tensorflow_datasets)
    c.tfds_manual_dir = ""  # where train.jsonl / test.jsonl were put by hand
    # lima | llama2 | plain | raw | chat (the tokenizer's own chat template, `lima_jax.data.chat_template`)
    c.template = "lima"
    # End of turn: auto | new | the text of a token in the vocabulary (<|eot_id|>, <|im_end|>, </s>).
    # auto = new (LIMA's appended EOT) for lima/plain, the chat template's own for chat (lima_jax.data.eot).
    c.eot = "auto"
    c.loss_on = "assistant"  # assistant | all
    c.max_len = 2048
    # LIMA's batch counts examples, one per row: packing (several per row) is opt-in.
    c.pack = False
    c.packing = "best_fit"  # best_fit | first_fit
    c.on_error = "raise"  # raise | skip
    c.seed = 0
    c.shuffle = True
    c.num_epochs = 15
    c.global_batch_size = 32
    # False: the last batch of each epoch is filled with empty rows (no example is lost);
    # True: that partial batch is left out.
    c.drop_remainder = False
    c.worker_count = 0  # grain worker processes (0: in the training process)
    c.worker_buffer_size = 2  # batches each worker prepares ahead
    # A tokenizer.json, tokenizer.model (SentencePiece or Llama 3's) or a checkpoint directory;
    # '' = model.init_from's own tokenizer (lima_jax.train), or one trained on the data (below).
    c.tokenizer = ""
    c.train_tokenizer = ml_collections.ConfigDict()
    c.train_tokenizer.vocab_size = 0  # > 0: train a tokenizer of this size on the data instead
    c.train_tokenizer.model_type = "bpe"
    c.train_tokenizer.cache_dir = ""  # '' = <workdir>/tokenizer
    # -1: jax.process_index() / jax.process_count(); set only to emulate hosts in tests.
    c.process_index = -1
    c.process_count = -1
    return c


def _positive(config: ml_collections.ConfigDict, key: str) -> None:
    value = config[key]
    if not isinstance(value, int) or value <= 0:
        raise DataError(f"config.data.{key}", f"must be a positive integer, got {value!r}", "", "config")


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """Raises DataError naming the key for any value that cannot work."""
    if not config.path:
        raise DataError("config.data.path", "no data given",
                        "set it to a .jsonl/.json file (comma-separated for several) or tfds:lima/train",
                        "config")
    check_format(config.format)
    check_template(config.template, config.loss_on)
    check_on_error(config.on_error)
    for key in ("max_len", "num_epochs", "global_batch_size"):
        _positive(config, key)
    if config.packing not in ALGORITHMS:
        raise DataError("config.data.packing", f"unknown algorithm {config.packing!r}",
                        f"choose one of {ALGORITHMS}", "config")
    if config.worker_count < 0:
        raise DataError("config.data.worker_count", "must be >= 0", "", "config")
    if config.seed < 0:
        raise DataError("config.data.seed", f"must be >= 0, got {config.seed}", "", "config")
    if config.process_count > 0 and not 0 <= config.process_index < config.process_count:
        raise DataError("config.data.process_index",
                        f"{config.process_index} is not a host of {config.process_count}",
                        "leave both at -1 to ask jax", "config")
    if not isinstance(config.eot, str) or not config.eot:
        raise DataError("config.data.eot", f"must be auto, new or a token's text, got {config.eot!r}", "", "config")
    if not config.tokenizer and config.train_tokenizer.vocab_size <= 0:
        raise DataError("config.data.tokenizer", "no tokenizer given",
                        "set it to a tokenizer.json, tokenizer.model or checkpoint directory, set "
                        "config.model.init_from (its tokenizer is used), or "
                        "config.data.train_tokenizer.vocab_size > 0", "config")
