"""The tokenizer of a run: any of the formats checkpoints ship, plus the run's end-of-turn token.

`Tokenizer.load` takes a file or a checkpoint directory. In a directory it reads
``tokenizer.json`` (Hugging Face), else ``tokenizer.model`` (SentencePiece, or Meta's Llama 3
tiktoken file, told apart by content), else ``original/tokenizer.model``; the special tokens come
from ``tokenizer_config.json`` / ``special_tokens_map.json`` and the chat template from
``tokenizer_config.json`` or ``chat_template.jinja`` beside it (`lima_jax.data.tokenizer_backends`).
All of those files travel with the tokenizer (`files`): into every training checkpoint and every
export, so a checkpoint never needs the original directory again.

End of turn (``eot``): ``new`` appends LIMA's EOT as a new id equal to the tokenizer's size (and the
model grows one row), unless the vocabulary already holds ``<EOT>`` (an export of a lima_jax run,
read back), which is then reused; any other value is the text of a token already in the vocabulary
(``<|eot_id|>``, ``<|im_end|>``, ``</s>``), reused with no new row. The embedding table is padded up
to a multiple of 128 so the vocabulary axis shards evenly; ids between ``vocab_size`` and
``padded_vocab_size`` are never produced.
For tiny/demo configs, :func:`train_tokenizer` trains a small BPE model on the data and caches
it in the workdir under a name derived from the data and options, so reruns reuse it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from lima_jax.data.errors import DataError
from lima_jax.data.tokenizer_backends import (
    TOKENIZER_JSON_NAME,
    TOKENIZER_MODEL_NAME,
    SentencePieceBackend,
    TiktokenBackend,
    TokenizersBackend,
    is_tiktoken_file,
)

EOT_PIECE = "<EOT>"
NEW_EOT = "new"
# Embedding tables are padded to this multiple so the vocab axis shards evenly.
VOCAB_MULTIPLE = 128
TOKENIZER_JSON, TOKENIZER_MODEL = TOKENIZER_JSON_NAME, TOKENIZER_MODEL_NAME
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE = (
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# The files a tokenizer is made of, as a Hugging Face directory names them.
SIDE_FILES = (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)


def tokenizer_file_in(directory: str | os.PathLike) -> pathlib.Path | None:
    """The tokenizer file of a checkpoint directory, in the order Hugging Face loaders prefer
    (tokenizer.json, tokenizer.model, Meta's original/tokenizer.model); None if it has none."""
    directory = pathlib.Path(directory)
    for name in (TOKENIZER_JSON, TOKENIZER_MODEL, f"original/{TOKENIZER_MODEL}"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(str(path), f"cannot read the tokenizer ({e.strerror})",
                        "set config.data.tokenizer / --tokenizer to a tokenizer.json, tokenizer.model "
                        "or a checkpoint directory", "missing_file") from None


def read_tokenizer_files(path: str | os.PathLike) -> dict[str, bytes]:
    """The files of the tokenizer at ``path`` (a file, or a directory holding one), by their
    Hugging Face names; the main file is ``tokenizer.json`` or ``tokenizer.model``."""
    path = pathlib.Path(path)
    if path.is_dir():
        main = tokenizer_file_in(path)
        if main is None:
            raise DataError(str(path), f"no {TOKENIZER_JSON}, {TOKENIZER_MODEL} or original/{TOKENIZER_MODEL} here",
                            "give the tokenizer with config.data.tokenizer / --tokenizer", "missing_file")
        side_dir = path
    else:
        main, side_dir = path, path.parent
    data = _read(main)
    name = TOKENIZER_JSON if main.suffix == ".json" or data[:1] == b"{" else TOKENIZER_MODEL
    files = {name: data}
    for side in SIDE_FILES:
        if (side_dir / side).is_file():
            files[side] = _read(side_dir / side)
    return files


def _json_file(files: dict[str, bytes], name: str, where: str) -> dict:
    if name not in files:
        return {}
    try:
        value = json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where}/{name}", f"not valid JSON ({e})", "", "tokenizer") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}/{name}", "is not a JSON object", "", "tokenizer")
    return value


