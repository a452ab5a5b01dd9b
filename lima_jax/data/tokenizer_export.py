"""A run's tokenizer as a Hugging Face export writes it, so `transformers` reads it as lima_jax does.

`export_tokenizer(tok, out_dir)` writes the files of ``tok`` (`lima_jax.data.tokenizer.Tokenizer`)
into a model directory so that ``transformers.AutoTokenizer.from_pretrained(out_dir)`` encodes
exactly as ``tok.encode`` does, and `hf_token_ids(tok)` gives the ids that ``config.json`` and
``generation_config.json`` name. Per kind of tokenizer:

- ``tokenizers`` (a ``tokenizer.json``): the file as it came, with LIMA's new EOT appended to its
  ``added_tokens``; the side files (``tokenizer_config.json``, ``special_tokens_map.json``,
  ``chat_template.jinja``) as they came.
- ``sentencepiece`` (a ``tokenizer.model`` only): the file as it came, and a
  ``tokenizer_config.json`` naming its special tokens and the new EOT in ``added_tokens_decoder``.
  transformers 5 builds the tokenizer from the proto at load time (it needs `sentencepiece` and
  `protobuf` for that) and honours ``added_tokens_decoder``: the EOT gets its id.
- ``tiktoken`` (Meta's Llama 3 ``tokenizer.model``): when `transformers` is importable here, a
  ``tokenizer.json`` converted by its ``TikTokenConverter`` (Meta's pattern and 256 special tokens,
  BOS added as Meta's own Hugging Face exports add it), which any transformers reads with no other
  package, and Meta's file kept as ``original/tokenizer.model``; without transformers, Meta's file
  as ``tokenizer.model`` and a ``tokenizer_config.json`` naming every special token in
  ``added_tokens_decoder``, which transformers 5 converts at load time (it needs `tiktoken`).

Every ``tokenizer_config.json`` written names ``tokenizer_class`` ``PreTrainedTokenizerFast``: the
tokenizer is then read as the files define it. transformers 5's ``LlamaTokenizer`` (the class a
``llama`` config otherwise gets) rebuilds the pipeline from the vocabulary with its own
pre-tokenizer, which drops SentencePiece's dummy prefix before a leading space and splits a
byte-level ``tokenizer.json`` differently. A SentencePiece export also sets ``legacy: true``, the
mode that encodes as SentencePiece itself (what lima_jax trained with). The user's special tokens
(``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``) are kept as they are: ``eos_token``
stays the tokenizer's EOS even when the end of turn differs; the end of turn is named first in the
model's ``eos_token_id`` instead (`hf_token_ids`), so that ``generate`` stops where lima_jax stops.

A NEW end of turn (``tok.eot_is_new``) is registered as the special token ``<EOT>`` with the id
``tok.eot_id`` (the tokenizer's size); a reused one (``<|im_end|>``, ``<|eot_id|>``) is a token the
files already hold, and they are written unchanged. Reading an export back into lima_jax: its
tokenizer already holds ``<EOT>`` (a ``tokenizer.json`` counts it in its size), so use
``eot="<EOT>"`` there, and ``hf-to-lima`` without ``--add-eot``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile

from lima_jax.data.errors import DataError
from lima_jax.data.tokenizer import (
    CHAT_TEMPLATE_FILE,
    EOT_PIECE,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    TOKENIZER_MODEL,
    Tokenizer,
)
from lima_jax.data.tokenizer_backends import LLAMA3_PATTERN, SENTENCEPIECE, TIKTOKEN

log = logging.getLogger(__name__)

# The class every exported tokenizer_config.json names (the files define the tokenizer; see above).
HF_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
ORIGINAL_TIKTOKEN = f"original/{TOKENIZER_MODEL}"  # where Meta's Hugging Face exports keep their file
# Every tokenizer file an export may hold: those of an earlier export are removed before writing.
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_MODEL, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE,
                   ORIGINAL_TIKTOKEN, "added_tokens.json")


def _special_entry(content: str) -> dict:
    """A special added token as tokenizer.json's ``added_tokens`` and ``added_tokens_decoder`` write it."""
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def export_eos_token_ids(tok: Tokenizer, *, with_eot: bool = True) -> list[int]:
    """The ids an export's ``eos_token_id`` names, the end of turn first: ``[eot, eos]``, or one id
    when they are the same (or with_eot=False: a model without an end-of-turn token)."""
    eos = [tok.eot_id] if with_eot else []
    if tok.eos_id not in eos:
        eos.append(tok.eos_id)
    return eos


