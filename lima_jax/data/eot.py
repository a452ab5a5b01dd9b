"""The end-of-turn policy of a run (``config.data.eot``) applied to its tokenizer.

- ``new``: LIMA's own EOT, a new id after the tokenizer's vocabulary (the model gains a row,
  initialised to the mean row; `lima_jax.model.hf.append_vocab_rows`).
- the text of a token already in the vocabulary (``<|eot_id|>``, ``<|im_end|>``, ``</s>``): that
  token ends every turn and stops decoding; no row is added, so the model keeps its shape and an
  export keeps the vocabulary of the checkpoint it came from.
- ``auto`` (the default): ``new`` for the ``lima`` and ``plain`` templates (the paper), and the
  chat template's own end of turn for ``chat``; a ``chat`` run cannot use another one, because
  the template writes its own.
"""

from __future__ import annotations

from lima_jax.data.chat_template import CHAT, chat_end_of_turn
from lima_jax.data.tokenizer import NEW_EOT, Tokenizer

AUTO = "auto"


def eot_for(policy: str, template: str, tokenizer: Tokenizer) -> str:
    """The end-of-turn the run uses: ``new`` or a token's text (see the module docstring)."""
    if template != CHAT:
        return NEW_EOT if policy in (AUTO, "") else policy
    return chat_end_of_turn(tokenizer, policy)


def apply_eot_policy(tokenizer: Tokenizer, policy: str, template: str) -> Tokenizer:
    """``tokenizer`` with the run's end of turn (`eot_for`)."""
    eot = eot_for(policy, template, tokenizer)
    return tokenizer if eot == tokenizer.eot else tokenizer.with_eot(eot)
