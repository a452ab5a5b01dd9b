"""The three tokenizer backends against their references, on every utterance of the LIMA train set.

- ``tokenizers`` (tokenizer.json) == ``transformers.AutoTokenizer`` (``add_special_tokens=False``,
  ``split_special_tokens=True``: lima_jax's `encode` encodes special-token text as text), for Meta's
  Llama 3 file converted to tokenizer.json and for a byte-level BPE trained on LIMA with added
  special tokens;
- ``tiktoken`` (Meta's Llama 3 tokenizer.model) == Meta's reference ``llama/tokenizer.py``, built
  here from the pattern and special tokens written out below (checked against the data README);
- ``sentencepiece`` (LLaMA's tokenizer.model) == the ``sentencepiece`` library itself;
- decode(encode(text)) == text for every utterance and every backend.

Counts compared (LIMA train, 1,030 conversations; `pytest -s` prints them): 2,169 utterances per
backend; tokens 636,077 (Llama 3, both the tokenizer.json and the tiktoken backend, which also agree
with each other id for id), 732,001 (LLaMA SentencePiece), about 830,000 (the 4,000-piece BPE
trained in the test). LIMA holds no special-token text, so the tokenizer.json comparison is also run
on 200 utterances with special-token text put in, where ``split_special_tokens`` matters.

Also: special-token text is text for `encode` and a special id for `encode_special`; the order
`Tokenizer.load` reads a directory in; pickling; BOS/EOS/pad ids; one-line DataErrors naming the file.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil

import pytest

from lima_jax.data import tokenizer_backends
from lima_jax.data.errors import DataError
from lima_jax.data.readers import read_file
from lima_jax.data.tokenizer import Tokenizer

# Meta's llama/tokenizer.py (Llama 3), written out here so the reference owes nothing to lima_jax.
META_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
META_NUM_RESERVED_SPECIAL_TOKENS = 256
_META_NAMED = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
META_SPECIAL_TOKENS = _META_NAMED + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(META_NUM_RESERVED_SPECIAL_TOKENS - len(_META_NAMED))
]
META_MAX_ENCODE_CHARS, META_MAX_NO_WHITESPACES_CHARS = 400_000, 25_000

SPECIAL_TEXTS = ("<|eot_id|>", "<|begin_of_text|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>", "<s>")


class MetaLlama3Reference:
    """Meta's reference Llama 3 tokenizer (llama/tokenizer.py): ``Tokenizer.encode`` with no BOS/EOS,
    ``allowed_special=set()``, ``disallowed_special=()``."""

    def __init__(self, model_path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        mergeable_ranks = load_tiktoken_bpe(str(model_path))
        num_base_tokens = len(mergeable_ranks)
        self.special_tokens = {token: num_base_tokens + i for i, token in enumerate(META_SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=model_path.name, pat_str=META_PAT_STR,
                                       mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens)

    def encode(self, s: str) -> list[int]:
        substrs = (
            substr
            for i in range(0, len(s), META_MAX_ENCODE_CHARS)
            for substr in self._split_whitespaces_or_nonwhitespaces(
                s[i: i + META_MAX_ENCODE_CHARS], META_MAX_NO_WHITESPACES_CHARS)
        )
        t: list[int] = []
        for substr in substrs:
            t.extend(self.model.encode(substr, allowed_special=set(), disallowed_special=()))
        return t

    @staticmethod
    def _split_whitespaces_or_nonwhitespaces(s: str, max_consecutive_slice_len: int):
        current_slice_len = 0
        current_slice_is_space = s[0].isspace() if len(s) > 0 else False
        slice_start = 0
        for i in range(len(s)):
            is_now_space = s[i].isspace()
            if current_slice_is_space ^ is_now_space:
                current_slice_len = 1
                current_slice_is_space = is_now_space
            else:
                current_slice_len += 1
                if current_slice_len > max_consecutive_slice_len:
                    yield s[slice_start:i]
                    slice_start = i
                    current_slice_len = 1
        yield s[slice_start:]


# -- fixtures


@pytest.fixture(scope="module")
def utterances(shared_data) -> list[str]:
    """The text of every turn of the LIMA train set, read by lima_jax's own reader."""
    conversations, fmt = read_file(str(shared_data / "lima" / "train.jsonl"))
    assert fmt == "lima" and len(conversations) == 1030
    texts = [turn.text for conversation in conversations for turn in conversation.turns]
    assert len(texts) == 2169
    return texts


