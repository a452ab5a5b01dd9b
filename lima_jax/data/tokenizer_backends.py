"""The three tokenizer formats checkpoints ship, each behind the same small interface.

- ``sentencepiece``: a SentencePiece ``tokenizer.model`` (LLaMA 1/2, TinyLlama, Mistral v0.1).
- ``tokenizers``: a Hugging Face ``tokenizer.json`` (Llama 3.x exports, SmolLM, most new models),
  read by the `tokenizers` library that transformers itself uses, with the special tokens named in
  ``tokenizer_config.json`` / ``special_tokens_map.json``.
- ``tiktoken``: Meta's own Llama 3 ``tokenizer.model`` (``original/tokenizer.model``: one
  ``<base64 bytes> <rank>`` line per token), read by `tiktoken` with Meta's pre-tokenizer pattern and
  its 256 special tokens, and texts sliced as Meta's reference slices them (which only matters for
  runs of more than 25,000 whitespace or non-whitespace characters).

Every backend's ``encode`` / ``encode_batch`` encodes special-token text *as text* (a user who writes
``<|eot_id|>`` in a question gets the characters, not the control token), as transformers does
with ``split_special_tokens=True``; ``encode_special`` / ``encode_with_offsets`` are for text a chat
template rendered, where the special tokens are the template's own. A file that cannot be read is a
one-line `DataError` naming it (inside a directory: the file `Tokenizer.load` chose there).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Sequence

from lima_jax.data.errors import DataError

SENTENCEPIECE, TOKENIZERS, TIKTOKEN = "sentencepiece", "tokenizers", "tiktoken"

# Meta's Llama 3 reference tokenizer (llama/tokenizer.py): the pre-tokenizer pattern and the
# names of the 256 special tokens after the 128,000 ranks.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(2, 246)]
# Meta's reference encodes a text in slices: 400,000 characters at most, and no run of more than
# 25,000 consecutive whitespace or non-whitespace characters (cut where a run grows past it).
TIKTOKEN_MAX_ENCODE_CHARS, TIKTOKEN_MAX_RUN_CHARS = 400_000, 25_000

TOKENIZER_JSON_NAME, TOKENIZER_MODEL_NAME = "tokenizer.json", "tokenizer.model"
# Where a directory keeps a tokenizer.model, in the order `Tokenizer.load` looks.
_MODEL_FILES = (TOKENIZER_MODEL_NAME, f"original/{TOKENIZER_MODEL_NAME}")
_TOKENIZERS_MODELS = ("BPE", "Unigram", "WordPiece", "WordLevel")
_NEITHER_HINT = ("give a SentencePiece tokenizer.model (LLaMA, Llama 2), Meta's Llama 3 tokenizer.model "
                 "(tiktoken) or a tokenizer.json")


def _file_in(where: str, *names: str) -> str:
    """The file an error names: ``where`` itself, or, when it is a directory, the first of
    ``names`` in it (the one `Tokenizer.load` read there)."""
    if where and os.path.isdir(where):
        for name in names:
            if os.path.isfile(os.path.join(where, name)):
                return os.path.join(where, name)
    return where


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _char_offsets_from_bytes(text: str, byte_starts: Sequence[int]) -> list[int]:
    """Character offsets of UTF-8 byte offsets into ``text`` (a byte inside a character maps to it)."""
    char_of_byte = []
    for i, ch in enumerate(text):
        char_of_byte += [i] * len(ch.encode("utf-8"))
    char_of_byte.append(len(text))
    return [char_of_byte[min(b, len(char_of_byte) - 1)] for b in byte_starts]


class SentencePieceBackend:
    """A SentencePiece model (its control pieces are never produced from text)."""

    kind = SENTENCEPIECE

    def __init__(self, proto: bytes, where: str):
        import sentencepiece as spm

        what = None
        if not proto:
            what = "is empty: not a SentencePiece model nor a Llama 3 tiktoken file"
        else:
            try:
                self._sp = spm.SentencePieceProcessor(model_proto=proto)
            except RuntimeError as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
                if "ParseFromArray" in reason:
                    reason = "its protobuf does not parse"
                what = (f"not a SentencePiece model ({reason.removeprefix('INTERNAL: ')}) nor a Llama 3 "
                        "tiktoken file ('<base64> <rank>' lines)")
        if what is not None:
            raise DataError(_file_in(where, *_MODEL_FILES), what, _NEITHER_HINT, "tokenizer")
        self.size = self._sp.get_piece_size()
        sp = self._sp
        self.special_tokens = {sp.id_to_piece(i): i for i in range(self.size)
                               if sp.is_control(i) or sp.is_unknown(i)}
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else None
        self.unk_id = sp.unk_id() if sp.unk_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)

    def encode_special(self, text: str) -> list[int]:
        return self.encode_with_offsets(text)[0]

    def _proto(self, text: str):
        """The pieces of ``text`` with their byte spans (the keyword changed in sentencepiece 0.2.1)."""
        try:
            return self._sp.encode(text, return_type="proto")
        except TypeError:
            return self._sp.encode(text, out_type="immutable_proto")

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Special pieces' text (``<s>``, ``</s>``) becomes their ids, as a chat template means them."""
        ids, starts, at = [], [], 0
        for piece, special in split_on_special(text, self.special_tokens):
            if special:
                ids.append(self.special_tokens[piece])
                starts.append(at)
            else:
                proto = self._proto(piece)
                ids += [p.id for p in proto.pieces]
                starts += [at + c for c in _char_offsets_from_bytes(piece, [p.begin for p in proto.pieces])]
            at += len(piece)
        return ids, starts

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int | None:
        token_id = self._sp.piece_to_id(piece)
        return token_id if self._sp.id_to_piece(token_id) == piece else None


