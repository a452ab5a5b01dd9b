"""Data for LIMA fine-tuning: readers, tokenizer (+EOT), chat templates and loss masks,
the grain pipeline (padded or packed batches, one host's share), the TFDS builder `lima`,
and the data report (`python -m lima_jax.data report ...`)."""

from lima_jax.data.config import get_default_data_config, validate_data_config
from lima_jax.data.errors import DataError, SkipLog
from lima_jax.data.examples import EncodedExamples, encode_examples
from lima_jax.data.pipeline import (
    BATCH_KEYS,
    DataPipeline,
    Plan,
    build_pipeline,
    count_steps,
    make_plan,
    prepare_examples,
)
from lima_jax.data.readers import Conversation, Turn, read_conversations, read_file
from lima_jax.data.templates import TEMPLATES, encode_conversations, encode_prompt, end_of_turn_id
from lima_jax.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "BATCH_KEYS", "Conversation", "DataError", "DataPipeline", "EncodedExamples", "Plan",
    "SkipLog", "TEMPLATES", "Tokenizer", "Turn", "build_pipeline", "count_steps",
    "encode_conversations", "encode_examples", "encode_prompt", "end_of_turn_id",
    "get_default_data_config", "make_plan", "prepare_examples", "read_conversations",
    "read_file", "train_tokenizer", "validate_data_config",
]