@pytest.fixture(scope="module")
def sp_path(shared_data):
    return shared_data / "tokenizer" / "llama" / "tokenizer.model"


@pytest.fixture(scope="module")
def tiktoken_path(shared_data):
    pytest.importorskip("tiktoken")
    return shared_data / "tokenizer" / "llama3" / "tokenizer.model"


@pytest.fixture(scope="module")
def llama3_json(shared_data, tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.helpers.tokenizer_fixtures import llama3_json_dir

    return llama3_json_dir(shared_data, tmp_path_factory.mktemp("llama3_json"))


@pytest.fixture(scope="module")
def bpe_dir(utterances, tmp_path_factory):
    """A 4,000-piece byte-level BPE trained on LIMA (under a second) with chatml special tokens."""
    pytest.importorskip("transformers")
    from tests.helpers.tokenizer_fixtures import byte_bpe_dir

    return byte_bpe_dir(tmp_path_factory.mktemp("bpe"), template="chatml", texts=utterances, vocab_size=4000)


@pytest.fixture(scope="module")
def tokenizers_by_name(sp_path, tiktoken_path, llama3_json, bpe_dir):
    return {"sentencepiece": Tokenizer.load(sp_path), "tiktoken": Tokenizer.load(tiktoken_path),
            "llama3_json": Tokenizer.load(llama3_json), "bpe": Tokenizer.load(bpe_dir)}


def _with_special_text(texts: list[str]) -> list[str]:
    """Utterances with special-token text written into them, at the start, middle and end."""
    out = []
    for i, text in enumerate(texts):
        special = SPECIAL_TEXTS[i % len(SPECIAL_TEXTS)]
        middle = len(text) // 2
        out.append(f"{special}{text[:middle]} {special}{text[middle:]} say {special}")
    return out


def _first_mismatch(ours: list[list[int]], reference: list[list[int]]) -> int | None:
    assert len(ours) == len(reference)
    return next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), None)


def _assert_round_trip(tokenizer: Tokenizer, texts: list[str], ids: list[list[int]]) -> None:
    bad = [i for i, (text, row) in enumerate(zip(texts, ids, strict=True)) if tokenizer.decode(row) != text]
    assert not bad, f"{len(bad)} utterances do not decode to themselves, first {bad[0]}: {texts[bad[0]][:200]!r}"


# -- tokenizer.json == transformers