class TokenizersBackend:
    """A Hugging Face ``tokenizer.json`` through the `tokenizers` library.

    Two copies of the same tokenizer: one encodes special-token text as text (transformers'
    ``split_special_tokens=True``), the other (made on first use) parses it, for rendered chat
    templates. They are separate objects so threads never toggle a shared flag mid-encode.
    """

    kind = TOKENIZERS

    def __init__(self, tokenizer_json: bytes, config: dict, where: str):
        self._json, self._where = tokenizer_json, where
        self._plain = self._parse()
        # Ordinary text: special tokens' text is split as text (transformers' split_special_tokens).
        self._plain.encode_special_tokens = True
        self._special_copy = None
        self.size = self._plain.get_vocab_size(with_added_tokens=True)
        added = self._plain.get_added_tokens_decoder()
        self.size = max([self.size] + [i + 1 for i in added])
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}
        self.added_tokens = {t.content: i for i, t in added.items()}

        def token_id(key: str) -> int | None:
            text = _token_text(config.get(key))
            return None if text is None else self._plain.token_to_id(text)

        self.bos_id, self.eos_id = token_id("bos_token"), token_id("eos_token")
        self.pad_id, self.unk_id = token_id("pad_token"), token_id("unk_token")

    def _parse(self):
        """A `tokenizers.Tokenizer` of the file; what is wrong with it as a one-line DataError."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_str(self._json.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 (tokenizers raises bare Exception)
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
        where = _file_in(self._where, TOKENIZER_JSON_NAME)
        hint = "lima_jax reads tokenizer.json files of the BPE, Unigram, WordPiece and WordLevel models"
        try:
            raw = json.loads(self._json)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(where, f"not valid JSON ({e})", "", "tokenizer") from None
        if not isinstance(raw, dict):
            raise DataError(where, "is not a JSON object", "", "tokenizer") from None
        model = raw.get("model")
        model_type = model.get("type") if isinstance(model, dict) else None
        if model_type not in _TOKENIZERS_MODELS:
            raise DataError(where, f"unsupported tokenizer.json model type {model_type!r}", hint,
                            "tokenizer") from None
        raise DataError(where, f"cannot read this tokenizer.json ({error})", hint, "tokenizer") from None

    @property
    def _special(self):
        if self._special_copy is None:  # two threads may both build it: harmless
            self._special_copy = self._parse()
        return self._special_copy

    def encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        del num_threads  # the library's own thread pool (TOKENIZERS_PARALLELISM, RAYON_NUM_THREADS)
        # encode_batch_fast (tokenizers >= 0.21) skips the offsets, which ids do not need.
        encode = getattr(self._plain, "encode_batch_fast", self._plain.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self._special.encode(text, add_special_tokens=False)
        return encoding.ids, [start for start, _ in encoding.offsets]

    def encode_special(self, text: str) -> list[int]:
        return self._special.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self._plain.id_to_token(int(token_id)) or f"<id_{token_id}>"

    def piece_to_id(self, piece: str) -> int | None:
        return self._plain.token_to_id(piece)


def is_tiktoken_file(data: bytes) -> bool:
    """True for Meta's Llama 3 format: every line ``<base64> <rank>`` (checked on the first few)."""
    lines = data[:4096].splitlines()[:8]
    if not lines:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            return False
        try:
            base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            return False
    return True