def hf_token_ids(tok: Tokenizer, *, with_eot: bool = True) -> dict:
    """The ids config.json and generation_config.json name: ``bos_token_id``, ``pad_token_id``
    (the id lima_jax pads with), ``unk_token_id`` (when the tokenizer has one) and ``eos_token_id``
    (`export_eos_token_ids`: a list ``[eot, eos]`` when they differ, so that ``generate`` stops at
    either, else the one id)."""
    eos = export_eos_token_ids(tok, with_eot=with_eot)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
           "pad_token_id": tok.pad_id}
    if tok.unk_id is not None:
        ids["unk_token_id"] = tok.unk_id
    return ids


def _dump(value) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _token_config(tok: Tokenizer, *, name_specials: bool, add_bos: bool) -> dict:
    """tokenizer_config.json: the user's keys as they are, the class that reads the files as they
    are, and, for a tokenizer that came without them (SentencePiece, Meta's tiktoken file), its
    special tokens named from the model and whether encoding adds BOS (as Llama's do)."""
    config = json.loads(tok.files[TOKENIZER_CONFIG]) if TOKENIZER_CONFIG in tok.files else {}
    config["tokenizer_class"] = HF_TOKENIZER_CLASS
    if name_specials:
        for key, token_id in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("unk_token", tok.unk_id),
                              ("pad_token", tok.pad_id)):
            if token_id is not None and not config.get(key):  # special_tokens_map.json's, else the model's
                config[key] = tok.config.get(key) or tok.id_to_piece(token_id)
    if add_bos:  # no tokenizer.json post-processor adds it
        config.setdefault("add_bos_token", tok.bos_id is not None)
        config.setdefault("add_eos_token", False)
    return config


def _added_tokens_decoder(config: dict, added: dict[int, str]) -> dict:
    """``added_tokens_decoder`` with every token of ``added`` (id -> text) registered as special,
    where it names none of its own for that id."""
    decoder = dict(config.get("added_tokens_decoder") or {})
    for token_id, content in sorted(added.items()):
        decoder.setdefault(str(token_id), _special_entry(content))
    return decoder


def _tokenizer_json_with_eot(tok: Tokenizer) -> bytes:
    raw = json.loads(tok.files[TOKENIZER_JSON])
    raw.setdefault("added_tokens", []).append({"id": tok.eot_id, **_special_entry(EOT_PIECE)})
    data = _dump(raw)
    from tokenizers import Tokenizer as HFTokenizer

    if HFTokenizer.from_str(data.decode("utf-8")).token_to_id(EOT_PIECE) != tok.eot_id:
        raise DataError(tok.path or "tokenizer", f"tokenizers gives {EOT_PIECE} another id than {tok.eot_id}",
                        "", "tokenizer")
    return data


def _tiktoken_converter():
    """transformers' TikTokenConverter, or None when transformers is not importable here."""
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        return None
    return TikTokenConverter


