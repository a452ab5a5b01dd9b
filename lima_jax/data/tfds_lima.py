"""TFDS builder ``lima``: the LIMA train and test sets as array_record files (no TensorFlow needed).

The GAIR/lima data set on the Hugging Face hub is gated, so the builder does not download: put
``train.jsonl`` and ``test.jsonl`` in the manual directory (MANUAL_DOWNLOAD_INSTRUCTIONS).
Prepared data serves the pipeline as a random-access grain source through
``builder.as_data_source(split)``; select it with ``config.data.path = 'tfds:lima/train'``.
Records keep the file order (shuffling is the pipeline's job), so record i is line i + 1.
"""

from __future__ import annotations

import pathlib
from typing import Any

import tensorflow_datasets as tfds

from lima_jax.data.errors import DataError
from lima_jax.data.readers import ASSISTANT, USER, Conversation, Turn, read_file

SPLITS = ("train", "test")


class Lima(tfds.core.GeneratorBasedBuilder):
    """LIMA: 1,030 curated training conversations and 300 test prompts (Zhou et al., 2023)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train (1,000 single-turn + 30 multi-turn) and test (300 prompts)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The LIMA data set (https://huggingface.co/datasets/GAIR/lima) is gated: accept its terms on the
hub, download `train.jsonl` and `test.jsonl`, and put both in one directory, e.g.
  huggingface-cli download GAIR/lima train.jsonl test.jsonl --repo-type dataset --local-dir DIR
Then pass DIR as the manual directory: config.data.tfds_manual_dir=DIR (or
tfds.download.DownloadConfig(manual_dir=DIR)).
"""

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly (not dataset_info_from_configs), which would look for metadata
        # files beside this module.
        return tfds.core.DatasetInfo(
            builder=self,
            description="LIMA: Less Is More for Alignment. Conversations alternate user/assistant.",
            features=tfds.features.FeaturesDict({
                "conversations": tfds.features.Sequence(tfds.features.Text()),
                "source": tfds.features.Text(),
                "id": tfds.features.Text(),
            }),
            homepage="https://huggingface.co/datasets/GAIR/lima",
            citation="Zhou et al., LIMA: Less Is More for Alignment, NeurIPS 2023.",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        manual = pathlib.Path(dl_manager.manual_dir)
        return {split: self._generate_examples(manual / f"{split}.jsonl") for split in SPLITS}

    def _generate_examples(self, path: pathlib.Path):
        # The same reader as the JSONL path: a bad line stops the build with file:line.
        conversations, _ = read_file(str(path), "lima", on_error="raise")
        for index, c in enumerate(conversations):
            yield index, {"conversations": [t.text for t in c.turns], "source": c.source, "id": c.id}


def _check_manual_dir(manual_dir: str) -> None:
    missing = [s for s in SPLITS if not (pathlib.Path(manual_dir) / f"{s}.jsonl").is_file()]
    if missing:
        raise DataError(
            manual_dir or "config.data.tfds_manual_dir",
            f"missing {', '.join(s + '.jsonl' for s in missing)} for the TFDS builder lima",
            Lima.MANUAL_DOWNLOAD_INSTRUCTIONS.strip().replace("\n", " "), "missing_file",
        )


def lima_builder(data_dir: str = "", manual_dir: str = "") -> Lima:
    """Returns the prepared builder, preparing array_record files from ``manual_dir`` if needed."""
    builder = Lima(data_dir=data_dir or None, file_format="array_record")
    if not builder.is_prepared():
        _check_manual_dir(manual_dir)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
    return builder


def lima_data_source(split: str = "train", data_dir: str = "", manual_dir: str = "") -> Any:
    """A random-access source (len, __getitem__) of decoded LIMA records of ``split``."""
    if split not in SPLITS:
        raise DataError("config.data.path", f"unknown LIMA split {split!r}", f"use one of {SPLITS}", "config")
    return lima_builder(data_dir, manual_dir).as_data_source(split)


def record_to_conversation(record: dict) -> Conversation:
    """A decoded ``lima`` record (bytes fields) as a Conversation (roles alternate, user first)."""
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in record["conversations"]]
    decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
    roles = (USER, ASSISTANT)
    return Conversation(
        tuple(Turn(roles[i % 2], t) for i, t in enumerate(texts)),
        decode(record["source"]), decode(record["id"]),
    )


def parse_tfds_path(path: str) -> tuple[str, str] | None:
    """'tfds:lima/train' -> ('lima', 'train'); None for a plain file path."""
    if not path.startswith("tfds:"):
        return None
    name, _, split = path[len("tfds:"):].partition("/")
    if name != "lima":
        raise DataError("config.data.path", f"unknown TFDS data set {name!r}",
                        "only tfds:lima/<split> is built in", "config")
    return name, split or "train"
