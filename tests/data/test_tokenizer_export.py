"""The tokenizer in a Hugging Face export: `transformers.AutoTokenizer` reads what
`lima_jax.data.tokenizer_export` writes and encodes exactly as lima_jax's Tokenizer, for every kind
(SentencePiece, tokenizer.json, Meta's Llama 3 tiktoken file); a new EOT is the special token
``<EOT>`` at its id; the user's special tokens and chat template are kept."""

from __future__ import annotations

import json
import pathlib

import pytest

from lima_jax.data import tokenizer_export
from lima_jax.data.tokenizer import EOT_PIECE, Tokenizer
from lima_jax.data.tokenizer_export import export_tokenizer, hf_token_ids
from tests.helpers.tokenizer_fixtures import byte_bpe_dir, llama3_json_dir

transformers = pytest.importorskip("transformers")

# Text as LIMA's data holds it, and the spots where tokenizers tend to disagree.
EDGE_TEXTS = [
    "How do I sort a list in Python?", " leading space", "  two leading", "\n\nnewlines first", "a\tb",
    "x  y   z ", "Ünïcödé: café, 東京, Москва 🙂", " ", "123456 3.14 -42", "Done.\n", "```py\nprint(1)\n```",
]


def lima_texts(shared_data: pathlib.Path | None, n: int = 60) -> list[str]:
    """EDGE_TEXTS and, when the shared data is there, the turns of the first LIMA conversations."""
    texts = list(EDGE_TEXTS)
    if shared_data is not None:
        with open(shared_data / "lima" / "train.jsonl") as f:
            for line, _ in zip(f, range(n)):
                texts += json.loads(line)["conversations"]
    return texts


def load_export(tok: Tokenizer, out: pathlib.Path, *, with_eot: bool = True):
    """`tok` exported into `out` beside a llama config.json (as lima-to-hf writes it), read back by
    AutoTokenizer."""
    export_tokenizer(tok, out, with_eot=with_eot)
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": tok.vocab_size}))
    return transformers.AutoTokenizer.from_pretrained(out)


def assert_encodes_as(hf, tok: Tokenizer, texts: list[str]) -> None:
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), text


def assert_eot(hf, tok: Tokenizer) -> None:
    if tok.eot_is_new:
        assert hf.convert_tokens_to_ids(EOT_PIECE) == tok.eot_id == tok.base_vocab_size
        assert hf.encode(f"Hi{EOT_PIECE}", add_special_tokens=False)[-1] == tok.eot_id
        assert hf.decode([*tok.encode("Hi"), tok.eot_id], skip_special_tokens=True) == "Hi"
    else:
        assert hf.convert_tokens_to_ids(tok.id_to_piece(tok.eot_id)) == tok.eot_id
        assert hf.convert_tokens_to_ids(EOT_PIECE) in (None, hf.unk_token_id)
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> pathlib.Path:
    return byte_bpe_dir(tmp_path_factory.mktemp("chatml"), "chatml")


@pytest.mark.parametrize("eot", ["new", "<|im_end|>"])
def test_tokenizer_json_keeps_its_files_and_registers_a_new_eot(tmp_path, chatml, eot):
    tok = Tokenizer.load(chatml, eot=eot)
    hf = load_export(tok, tmp_path)
    assert_encodes_as(hf, tok, lima_texts(None))
    assert_eot(hf, tok)
    # The user's special tokens and chat template as they were; the class that reads tokenizer.json as is.
    source = json.loads((chatml / "tokenizer_config.json").read_text())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert config[key] == source[key]
    assert hf.eos_token == "<|im_end|>"
    assert (tmp_path / "chat_template.jinja").read_bytes() == (chatml / "chat_template.jinja").read_bytes()
    assert hf.chat_template == tok.chat_template
    added = {t["content"]: t for t in json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"]}
    if eot == "new":
        assert added[EOT_PIECE] == {"id": 400, "content": EOT_PIECE, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True}
        assert config["added_tokens_decoder"]["400"]["content"] == EOT_PIECE
        assert config["added_tokens_decoder"]["400"]["special"] is True
        assert hf_token_ids(tok) == {"bos_token_id": 1, "eos_token_id": [400, 2], "pad_token_id": 0,
                                     "unk_token_id": 0}
    else:  # a reused end of turn: tokenizer.json as it came
        assert (tmp_path / "tokenizer.json").read_bytes() == (chatml / "tokenizer.json").read_bytes()
        assert EOT_PIECE not in added and "added_tokens_decoder" not in config
        assert hf_token_ids(tok)["eos_token_id"] == 2  # the end of turn is the EOS itself


def test_a_model_without_eot_exports_the_files_unchanged(tmp_path, chatml):
    tok = Tokenizer.load(chatml)
    hf = load_export(tok, tmp_path, with_eot=False)
    assert (tmp_path / "tokenizer.json").read_bytes() == (chatml / "tokenizer.json").read_bytes()
    assert len(hf) == tok.base_vocab_size
    assert hf_token_ids(tok, with_eot=False)["eos_token_id"] == tok.eos_id


def test_llama2_template_byte_bpe_with_a_new_eot(tmp_path):
    tok = Tokenizer.load(byte_bpe_dir(tmp_path / "src", "llama2"))
    hf = load_export(tok, tmp_path / "out")
    assert_encodes_as(hf, tok, lima_texts(None))
    assert_eot(hf, tok)
    assert hf.pad_token is None  # none named: none invented for a tokenizer.json
    assert hf_token_ids(tok)["pad_token_id"] == tok.pad_id == 0  # <unk>, the id lima_jax pads with


@pytest.mark.parametrize("source", ["checkpoints/stories260K-hf", "tokenizer/llama"])
def test_sentencepiece_model_with_a_tokenizer_config(tmp_path, shared_data, source):
    tok = Tokenizer.load(shared_data / source)
    hf = load_export(tok, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "tokenizer.model", "tokenizer_config.json"]
    assert_encodes_as(hf, tok, lima_texts(shared_data))
    assert_eot(hf, tok)
    assert hf.encode("Hello") == [tok.bos_id, *tok.encode("Hello")]  # BOS added, as Llama's tokenizer does
    assert (hf.unk_token_id, hf.pad_token_id) == (0, 0)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["tokenizer_class"], config["legacy"]) == ("PreTrainedTokenizerFast", True)
    assert hf_token_ids(tok) == {"bos_token_id": 1, "eos_token_id": [tok.eot_id, 2], "pad_token_id": 0,
                                 "unk_token_id": 0}