class Tokenizer:
    """A tokenizer of any supported format plus the run's end-of-turn id; picklable (it carries
    its files).

    Attributes:
      kind: ``sentencepiece``, ``tokenizers`` or ``tiktoken``.
      base_vocab_size: ids the tokenizer itself produces (added and special tokens included).
      eot: the end-of-turn policy, ``new`` or a token's text; eot_id: its id (base_vocab_size
        when new).
      vocab_size: true vocabulary size, base_vocab_size + 1 when the EOT is new.
      padded_vocab_size: vocab_size rounded up to a multiple of 128.
      bos_id (None when the tokenizer has no BOS), eos_id, unk_id (None when it has none): the
        tokenizer's own.
      pad_id: the id written into padding positions. Padding never carries loss (masks are
        explicit), yet it is kept apart from EOS and the end of turn so that no tool that masks
        by pad id could drop them: the configured pad token, else <unk>, else another special
        token, else 0.
      chat_template: the Jinja chat template that came with the tokenizer, or None.
    """

    def __init__(self, files: dict[str, bytes] | bytes, path: str = "", eot: str = NEW_EOT):
        if isinstance(files, bytes):  # a bare SentencePiece proto (checkpoints before tokenizer.json)
            files = {TOKENIZER_MODEL: files}
        self.path, self.files = path, dict(files)
        where = path or "tokenizer"
        folder = str(pathlib.Path(path).parent) if path and not pathlib.Path(path).is_dir() else where
        self.config = {**_json_file(self.files, SPECIAL_TOKENS_MAP, folder),
                       **_json_file(self.files, TOKENIZER_CONFIG, folder)}
        if TOKENIZER_JSON in self.files:
            self._backend = TokenizersBackend(self.files[TOKENIZER_JSON], self.config, where)
        elif TOKENIZER_MODEL in self.files and is_tiktoken_file(self.files[TOKENIZER_MODEL]):
            self._backend = TiktokenBackend(self.files[TOKENIZER_MODEL], self.config, where)
        elif TOKENIZER_MODEL in self.files:
            self._backend = SentencePieceBackend(self.files[TOKENIZER_MODEL], where)
        else:
            raise DataError(where, "holds neither tokenizer.json nor tokenizer.model", "", "tokenizer")
        backend = self._backend
        self.kind = backend.kind
        self.base_vocab_size = backend.size
        self.bos_id, self.eos_id, self.unk_id = backend.bos_id, backend.eos_id, backend.unk_id
        if self.eos_id is None:
            raise DataError(where, "the tokenizer names no EOS token",
                            "set eos_token in tokenizer_config.json (SentencePiece: train it with eos_id)",
                            "tokenizer")
        self.special_tokens: dict[str, int] = dict(backend.special_tokens)
        self._set_eot(eot, where)

    def _set_eot(self, eot: str, where: str) -> None:
        eot = eot or NEW_EOT
        if eot == NEW_EOT and self._backend.piece_to_id(EOT_PIECE) is not None:
            # The vocabulary already holds LIMA's EOT (a lima_jax export read back): that token is
            # the end of turn the model was trained with, not a second, untrained one.
            eot = EOT_PIECE
        if eot == NEW_EOT:
            self.eot_id, self.vocab_size = self.base_vocab_size, self.base_vocab_size + 1
        else:
            token_id = self._backend.piece_to_id(eot)
            if token_id is None:
                named = ", ".join(sorted(self.special_tokens)[:8])
                raise DataError("config.data.eot", f"{eot!r} is not one token of {where}'s vocabulary",
                                f"use 'new' or a token it has ({named}, ...)", "config")
            self.eot_id, self.vocab_size = token_id, self.base_vocab_size
        self.eot = eot
        self.padded_vocab_size = -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self.pad_id = self._choose_pad()
        self._not_text = {i for i in (self.bos_id, self.eos_id, self.eot_id) if i is not None}
        self._not_text |= set(self.special_tokens.values())

    def _choose_pad(self) -> int:
        avoid = {self.eos_id, self.eot_id, self.bos_id}
        # A special token meant for padding (Llama 3's <|finetune_right_pad_id|>) before any other.
        others = sorted((("pad" not in name), i) for name, i in self.special_tokens.items() if i not in avoid)
        others = [i for _, i in others]
        for candidate in (self._backend.pad_id, self.unk_id, *others[:1], 0):
            if candidate is not None and candidate not in avoid:
                return candidate
        return 0

    def with_eot(self, eot: str) -> Tokenizer:
        """This tokenizer with another end-of-turn policy (``new`` or a token's text)."""
        other = Tokenizer.__new__(Tokenizer)
        other.__dict__.update(self.__dict__)
        other._set_eot(eot, self.path or "tokenizer")
        return other

    @classmethod
    def load(cls, path: str | os.PathLike, eot: str = NEW_EOT) -> Tokenizer:
        """Loads the tokenizer at ``path``: a tokenizer file or a checkpoint directory."""
        return cls(read_tokenizer_files(path), str(path), eot=eot)

    # -- travelling with checkpoints
    def to_meta(self) -> dict:
        """JSON-able record of the tokenizer (its files, base64) for a checkpoint's meta."""
        return {"tokenizer_path": self.path, "tokenizer_eot": self.eot,
                "tokenizer_files": {name: base64.b64encode(data).decode("ascii")
                                    for name, data in self.files.items()}}

    @classmethod
    def from_meta(cls, meta: dict) -> Tokenizer:
        """The tokenizer a checkpoint's meta recorded (`to_meta`, or the older SentencePiece-only field)."""
        if "tokenizer_files" in meta:
            files = {name: base64.b64decode(data) for name, data in meta["tokenizer_files"].items()}
        else:
            files = {TOKENIZER_MODEL: base64.b64decode(meta["tokenizer_model_b64"])}
        return cls(files, meta.get("tokenizer_path", ""), eot=meta.get("tokenizer_eot", NEW_EOT))

    def write_files(self, directory: str | os.PathLike) -> list[pathlib.Path]:
        """Writes the tokenizer's files, unchanged, into ``directory``; returns their paths."""
        directory = pathlib.Path(directory)
        written = []
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
            written.append(directory / name)
        return written

    def __getstate__(self) -> dict:
        return {"files": self.files, "path": self.path, "eot": self.eot}

    def __setstate__(self, state: dict) -> None:
        if "proto" in state:
            state = {"files": {TOKENIZER_MODEL: state["proto"]}, "path": state["path"], "eot": NEW_EOT}
        self.__init__(state["files"], state["path"], eot=state["eot"])

    @property
    def eot_is_new(self) -> bool:
        return self.eot == NEW_EOT

    @property
    def chat_template(self) -> str | None:
        """The chat template shipped with the tokenizer (tokenizer_config.json, else chat_template.jinja)."""
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template:
            return template
        if CHAT_TEMPLATE_FILE in self.files:
            return self.files[CHAT_TEMPLATE_FILE].decode("utf-8")
        return None

    def token_text(self, key: str) -> str | None:
        """A special token's text as tokenizer_config.json names it (``bos_token`` ...), else from the id."""
        value = self.config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
        token_id = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id}.get(key)
        return None if token_id is None else self.id_to_piece(token_id)

    # -- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS/EOT; special-token text is encoded as text."""
        return self._backend.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text (the backend's own threads when num_threads > 1)."""
        return self._backend.encode_batch(texts, num_threads=num_threads)

    def encode_special(self, text: str) -> list[int]:
        """Token ids of text a chat template rendered: its special tokens' text is those tokens."""
        return self._backend.encode_special(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """`encode_special` ids and the character offset where each token starts."""
        return self._backend.encode_with_offsets(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; BOS/EOS/EOT, special tokens and the padded ids are left out."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.base_vocab_size and int(i) not in self._not_text]
        return self._backend.decode(keep)

    def id_to_piece(self, token_id: int) -> str:
        if token_id == self.eot_id and self.eot_is_new:
            return EOT_PIECE
        if token_id >= self.base_vocab_size:
            return f"<pad_{token_id}>"
        return self._backend.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int | None:
        """The id of the one token whose text is ``piece`` (None when it is not one token)."""
        if self.eot_is_new and piece == EOT_PIECE:
            return self.eot_id
        return self._backend.piece_to_id(piece)

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.path or 'in-memory'}, {self.kind}, vocab_size={self.vocab_size}, "
            f"padded_vocab_size={self.padded_vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"eot={self.eot_id}{' (new)' if self.eot_is_new else ''}, pad={self.pad_id})"
        )