def _tiktoken_json(tok: Tokenizer, converter, specials: list[str]) -> bytes:
    """Meta's tiktoken file as tokenizer.json (transformers' converter; BOS added as Meta's exports do)."""
    from tokenizers import processors

    with tempfile.TemporaryDirectory() as tmp:  # the converter reads a path (tiktoken's loader)
        path = pathlib.Path(tmp) / TOKENIZER_MODEL
        path.write_bytes(tok.files[TOKENIZER_MODEL])
        converted = converter(str(path), pattern=LLAMA3_PATTERN, extra_special_tokens=specials).converted()
    if tok.bos_id is not None:
        bos = tok.id_to_piece(tok.bos_id)
        converted.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, tok.bos_id)]),
        ])
    return converted.to_str().encode("utf-8")


def export_files(tok: Tokenizer, *, with_eot: bool = True) -> dict[str, bytes]:
    """The tokenizer files of an export, {name: bytes} (names relative to the model directory);
    nothing is written. with_eot=False: the model has no end-of-turn token, so a new EOT is not
    registered (a reused one is a token of the files anyway)."""
    # A vocabulary holding <EOT> already never has a new one (`Tokenizer` reuses it).
    new_eot = with_eot and tok.eot_is_new
    eot = {tok.eot_id: EOT_PIECE} if new_eot else {}
    files = {name: data for name, data in tok.files.items() if name in (SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE)}
    specials = {i: text for text, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])}
    if tok.kind == SENTENCEPIECE:
        files[TOKENIZER_MODEL] = tok.files[TOKENIZER_MODEL]
        config = _token_config(tok, name_specials=True, add_bos=True)
        config["legacy"] = True
        config["added_tokens_decoder"] = _added_tokens_decoder(config, {**specials, **eot})
    elif tok.kind == TIKTOKEN:
        converter = _tiktoken_converter()
        if converter is not None:
            files[TOKENIZER_JSON] = _tiktoken_json(tok, converter, [*specials.values(), *eot.values()])
            files[ORIGINAL_TIKTOKEN] = tok.files[TOKENIZER_MODEL]
        else:
            files[TOKENIZER_MODEL] = tok.files[TOKENIZER_MODEL]
        config = _token_config(tok, name_specials=True, add_bos=converter is None)
        config["added_tokens_decoder"] = _added_tokens_decoder(config, {**specials, **eot})
    else:
        files[TOKENIZER_JSON] = _tokenizer_json_with_eot(tok) if new_eot else tok.files[TOKENIZER_JSON]
        config = _token_config(tok, name_specials=False, add_bos=False)
        if new_eot:
            added = {t["id"]: t["content"] for t in json.loads(tok.files[TOKENIZER_JSON]).get("added_tokens", [])
                     if t.get("special")}
            config["added_tokens_decoder"] = _added_tokens_decoder(config, {**added, **eot})
    files[TOKENIZER_CONFIG] = _dump(config)
    return files


def remove_tokenizer_files(out_dir: str | os.PathLike) -> None:
    """Removes the tokenizer files an earlier export left in ``out_dir`` (they belong to another model)."""
    out_dir = pathlib.Path(out_dir)
    for name in TOKENIZER_FILES:
        (out_dir / name).unlink(missing_ok=True)
    original = out_dir / pathlib.Path(ORIGINAL_TIKTOKEN).parent
    if original.is_dir() and not any(original.iterdir()):
        original.rmdir()


def export_tokenizer(tok: Tokenizer, out_dir: str | os.PathLike, *, with_eot: bool = True,
                     files: dict[str, bytes] | None = None) -> list[pathlib.Path]:
    """Writes ``tok`` into the model directory ``out_dir`` (`export_files`), replacing the tokenizer
    files an earlier export left there; returns the paths written. files: `export_files`' result
    when the caller prepared it already (to stop before writing the weights should it fail)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if files is None:
        files = export_files(tok, with_eot=with_eot)
    remove_tokenizer_files(out_dir)
    written = []
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    log.info("wrote the %s tokenizer (%s) to %s%s", tok.kind, ", ".join(sorted(files)), out_dir,
             f"; {EOT_PIECE} = {tok.eot_id}" if with_eot and tok.eot_is_new else "")
    return written
