"""Decoding: KV-cache generation with LIMA's sampling and EOT stop, batched and sharded
(`generate`), the sampling rules (`sampling`), prompt files and the URIAL in-context baseline
(`prompts`), prompt -> answer and prompt file -> answers file, the one path every caller takes
(`answer`), checkpoint loading (`load`) and the command ``python -m lima_jax.decode`` (`cli`)."""

from lima_jax.decode.answer import (
    Answer,
    Answerer,
    AnswerFileResult,
    answer_file,
    missing_answers,
    stop_names,
)
from lima_jax.decode.generate import Generation, Generator, prompt_bucket
from lima_jax.decode.prompts import (
    DECODE_TEMPLATES,
    encode_for_template,
    read_prompts,
    urial_text,
)
from lima_jax.decode.sampling import SamplingConfig, row_keys

__all__ = [
    "DECODE_TEMPLATES", "Answer", "AnswerFileResult", "Answerer", "Generation", "Generator",
    "SamplingConfig", "answer_file", "encode_for_template", "missing_answers", "prompt_bucket",
    "read_prompts", "row_keys", "stop_names", "urial_text",
]