@pytest.mark.parametrize("which", ["llama3_json", "bpe"])
def test_tokenizer_json_ids_equal_transformers_on_every_lima_utterance(which, request, utterances):
    from transformers import AutoTokenizer

    directory = request.getfixturevalue("llama3_json" if which == "llama3_json" else "bpe_dir")
    ours_tok = Tokenizer.load(directory)
    assert ours_tok.kind == "tokenizers"
    reference = AutoTokenizer.from_pretrained(directory)

    ours = ours_tok.encode_batch(utterances, num_threads=2)
    # split_special_tokens=True: `encode` reads special-token text as text. LIMA holds none, so on
    # LIMA itself the flag changes nothing; the special-text variant below is where it matters.
    assert not any(t in text for text in utterances for t in ours_tok.special_tokens)
    ref = reference(utterances, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert _first_mismatch(ours, ref) is None
    assert [ours_tok.encode(t) for t in utterances[:100]] == ours[:100]  # one at a time == batched
    _assert_round_trip(ours_tok, utterances, ours)

    injected = _with_special_text(utterances[:200])
    ours_injected = ours_tok.encode_batch(injected)
    assert _first_mismatch(ours_injected, reference(injected, add_special_tokens=False,
                                                    split_special_tokens=True)["input_ids"]) is None
    assert not set(ours_tok.special_tokens.values()) & {i for row in ours_injected for i in row}
    _assert_round_trip(ours_tok, injected, ours_injected)
    # encode_special == transformers' default (special tokens parsed) on the same texts.
    parsed = reference(injected, add_special_tokens=False)["input_ids"]
    assert [ours_tok.encode_special(t) for t in injected] == parsed
    assert parsed != ours_injected
    print(f"\n[parity tokenizers/{which}] {len(utterances)} LIMA utterances, {sum(map(len, ours))} tokens "
          f"== transformers; + {len(injected)} with special text, {sum(map(len, ours_injected))} tokens")


# -- tiktoken == Meta's reference


def test_readme_and_lima_jax_constants_match_meta(shared_data):
    readme = (shared_data / "tokenizer" / "llama3" / "README.md").read_text()
    pattern_line = readme.split("Pre-tokenization pattern", 1)[1].splitlines()[1]
    assert pattern_line.strip().strip("`") == META_PAT_STR
    named = {name: int(i) for name, i in re.findall(r"`(<\|[a-z_0-9]+\|>)` (\d+)", readme)}
    assert len(named) >= 12
    for name, token_id in named.items():
        assert META_SPECIAL_TOKENS.index(name) + 128000 == token_id, name
    assert META_SPECIAL_TOKENS[-1] == "<|reserved_special_token_245|>" and len(META_SPECIAL_TOKENS) == 256
    assert tokenizer_backends.LLAMA3_PATTERN == META_PAT_STR
    assert tokenizer_backends.LLAMA3_SPECIAL_TOKENS == META_SPECIAL_TOKENS


def test_tiktoken_ids_equal_meta_reference_on_every_lima_utterance(tiktoken_path, utterances, llama3_json):
    meta = MetaLlama3Reference(tiktoken_path)
    tok = Tokenizer.load(tiktoken_path)
    assert tok.kind == "tiktoken" and tok.special_tokens == meta.special_tokens
    ref = [meta.encode(text) for text in utterances]
    # Meta's slicing cuts nothing here: no LIMA utterance has a 25,000-character run.
    assert max(map(len, utterances)) < 400_000
    ours = tok.encode_batch(utterances, num_threads=2)
    assert _first_mismatch(ours, ref) is None
    assert _first_mismatch(tok.encode_batch(utterances, num_threads=1), ref) is None
    _assert_round_trip(tok, utterances, ours)
    # The converted tokenizer.json agrees id for id with Meta's file.
    assert _first_mismatch(Tokenizer.load(llama3_json).encode_batch(utterances), ref) is None

    injected = _with_special_text(utterances[:200])
    assert _first_mismatch(tok.encode_batch(injected, num_threads=2), [meta.encode(t) for t in injected]) is None
    # Where Meta's slicing does cut (a run of more than 25,000 characters), we cut the same.
    long_texts = ["1" * 30_000, " " * 30_000 + "a", "word " * 20 + "7" * 60_001 + " end"]
    for text in long_texts:
        assert tok.encode(text) == meta.encode(text) == tok.encode_batch([text, "x"])[0]
        assert tok.decode(tok.encode(text)) == text
    assert meta.model.encode_ordinary(long_texts[0]) != meta.encode(long_texts[0])  # the cut matters
    print(f"\n[parity tiktoken] {len(utterances)} LIMA utterances, {sum(map(len, ours))} tokens == Meta's "
          f"reference (and == the converted tokenizer.json); + {len(injected)} with special text")


# -- sentencepiece == sentencepiece


def test_sentencepiece_ids_equal_sentencepiece_on_every_lima_utterance(sp_path, utterances):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    tok = Tokenizer.load(sp_path)
    assert tok.kind == "sentencepiece"
    ref = sp.encode(utterances)
    ours = tok.encode_batch(utterances, num_threads=2)
    assert _first_mismatch(ours, ref) is None
    assert [tok.encode(t) for t in utterances[:100]] == ref[:100]
    # LLaMA's model normalises nothing (identity rule, no whitespace folding) and falls back to
    # bytes, so every utterance round-trips exactly; a model with an NFKC rule or
    # remove_extra_whitespaces would not ("ｆｕｌｌ" -> "full", "a  b" -> "a b").
    _assert_round_trip(tok, utterances, ours)
    for text in (" leading space", "  two", "\n newline first", "tab\tend ", "", "ｆｕｌｌ width"):
        assert tok.decode(tok.encode(text)) == text
    injected = _with_special_text(utterances[:200])
    assert tok.encode_batch(injected) == sp.encode(injected)
    print(f"\n[parity sentencepiece] {len(utterances)} LIMA utterances, {sum(map(len, ours))} tokens "
          f"== sentencepiece")


# -- special-token text


@pytest.mark.parametrize("name, text, special", [
    ("tiktoken", "say <|eot_id|> now", "<|eot_id|>"),
    ("tiktoken", "<|begin_of_text|>hi", "<|begin_of_text|>"),
    ("llama3_json", "say <|eot_id|> now", "<|eot_id|>"),
    ("llama3_json", "a<|end_of_text|>", "<|end_of_text|>"),
    ("bpe", "say <|im_end|> now", "<|im_end|>"),
    ("bpe", "<|im_start|>user", "<|im_start|>"),
    ("sentencepiece", "fine </s> then", "</s>"),
    ("sentencepiece", "<s>[INST] hi", "<s>"),
])
def test_special_token_text_is_text_for_encode_and_special_for_encode_special(
        tokenizers_by_name, name, text, special):
    tok = tokenizers_by_name[name]
    special_id = tok.special_tokens[special]
    ids = tok.encode(text)
    assert special_id not in ids and not set(ids) & set(tok.special_tokens.values())
    assert tok.encode_batch([text, text], num_threads=2) == [ids, ids]
    assert tok.decode(ids) == text
    parsed = tok.encode_special(text)
    assert parsed.count(special_id) == 1
    ids_with_offsets, starts = tok.encode_with_offsets(text)
    assert ids_with_offsets == parsed and starts[parsed.index(special_id)] == text.index(special)


def test_no_text_yields_the_eos_or_end_of_turn(tokenizers_by_name):
    for name, eot in (("tiktoken", "<|eot_id|>"), ("llama3_json", "<|eot_id|>"), ("bpe", "<|im_end|>"),
                      ("sentencepiece", "</s>")):
        tok = tokenizers_by_name[name].with_eot(eot)
        text = f"{eot}{tok.token_text('eos_token')}{eot}"
        assert not {tok.eos_id, tok.eot_id} & set(tok.encode(text)), name
        assert tok.encode_special(text) == [tok.eot_id, tok.eos_id, tok.eot_id], name


# -- loading, pickling, ids


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def test_load_reads_tokenizer_json_then_tokenizer_model_then_original(tmp_path, sp_path, tiktoken_path, bpe_dir):
    d = tmp_path / "ckpt"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        _copy(bpe_dir / name, d / name)
    _copy(sp_path, d / "tokenizer.model")
    _copy(tiktoken_path, d / "original" / "tokenizer.model")
    assert Tokenizer.load(d).kind == "tokenizers"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    assert Tokenizer.load(d).kind == "sentencepiece"
    (d / "tokenizer.model").unlink()
    tok = Tokenizer.load(d)
    assert (tok.kind, tok.base_vocab_size, tok.bos_id, tok.eos_id) == ("tiktoken", 128256, 128000, 128001)
    # tiktoken or SentencePiece is told by content, not by name or place.
    _copy(tiktoken_path, d / "tokenizer.model")
    _copy(sp_path, d / "original" / "tokenizer.model")
    assert Tokenizer.load(d).kind == "tiktoken"
    assert Tokenizer.load(d / "original").kind == "sentencepiece"
    _copy(sp_path, tmp_path / "any.bin")
    _copy(tiktoken_path, tmp_path / "other.bin")
    assert (Tokenizer.load(tmp_path / "any.bin").kind, Tokenizer.load(tmp_path / "other.bin").kind) == (
        "sentencepiece", "tiktoken")


@pytest.mark.parametrize("name", ["sentencepiece", "tiktoken", "llama3_json", "bpe"])
@pytest.mark.parametrize("eot", ["new", "special"])
def test_pickle_round_trip(tokenizers_by_name, utterances, name, eot):
    tok = tokenizers_by_name[name]
    if eot == "special":
        tok = tok.with_eot({"sentencepiece": "</s>", "bpe": "<|im_end|>"}.get(name, "<|eot_id|>"))
    back = pickle.loads(pickle.dumps(tok))
    fields = ("kind", "base_vocab_size", "vocab_size", "padded_vocab_size", "bos_id", "eos_id", "eot_id",
              "pad_id", "eot", "special_tokens", "chat_template")
    assert {f: getattr(back, f) for f in fields} == {f: getattr(tok, f) for f in fields}
    texts = utterances[:20] + ["say <|eot_id|> <|im_end|> </s> now"]
    assert back.encode_batch(texts) == tok.encode_batch(texts)
    assert [back.encode_special(t) for t in texts] == [tok.encode_special(t) for t in texts]


@pytest.mark.parametrize("name, bos, eos, pad, eot_text, eot_id", [
    ("sentencepiece", 1, 2, 0, "</s>", 2),
    ("tiktoken", 128000, 128001, 128004, "<|eot_id|>", 128009),
    ("llama3_json", 128000, 128001, 128004, "<|eot_id|>", 128009),
    ("bpe", 1, 2, 0, "<|im_end|>", 2),  # <|im_start|>, <|im_end|>, pad <|endoftext|>
])
def test_bos_eos_pad_ids(tokenizers_by_name, name, bos, eos, pad, eot_text, eot_id):
    tok = tokenizers_by_name[name]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eos, pad)
    assert tok.eot_id == tok.base_vocab_size and tok.vocab_size == tok.base_vocab_size + 1  # eot new
    reused = tok.with_eot(eot_text)
    assert (reused.eot_id, reused.vocab_size) == (eot_id, tok.base_vocab_size)
    for t in (tok, reused):
        assert t.pad_id not in (t.eos_id, t.eot_id)
        assert t.padded_vocab_size % 128 == 0 and t.padded_vocab_size >= t.vocab_size