@pytest.fixture(scope="module")
def llama3(shared_data) -> Tokenizer:
    return Tokenizer.load(shared_data / "tokenizer" / "llama3")


def test_llama3_tiktoken_becomes_tokenizer_json(tmp_path, shared_data, llama3):
    hf = load_export(llama3, tmp_path)
    assert (tmp_path / "original" / "tokenizer.model").read_bytes() == llama3.files["tokenizer.model"]
    assert not (tmp_path / "tokenizer.model").exists()
    assert_encodes_as(hf, llama3, lima_texts(shared_data))
    assert_eot(hf, llama3)
    assert hf.encode("Hello") == [128000, *llama3.encode("Hello")]  # BOS, as Meta's exports add it
    assert hf.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert hf.chat_template == llama3.chat_template
    assert hf_token_ids(llama3) == {"bos_token_id": 128000, "eos_token_id": [128256, 128001],
                                    "pad_token_id": 128004}
    # Read back by lima_jax, the export is the same tokenizer, its EOT already a token.
    again = Tokenizer.load(tmp_path, eot=EOT_PIECE)
    assert (again.kind, again.eot_id, again.vocab_size) == ("tokenizers", 128256, 128257)
    assert all(again.encode(t) == llama3.encode(t) for t in EDGE_TEXTS)


def test_llama3_tiktoken_without_transformers_is_the_file_and_a_config(tmp_path, monkeypatch, shared_data, llama3):
    monkeypatch.setattr(tokenizer_export, "_tiktoken_converter", lambda: None)
    tok = llama3.with_eot("<|eot_id|>")
    hf = load_export(tok, tmp_path)  # transformers 5 converts it at load time (with tiktoken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat_template.jinja", "config.json", "tokenizer.model", "tokenizer_config.json"]
    assert_encodes_as(hf, tok, EDGE_TEXTS)
    assert_eot(hf, tok)
    assert hf_token_ids(tok)["eos_token_id"] == [128009, 128001]


def test_llama3_tokenizer_json_with_a_new_eot(tmp_path, shared_data, llama3):
    tok = Tokenizer.load(llama3_json_dir(shared_data, tmp_path / "src"))
    hf = load_export(tok, tmp_path / "out")
    assert_encodes_as(hf, tok, EDGE_TEXTS)
    assert all(hf.encode(t, add_special_tokens=False) == llama3.encode(t) for t in EDGE_TEXTS)
    assert_eot(hf, tok)


def test_a_vocabulary_that_holds_eot_already_reuses_it(tmp_path):
    """A lima_jax export read back: its <EOT> is the end of turn the model learned, so 'new' reuses
    it instead of appending a second, untrained one."""
    src = byte_bpe_dir(tmp_path / "src", "chatml")
    raw = json.loads((src / "tokenizer.json").read_text())
    raw["added_tokens"].append({"id": 400, "content": EOT_PIECE, "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (src / "tokenizer.json").write_text(json.dumps(raw))
    tok = Tokenizer.load(src)
    assert (tok.eot, tok.eot_id, tok.vocab_size) == (EOT_PIECE, 400, tok.base_vocab_size)
    export_tokenizer(tok, tmp_path / "out")
    assert Tokenizer.load(tmp_path / "out").eot_id == 400


def test_an_earlier_exports_tokenizer_files_are_replaced(tmp_path, chatml, shared_data):
    out = tmp_path / "out"
    export_tokenizer(Tokenizer.load(chatml), out)
    (out / "special_tokens_map.json").write_text("{}")
    written = export_tokenizer(Tokenizer.load(shared_data / "checkpoints" / "stories260K-hf"), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written) == [
        "tokenizer.model", "tokenizer_config.json"]
