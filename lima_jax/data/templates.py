"""Chat templates: a conversation to token ids plus the flag "this token is a trained target".

``lima`` (the default, the paper's): BOS, then every utterance followed by EOT.
``llama2``: Meta's Llama-2-chat format, ``<s>[INST] <<SYS>>..<</SYS>> user [/INST] answer </s>``,
  whose end of an assistant turn is EOS (as Meta trained it), not EOT.
``plain``: BOS, ``User: ...\\n\\nAssistant:`` cues, each answer followed by EOT.
``raw``: BOS + the text of every turn, for base-model continuation (no EOT).
``chat``: the tokenizer's own Jinja chat template, rendered as transformers' ``apply_chat_template``
  renders it, ending each assistant turn with the template's own end-of-turn token
  (`lima_jax.data.chat_template`); the run's EOT is that token (`lima_jax.data.eot`).

A tokenizer without BOS (``bos_id`` None, as many tokenizer.json files) gets none: the ids start with
the first turn's text.

Trained tokens (loss mask 1 on the target) are every assistant token and its end-of-turn token,
in every assistant turn of a multi-turn conversation; ``loss_on='all'`` trains every token.
Turns after the last assistant turn (a conversation that ends on a user turn, like LIMA train
line 1022) are unanswered prompts: chat templates drop them and count them.
Each piece of text is tokenized on its own so that a token never straddles a role boundary
(except under ``chat``, whose whole render is tokenized at once, as transformers tokenizes it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lima_jax.data.encoded import Encoded, answered_turns
from lima_jax.data.errors import DataError
from lima_jax.data.readers import ASSISTANT, SYSTEM, USER, Turn
from lima_jax.data.tokenizer import Tokenizer

TEMPLATES = ("lima", "llama2", "plain", "raw", "chat")
CHAT = "chat"
LOSS_ON = ("assistant", "all")

# A piece is (text to tokenize, or a special token id; is it part of an assistant turn).
Piece = tuple[str | int, bool]


def check_template(template: str, loss_on: str = "assistant") -> None:
    """Raises a DataError naming the config key when a template or loss_on value is unknown."""
    if template not in TEMPLATES:
        raise DataError("config.data.template", f"unknown template {template!r}",
                        f"choose one of {TEMPLATES}", "config")
    if loss_on not in LOSS_ON:
        raise DataError("config.data.loss_on", f"unknown value {loss_on!r}",
                        f"choose one of {LOSS_ON}", "config")


def end_of_turn_id(template: str, tokenizer: Tokenizer) -> int:
    """The id that ends an assistant turn under ``template`` (decoding stops on it). For ``chat``
    it is the tokenizer's EOT, which a chat run sets to the template's own end of turn
    (`lima_jax.data.chat_template.chat_tokenizer`)."""
    return tokenizer.eos_id if template in ("llama2", "raw") else tokenizer.eot_id


def _bos(tok: Tokenizer) -> list[Piece]:
    """BOS as a piece, or nothing for a tokenizer without one."""
    return [] if tok.bos_id is None else [(tok.bos_id, False)]


def _lima_pieces(turns: Sequence[Turn], tok: Tokenizer) -> list[Piece]:
    pieces: list[Piece] = _bos(tok)
    for turn in turns:
        is_assistant = turn.role == ASSISTANT
        pieces += [(turn.text, is_assistant), (tok.eot_id, is_assistant)]
    return pieces


def _llama2_pieces(turns: Sequence[Turn], tok: Tokenizer) -> list[Piece]:
    pieces: list[Piece] = []
    system = None
    for turn in turns:
        if turn.role == SYSTEM:
            system = turn.text.strip()
        elif turn.role == USER:
            text = turn.text.strip()
            if system is not None:  # Meta puts the system prompt inside the first [INST]
                text, system = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}", None
            pieces += _bos(tok) + [(f"[INST] {text} [/INST]", False)]
        else:
            if not pieces:
                pieces += _bos(tok)
            pieces += [(turn.text.strip(), True), (tok.eos_id, True)]
    return pieces


def _plain_pieces(turns: Sequence[Turn], tok: Tokenizer) -> list[Piece]:
    pieces: list[Piece] = _bos(tok)
    for turn in turns:
        if turn.role == SYSTEM:
            pieces.append((f"System: {turn.text}\n\n", False))
        elif turn.role == USER:
            pieces.append((f"User: {turn.text}\n\nAssistant:", False))
        else:
            pieces += [(turn.text, True), (tok.eot_id, True)]
    return pieces


def _raw_pieces(turns: Sequence[Turn], tok: Tokenizer) -> list[Piece]:
    return _bos(tok) + [(t.text, t.role == ASSISTANT) for t in turns]


_PIECES = {"lima": _lima_pieces, "llama2": _llama2_pieces, "plain": _plain_pieces, "raw": _raw_pieces}


def encode_conversations(
    conversations: Sequence[Sequence[Turn]],
    tokenizer: Tokenizer,
    template: str = "lima",
    loss_on: str = "assistant",
    num_threads: int = 1,
) -> list[Encoded]:
    """Encodes many conversations (lists of turns) with one batched SentencePiece call
    (``chat``: `lima_jax.data.chat_template.encode_chats`, which renders each conversation)."""
    check_template(template, loss_on)
    if template == CHAT:
        from lima_jax.data.chat_template import encode_chats  # it imports this module

        return encode_chats(conversations, tokenizer, loss_on)
    make_pieces = _PIECES[template]
    all_pieces, dropped = [], []
    for turns in conversations:
        kept, n_dropped = answered_turns(turns, template)
        all_pieces.append(make_pieces(kept, tokenizer) if kept else [])
        dropped.append(n_dropped)
    texts = [p for pieces in all_pieces for p, _ in pieces if isinstance(p, str)]
    encoded_texts = iter(tokenizer.encode_batch(texts, num_threads=num_threads))
    out = []
    for pieces, n_dropped in zip(all_pieces, dropped, strict=True):
        ids: list[int] = []
        trained: list[bool] = []
        for piece, is_assistant in pieces:
            piece_ids = next(encoded_texts) if isinstance(piece, str) else [piece]
            ids += piece_ids
            trained += [is_assistant] * len(piece_ids)
        ids_arr = np.asarray(ids, np.int32)
        trained_arr = np.asarray(trained, bool)
        response = int(trained_arr.sum())
        if loss_on == "all":
            trained_arr[:] = True
        out.append(Encoded(ids_arr, trained_arr, len(ids) - response, response, n_dropped))
    return out


def encode_prompt(turns: Sequence[Turn], tokenizer: Tokenizer, template: str = "lima") -> list[int]:
    """Token ids to feed a model for it to write the next assistant turn.

    ``turns`` should end on a user turn; the result ends where the assistant's text begins
    (after the user's EOT for ``lima``, after ``Assistant:`` for ``plain``, after ``[/INST]``
    for ``llama2``; ``chat``: the template's render with ``add_generation_prompt=True``), so
    generation continues exactly as training laid it out.
    """
    check_template(template)
    if template == CHAT:
        from lima_jax.data.chat_template import encode_chat_prompt  # it imports this module

        return encode_chat_prompt(turns, tokenizer)
    pieces = _PIECES[template](turns, tokenizer)
    ids: list[int] = []
    for piece, _ in pieces:
        ids += tokenizer.encode(piece) if isinstance(piece, str) else [piece]
    return ids