class TiktokenBackend:
    """Meta's Llama 3 ``tokenizer.model`` through `tiktoken`, as Meta's reference tokenizer builds it."""

    kind = TIKTOKEN

    def __init__(self, data: bytes, config: dict, where: str):
        import tiktoken

        ranks: dict[bytes, int] = {}
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise DataError(f"{_file_in(where, *_MODEL_FILES)}:{number}",
                                "not a '<base64> <rank>' line of a tiktoken file", "", "tokenizer") from None
        n_base = len(ranks)
        if set(ranks.values()) != set(range(n_base)):  # Meta's special ids follow the ranks
            raise DataError(_file_in(where, *_MODEL_FILES),
                            f"the ranks of this tiktoken file are not 0..{n_base - 1}, each once",
                            "", "tokenizer")
        self.special_tokens = {name: n_base + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(name=os.path.basename(where) or "llama3", pat_str=LLAMA3_PATTERN,
                                      mergeable_ranks=ranks, special_tokens=self.special_tokens)
        self.n_base = n_base
        self.size = n_base + len(self.special_tokens)
        self._names = {i: name for name, i in self.special_tokens.items()}

        def token_id(key: str, default: str | None) -> int | None:
            text = _token_text(config.get(key)) or default
            return None if text is None else self.piece_to_id(text)

        self.bos_id = token_id("bos_token", "<|begin_of_text|>")
        self.eos_id = token_id("eos_token", "<|end_of_text|>")
        self.pad_id = token_id("pad_token", None)
        self.unk_id = None

    def encode(self, text: str) -> list[int]:
        if len(text) <= TIKTOKEN_MAX_RUN_CHARS:  # one slice: Meta's reference cuts nothing
            return self._enc.encode_ordinary(text)
        return [i for piece in _meta_slices(text) for i in self._enc.encode_ordinary(piece)]

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        texts = list(texts)
        if any(len(text) > TIKTOKEN_MAX_RUN_CHARS for text in texts):
            return [self.encode(text) for text in texts]
        if num_threads <= 1:  # tiktoken's batch call would still start a thread pool
            encode = self._enc.encode_ordinary
            return [encode(text) for text in texts]
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_special(self, text: str) -> list[int]:
        if len(text) <= TIKTOKEN_MAX_RUN_CHARS:
            return self._enc.encode(text, allowed_special="all")
        return [i for piece in _meta_slices(text) for i in self._enc.encode(piece, allowed_special="all")]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.encode_special(text)
        byte_starts, at = [], 0
        for token in ids:
            byte_starts.append(at)
            at += len(self._enc.decode_single_token_bytes(token))
        return ids, _char_offsets_from_bytes(text, byte_starts)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        if token_id in self._names:
            return self._names[token_id]
        return self._enc.decode_single_token_bytes(int(token_id)).decode("utf-8", "backslashreplace")

    def piece_to_id(self, piece: str) -> int | None:
        if piece in self.special_tokens:
            return self.special_tokens[piece]
        try:
            return self._enc.encode_single_token(piece.encode("utf-8"))
        except KeyError:
            return None


def _meta_slices(text: str) -> list[str]:
    """``text`` cut as Meta's reference Llama 3 tokenizer cuts it before encoding (`encode` there):
    400,000-character chunks, each cut again where a run of whitespace or of non-whitespace
    characters grows past 25,000."""
    out = []
    for chunk_start in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
        chunk = text[chunk_start:chunk_start + TIKTOKEN_MAX_ENCODE_CHARS]
        run, run_is_space, start = 0, chunk[0].isspace(), 0
        for i, ch in enumerate(chunk):
            is_space = ch.isspace()
            if is_space != run_is_space:
                run, run_is_space = 1, is_space
            else:
                run += 1
                if run > TIKTOKEN_MAX_RUN_CHARS:
                    out.append(chunk[start:i])
                    start, run = i, 1
        out.append(chunk[start:])
    return out


def split_on_special(text: str, specials: Iterable[str]) -> list[tuple[str, bool]]:
    """``text`` cut at every occurrence of a special token's text: (piece, is_special) in order,
    longest match first (as `tokenizers` matches added tokens)."""
    names = sorted((s for s in specials if s), key=len, reverse=True)
    out: list[tuple[str, bool]] = []
    i = start = 0
    while i < len(text):
        match = next((s for s in names if text.startswith(s, i)), None)
        if match is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((match, True))
        i = start = i + len(match)
    if start < len(text):
        out.append((text[start:], False))
    return out