def train_tokenizer(
    texts: Iterable[str],
    cache_dir: str | os.PathLike,
    vocab_size: int = 512,
    model_type: str = "bpe",
) -> pathlib.Path:
    """Trains a small SentencePiece model on ``texts`` (or reuses the cached one); returns its path.

    The model follows LLaMA's conventions (<unk>=0, <s>=1, </s>=2, no pad piece, byte fallback,
    digits split) so tiny configs exercise the same code paths as the real tokenizer. The file
    name is a hash of the texts and options: the same data and options reuse the same file.
    """
    texts = [t for t in texts if t]
    options = {"vocab_size": int(vocab_size), "model_type": model_type, "version": 1}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    path = pathlib.Path(cache_dir) / f"spm-{model_type}-{vocab_size}-{digest.hexdigest()[:16]}.model"
    if path.exists():
        return path
    if not texts:
        raise DataError(str(cache_dir), "no text to train a tokenizer on", "check the data path", "config")
    model = io.BytesIO()
    try:
        _train(texts, model, vocab_size, model_type)
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars"
        raise DataError(
            "config.data.train_tokenizer.vocab_size", f"SentencePiece cannot train: {e}",
            "raise vocab_size (byte fallback alone needs 259 pieces plus the data's characters)",
            "config",
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, path)  # atomic: concurrent hosts/tests never read a half-written model
    return path


def _train(texts: list[str], model: io.BytesIO, vocab_size: int, model_type: str) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=int(vocab_size),
        model_type=model_type,
        byte_fallback=True,
        split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        # Tiny corpora cannot always fill the vocabulary; a smaller one is fine for demos.
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
