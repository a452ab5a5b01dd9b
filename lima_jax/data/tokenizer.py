"""SentencePiece tokenizer with LIMA's end-of-turn token, and small tokenizers trained on data.

The base model's ``tokenizer.model`` (LLaMA's: 32,000 pieces) is loaded unchanged; the EOT token
is appended as a new id equal to the base vocabulary size (32000), and the embedding table is
padded up to a multiple of 128 (32128) so it shards evenly. The model is built from
``vocab_size`` (true, incl. EOT) and ``padded_vocab_size``; ids in between are never produced.
For tiny/demo configs, :func:`train_tokenizer` trains a small BPE model on the data and caches
it in the workdir under a name derived from the data and options, so reruns reuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from lima_jax.data.errors import DataError

EOT_PIECE = "<EOT>"
# Embedding tables are padded to this multiple so the vocab axis shards evenly.
VOCAB_MULTIPLE = 128


class Tokenizer:
    """A SentencePiece model plus the EOT id; picklable (it carries the model bytes).

    Attributes:
      base_vocab_size: pieces in the SentencePiece model.
      eot_id: the end-of-turn id, equal to base_vocab_size.
      vocab_size: true vocabulary size, base_vocab_size + 1 (EOT).
      padded_vocab_size: vocab_size rounded up to a multiple of 128.
      bos_id, eos_id: the model's own BOS and EOS ids.
      pad_id: the id written into padding positions (the model's pad piece if it has one,
        else <unk>). Padding never carries loss; it is a real id (not one of the padded
        ids above vocab_size) so that a loss over a masked softmax never sees -inf at a pad.
    """

    def __init__(self, model_proto: bytes, path: str = ""):
        self.path = path
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.base_vocab_size = self._sp.get_piece_size()
        self.eot_id = self.base_vocab_size
        self.vocab_size = self.base_vocab_size + 1
        self.padded_vocab_size = -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise DataError(
                path or "tokenizer", "the SentencePiece model has no BOS or EOS piece",
                "train it with bos_id and eos_id set (LLaMA: 1 and 2)", "tokenizer",
            )
        pad = self._sp.pad_id()
        self.pad_id = pad if pad >= 0 else max(self._sp.unk_id(), 0)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a SentencePiece ``tokenizer.model`` file."""
        try:
            proto = pathlib.Path(path).read_bytes()
        except OSError as e:
            raise DataError(
                str(path), f"cannot read the tokenizer model ({e.strerror})",
                "set config.data.tokenizer / --tokenizer to a SentencePiece tokenizer.model",
                "missing_file",
            ) from None
        try:
            return cls(proto, str(path))
        except RuntimeError as e:
            raise DataError(str(path), f"not a SentencePiece model ({e})", "", "tokenizer") from None

    def __getstate__(self) -> dict:
        return {"proto": self._proto, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["proto"], state["path"])

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (to save with a checkpoint)."""
        return self._proto

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS/EOT."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text (SentencePiece's own C++ threads when num_threads > 1)."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; EOT and the padded ids above it are left out."""
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < self.base_vocab_size])

    def id_to_piece(self, token_id: int) -> str:
        if token_id == self.eot_id:
            return EOT_PIECE
        if token_id > self.eot_id:
            return f"<pad_{token_id}>"
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.path or 'in-memory'}, vocab_size={self.vocab_size}, "
            f"padded_vocab_size={self.padded_vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"eot={self.eot_id}, pad={self.pad_id})"
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
