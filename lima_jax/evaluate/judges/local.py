"""A judge that is a lima_jax model (a checkpoint or a Hugging Face directory), answering greedily
through `lima_jax.decode.answer`. Requests run one at a time (one model, one compiled decoder); a
prompt that leaves no room for the reply in the model's context is a JudgeError, counted by the
caller."""

from __future__ import annotations

import pathlib
import threading

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions


class LocalJudge(Judge):
    concurrency = 1

    def __init__(self, path: str, *, options: JudgeOptions, template: str = "lima"):
        from lima_jax.decode import Answerer
        from lima_jax.decode.answer import EOT_TEMPLATES
        from lima_jax.decode.load import LoadError, load_any

        try:
            model, tokenizer = load_any(path, tokenizer=options.tokenizer,
                                        add_eot=template in EOT_TEMPLATES)
        except (LoadError, FileNotFoundError) as e:
            raise JudgeError(f"--judge local:{path}: {e}") from e
        self.answerer = Answerer(model, tokenizer, template)
        self.max_tokens = options.max_tokens
        self.judge_id = f"local:{pathlib.Path(path).resolve()}#{template}#{options.max_tokens}"
        self._lock = threading.Lock()

    def chat(self, messages: list[dict]) -> str:
        from lima_jax.decode import SamplingConfig

        # The model was tuned on single user turns: the judging system text leads the user turn.
        ids = self.answerer.encode("\n\n".join(m["content"] for m in messages))
        room = self.answerer.room([ids])
        if room < 1:
            raise JudgeError(f"judge {self.judge_id}: the request has {len(ids)} tokens, more than "
                             f"the model's context of {self.answerer.max_seq_len}")
        with self._lock:
            (answer,) = self.answerer.answer([ids], sampling=SamplingConfig.greedy_config(),
                                             max_new_tokens=min(self.max_tokens, room))
        return answer.text
