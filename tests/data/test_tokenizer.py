"""Tokenizer: LLaMA's model + EOT and padded vocab; small models trained on data and cached."""

import pickle

import pytest

from lima_jax.data.tokenizer import EOT_PIECE, Tokenizer, train_tokenizer
from tests.helpers.data_fixtures import tiny


@pytest.fixture(scope="session")
def llama(shared_data):
    return Tokenizer.load(shared_data / "tokenizer" / "llama" / "tokenizer.model")


def test_llama_ids_follow_the_contract(llama):
    assert (llama.base_vocab_size, llama.eot_id, llama.vocab_size, llama.padded_vocab_size) == (
        32000, 32000, 32001, 32128)
    assert (llama.bos_id, llama.eos_id, llama.pad_id) == (1, 2, 0)
    assert llama.id_to_piece(llama.eot_id) == EOT_PIECE


def test_llama_round_trip_and_eot_is_never_produced_by_text(llama):
    text = "Hello world! How are <EOT> you?\n  Fine </s>."
    ids = llama.encode(text)
    assert llama.decode(ids) == text
    assert llama.eot_id not in ids and llama.eos_id not in ids  # no control token from text
    assert llama.decode(ids + [llama.eot_id, 32100]) == text  # EOT and padded ids left out
    assert pickle.loads(pickle.dumps(llama)).encode(text) == ids


def test_trained_tokenizer_is_llama_like_and_cached(tmp_path):
    texts = tiny.corpus(300, seed=1)
    path = train_tokenizer(texts, tmp_path, vocab_size=320)
    mtime = path.stat().st_mtime_ns
    tok = Tokenizer.load(path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.eot_id == tok.base_vocab_size and tok.padded_vocab_size % 128 == 0
    assert tok.padded_vocab_size >= tok.vocab_size
    assert tok.decode(tok.encode(texts[0])) == texts[0]
    assert tok.decode(tok.encode("unseen: ÿ€ 🙂")) == "unseen: ÿ€ 🙂"  # byte fallback
    assert train_tokenizer(texts, tmp_path, vocab_size=320) == path  # reused, not retrained
    assert path.stat().st_mtime_ns == mtime
    assert train_tokenizer(texts[:200], tmp_path, vocab_size=320) != path  # other data: other file


def test_unreadable_model_is_a_data_error(tmp_path):
    from lima_jax.data.errors import DataError

    with pytest.raises(DataError, match="cannot read the tokenizer"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
