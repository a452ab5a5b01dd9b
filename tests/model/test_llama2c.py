"""Reading llama2.c checkpoints (`stories*.bin`): the rotary permutation, both float32 formats,
tied and untied classifiers, the RoPE base, bad files, and the real stories260K.

The .bin files are written from Hugging Face checkpoints by an independent writer (its
own inverse permutation, llama2.c's tensor order: tests/helpers/llama2c_reference.py); a numpy
forward with llama2.c's interleaved RoPE over the written file gives the Hugging Face
model's logits, so the file is a true llama2.c checkpoint; reading it back must then give
identical logits.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from lima_jax import convert
from lima_jax.model import from_hf
from lima_jax.model.hf import CheckpointError
from lima_jax.model.llama2c import llama2c_to_hf, read_llama2c, rotary_from_hf, rotary_to_hf
from tests.helpers.llama2c_reference import TINY, llama2c_logits, meta_rows, tiny_hf, write_llama2c
from tests.helpers.model_helpers import forward

# ----------------------------------------------------------------- tests


def test_rotary_permutation_pairs_rows_as_transformers_does():
    # One head of H = 4, D = 1: Meta's rows are the pairs (0, 1), (2, 3), i.e. [a0, b0, a1, b1];
    # Hugging Face's rotate_half wants [a0, a1, b0, b1].
    meta = np.array([[10.0], [11.0], [20.0], [21.0]])
    np.testing.assert_array_equal(rotary_to_hf(meta, 1)[:, 0], [10, 20, 11, 21])
    w = np.random.default_rng(0).normal(size=(2 * 8, 5))
    np.testing.assert_array_equal(rotary_from_hf(rotary_to_hf(w, 2), 2), w)
    np.testing.assert_array_equal(rotary_from_hf(w, 2), meta_rows(w, 2))
    assert not np.array_equal(rotary_to_hf(w, 2), w)


@pytest.mark.parametrize("version,tied", [(0, True), (0, False), (1, True), (1, False)])
def test_llama2c_file_reads_back_to_the_same_tensors(tmp_path, version, tied):
    hf = tiny_hf(tmp_path / "hf", tied=tied)
    binary = write_llama2c(hf, tmp_path / "model.bin", version=version)
    config, tensors = read_llama2c(binary)
    original = load_file(hf / "model.safetensors")
    assert sorted(tensors) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    assert config["tie_word_embeddings"] is tied
    assert (config["num_key_value_heads"], config["rope_theta"]) == (TINY["kv_heads"], 10000.0)


def test_written_file_is_llama2c_and_converts_to_identical_logits(tmp_path):
    hf = tiny_hf(tmp_path / "hf", tied=False, seed=3)
    binary = write_llama2c(hf, tmp_path / "model.bin")
    tokens = [1, 5, 9, 17, 33, 2, 40, 7, 7, 12]
    reference = forward(from_hf(hf), np.asarray([tokens]))[0, :, :TINY["vocab"]]
    # The written file is a real llama2.c checkpoint: run.c's arithmetic gives the HF model's logits.
    np.testing.assert_allclose(llama2c_logits(binary, tokens), reference, atol=1e-4)
    assert convert.main(["llama2c-to-hf", "--bin", str(binary), "--out", str(tmp_path / "back")]) == 0
    np.testing.assert_array_equal(
        forward(from_hf(tmp_path / "back"), np.asarray([tokens]))[0, :, :TINY["vocab"]], reference)


def test_rope_base_is_read_from_the_freq_tables(tmp_path):
    hf = tiny_hf(tmp_path / "hf", tied=True)
    config, _ = read_llama2c(write_llama2c(hf, tmp_path / "m.bin", theta=500000.0))
    assert config["rope_theta"] == 500000.0


def test_bad_files_raise_naming_the_file(tmp_path):
    hf = tiny_hf(tmp_path / "hf", tied=True)
    good = write_llama2c(hf, tmp_path / "good.bin").read_bytes()
    cases = {
        "truncated.bin": (good[:-40], "ends before its weights"),
        "extra.bin": (good + b"\0" * 64, "bytes left after the last weight"),
        "v2.bin": (struct.pack("<Ii", 0x616B3432, 2) + good[28:], "version 2"),
        "header.bin": (struct.pack("<7i", 16, 40, 2, 3, 2, 48, 32) + good[28:], "not a llama2.c"),
        "short.bin": (b"\1\2\3", "too short"),
    }
    # A file whose freq tables are not RoPE: the header or the weight order is off.
    cos_at = len(good) - 2 * 4 * TINY["seq_len"] * (TINY["dim"] // TINY["heads"] // 2)
    cases["freqs.bin"] = (good[:cos_at] + b"\0" * (len(good) - cos_at), "freq_cis")
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as error:
            read_llama2c(tmp_path / name)
        assert name in str(error.value)


def test_cli_reports_a_tokenizer_that_does_not_match(tmp_path, capsys, stories):
    binary = write_llama2c(tiny_hf(tmp_path / "hf", tied=True), tmp_path / "m.bin")
    code = convert.main(["llama2c-to-hf", "--bin", str(binary), "--tokenizer",
                         str(stories / "tokenizer.model"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "512 pieces" in capsys.readouterr().err


def test_stories260k_through_llama2c_gives_identical_logits(tmp_path, stories):
    binary = write_llama2c(stories, tmp_path / "stories260K.bin")
    assert binary.stat().st_size == 28 + 4 * (260_032 + 2 * 512 * 4)  # header + weights + freq_cis
    tokens = [1, 403, 407, 261, 378, 275, 411, 261, 349, 304, 422, 261, 430, 408, 261, 298]
    original = from_hf(stories)
    reference = forward(original, np.asarray([tokens]))[0, :, :512]
    np.testing.assert_allclose(llama2c_logits(binary, tokens), reference, atol=1e-4)
    out = llama2c_to_hf(binary, tmp_path / "hf", tokenizer_model=stories / "tokenizer.model")
    assert (out / "tokenizer.model").read_bytes() == (stories / "tokenizer.model").read_bytes()
    converted = from_hf(out, add_eot=True)
    assert converted.config.eot_token_id == 512 and converted.config.max_seq_len == 512
    np.testing.assert_array_equal(forward(converted, np.asarray([tokens]))[0, :, :512], reference)