def test_llama3_pad_is_never_eos_or_eot_even_when_eos_is_the_end_of_turn(tmp_path, tiktoken_path):
    """An Instruct checkpoint names <|eot_id|> its EOS; pad stays the fine-tune pad token."""
    _copy(tiktoken_path, tmp_path / "original" / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot_id|>"}))
    tok = Tokenizer.load(tmp_path, eot="<|eot_id|>")
    assert (tok.eos_id, tok.eot_id, tok.pad_id) == (128009, 128009, 128004)


# -- bad input: one line, naming the file


def _one_line_error(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        Tokenizer.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return info.value


def test_bad_tokenizer_json_is_a_one_line_error_naming_the_file(tmp_path, bpe_dir):
    d = tmp_path / "foo"
    shutil.copytree(bpe_dir, d)
    raw = json.loads((d / "tokenizer.json").read_text())
    raw["model"]["type"] = "Foo"
    (d / "tokenizer.json").write_text(json.dumps(raw))
    for path in (d, d / "tokenizer.json"):
        error = _one_line_error(path)
        assert str(error).startswith(f"{d / 'tokenizer.json'}: ") and "model type 'Foo'" in str(error)
    (d / "tokenizer.json").write_text(json.dumps(raw)[: 5000])  # cut short
    error = _one_line_error(d)
    assert str(error).startswith(f"{d / 'tokenizer.json'}: not valid JSON")
    (d / "tokenizer.json").write_text("[1, 2]")
    assert str(_one_line_error(d)).startswith(f"{d / 'tokenizer.json'}: is not a JSON object")
    raw["model"]["type"] = "BPE"
    raw["model"]["merges"] = 7  # the right model type, yet tokenizers cannot read it
    (d / "tokenizer.json").write_text(json.dumps(raw))
    assert str(_one_line_error(d)).startswith(f"{d / 'tokenizer.json'}: cannot read this tokenizer.json (")


def test_bad_tokenizer_model_is_a_one_line_error_naming_the_file(tmp_path, tiktoken_path):
    for name, data in (("text", b"hello world\nthis is not a tokenizer\n"), ("bytes", bytes(range(256)) * 4),
                       ("empty", b"")):
        d = tmp_path / name
        d.mkdir()
        (d / "tokenizer.model").write_bytes(data)
        error = _one_line_error(d)
        assert str(error).startswith(f"{d / 'tokenizer.model'}: "), str(error)
        assert "not a SentencePiece model" in str(error) and "tiktoken" in str(error)
    # A tiktoken file broken further down names the line.
    d = tmp_path / "cut"
    (d / "original").mkdir(parents=True)
    lines = tiktoken_path.read_bytes().splitlines()
    (d / "original" / "tokenizer.model").write_bytes(b"\n".join(lines[:100] + [b"!!!! 100"] + lines[101:]))
    assert str(_one_line_error(d)).startswith(f"{d / 'original' / 'tokenizer.model'}:101: ")


def test_missing_tokenizer_and_bad_eot_are_one_line_errors(tmp_path, bpe_dir, tiktoken_path, sp_path):
    error = _one_line_error(tmp_path)
    assert str(error).startswith(f"{tmp_path}: no tokenizer.json")
    error = _one_line_error(tmp_path / "nothing.model")
    assert str(error).startswith(f"{tmp_path / 'nothing.model'}: ")
    for path in (bpe_dir, tiktoken_path, sp_path):
        error = _one_line_error(path, eot="<|nope|>")
        assert error.location == "config.data.eot" and str(error).startswith("config.data.eot: '<|nope|>'")
    # Text that is more than one token is not an end of turn either.
    assert _one_line_error(tiktoken_path, eot="say now").location == "config.data.eot"
