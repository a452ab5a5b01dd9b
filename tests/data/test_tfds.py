"""TFDS builder `lima`: array_record files from a manual directory, as a pipeline source."""

import collections

import numpy as np
import pytest

from lima_jax.data import BATCH_KEYS, build_pipeline, get_default_data_config
from lima_jax.data.errors import DataError
from lima_jax.data.readers import read_file
from tests.helpers.data_fixtures import tiny

tfds_lima = pytest.importorskip("lima_jax.data.tfds_lima")


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("manual")
    tiny.write_lima_like(d / "train.jsonl", n=23, seed=5)
    tiny.write_lima_like(d / "test.jsonl", n=4, seed=6, multi_turn_every=0)
    return d


def test_builder_keeps_every_record_in_file_order(manual_dir, tmp_path):
    builder = tfds_lima.lima_builder(str(tmp_path / "tfds"), str(manual_dir))
    files = sorted(p.name for p in (tmp_path / "tfds").rglob("*array_record*"))
    assert files and all("array_record" in f for f in files)
    source = builder.as_data_source("train")
    expected, _ = read_file(str(manual_dir / "train.jsonl"))
    got = [tfds_lima.record_to_conversation(source[i]) for i in range(len(source))]
    assert got == expected
    assert len(builder.as_data_source("test")) == 4


def test_tfds_source_gives_the_same_batches_as_the_file(manual_dir, tmp_path, tmp_path_factory):
    tok = tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")

    def config(path):
        c = get_default_data_config()
        c.path, c.tokenizer, c.max_len, c.global_batch_size = path, tok.path, 128, 4
        c.tfds_data_dir, c.tfds_manual_dir = str(tmp_path / "tfds"), str(manual_dir)
        c.num_epochs, c.pack, c.process_index, c.process_count = 2, True, 0, 1
        return c

    from_tfds = build_pipeline(config("tfds:lima/train"))
    from_file = build_pipeline(config(str(manual_dir / "train.jsonl")))
    assert from_tfds.num_steps == from_file.num_steps
    for a, b in zip(from_tfds.iterator(), from_file.iterator(), strict=True):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(a[k], b[k])


def test_missing_manual_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataError, match="missing train.jsonl, test.jsonl .*GAIR/lima"):
        tfds_lima.lima_builder(str(tmp_path / "tfds"), str(tmp_path / "empty"))
    with pytest.raises(DataError, match="unknown TFDS data set"):
        tfds_lima.parse_tfds_path("tfds:alpaca/train")


def test_real_lima(shared_data, tmp_path):
    builder = tfds_lima.lima_builder(str(tmp_path / "tfds"), str(shared_data / "lima"))
    train, test = builder.as_data_source("train"), builder.as_data_source("test")
    assert (len(train), len(test)) == (1030, 300)
    sources = collections.Counter(tfds_lima.record_to_conversation(train[i]).source for i in range(1030))
    assert sources == {"stackexchange": 400, "wikihow": 200, "writingprompts": 150, "nlp": 50,
                       "authors": 200, "multi_turn": 30}
    assert len(tfds_lima.record_to_conversation(train[1021]).turns) == 5  # line 1022
