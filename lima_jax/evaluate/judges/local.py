"""A judge that is a lima_jax model (a checkpoint or a Hugging Face directory), decoding greedily
through `lima_jax.decode`. Requests run one at a time (one model, one compiled decoder); a prompt
that leaves no room for the reply in the model's context is a JudgeError, counted by the caller."""

from __future__ import annotations

import pathlib
import threading

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions


class LocalJudge(Judge):
    concurrency = 1

    def __init__(self, path: str, *, options: JudgeOptions, template: str = "lima"):
        from lima_jax.decode.load import LoadError, load_for_decoding

        where = pathlib.Path(path)
        hf = (where / "config.json").is_file()
        try:
            self.model, self.tokenizer = load_for_decoding(
                ckpt=None if hf else path, hf=path if hf else None, tokenizer=options.tokenizer,
                add_eot=template in ("lima", "plain"))
        except (LoadError, FileNotFoundError) as e:
            raise JudgeError(f"--judge local:{path}: {e}") from e
        from lima_jax.decode import Generator

        self.generator = Generator(self.model)
        self.template = template
        self.max_tokens = options.max_tokens
        self.judge_id = f"local:{where.resolve()}#{template}#{options.max_tokens}"
        self.stop_ids = [self.tokenizer.eos_id]
        if self.model.config.eot_token_id is not None:
            self.stop_ids.append(self.model.config.eot_token_id)
        self._lock = threading.Lock()

    def chat(self, messages: list[dict]) -> str:
        from lima_jax.decode import SamplingConfig, encode_for_template

        # The model was tuned on single user turns: the judging system text leads the user turn.
        text = "\n\n".join(m["content"] for m in messages)
        ids = encode_for_template(text, self.tokenizer, self.template)
        room = self.model.config.max_seq_len - len(ids)
        if room < 1:
            raise JudgeError(f"judge {self.judge_id}: the request has {len(ids)} tokens, more than "
                             f"the model's context of {self.model.config.max_seq_len}")
        with self._lock:
            result = self.generator.generate([ids], sampling=SamplingConfig.greedy_config(),
                                             max_new_tokens=min(self.max_tokens, room),
                                             stop_ids=self.stop_ids)[0]
        return self.tokenizer.decode(result.tokens)
