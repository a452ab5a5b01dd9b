"""Prompt -> answer, written once: every place lima_jax answers a prompt goes through here.

An answer is the prompt laid out for the template (`encode_for_template`), continued by the
KV-cache decoder until a stop id, ``max_new_tokens`` or the end of the model's context, decoded
to text and cut at the template's stop strings (URIAL's ``# Query:``). `Answerer` does that for
a batch of prompts (the training run's held-out score, the notebooks, the local judge);
`answer_file` answers every prompt of a file into a JSON Lines output and resumes one that
exists, refusing a file it did not write (``python -m lima_jax.decode`` is a thin shell around
it; ablations and epoch selection call it directly).

The stop ids are chosen in one place, `stop_names`: EOS always, and the id the template writes
at the end of each turn (`lima_jax.data.templates.end_of_turn_id`: EOT for ``lima`` and
``plain``, and for ``urial``; EOS for ``llama2`` and ``raw``; for ``chat``, the chat template's
own end-of-turn token, ``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for ChatML, ``</s>`` for
Llama 2, which `tokenizer_for_template` makes the tokenizer's EOT when it was ``new``). That id
is the tokenizer's, the one that encoded the prompt, so the end of turn in a prompt and the stop
that ends its answer are the same id by construction. ``chat`` prompts are the tokenizer's chat
template rendered with ``add_generation_prompt=True``, and a model decoded under it needs no EOT
row of its own (``add_eot`` is never asked for it). A model without an EOT row (a base model read with ``--hf``
and no ``add_eot``) cannot produce it (padding columns are never sampled), so its answers end at
EOS; a model that has EOT and is decoded under ``llama2`` or ``raw`` runs past it, as those
templates never end a turn with it (a caller that wants it passes it in ``extra``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence

from lima_jax.data.templates import CHAT, end_of_turn_id
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.decode.generate import Generation, Generator
from lima_jax.decode.prompts import Prompt, cut_at_stop_strings, encode_for_template, read_prompts
from lima_jax.decode.sampling import SamplingConfig
from lima_jax.errors import InputError
from lima_jax.jsonl import JsonlAppender, make_folder_for, read_jsonl, torn_tail

# Templates whose prompts end each turn with EOT: a model needs an EOT row to read them. (``chat``
# ends turns with its template's own token, already in the vocabulary.)
EOT_TEMPLATES = ("lima", "plain")


def tokenizer_for_template(tokenizer: Tokenizer, template: str) -> Tokenizer:
    """The tokenizer decoding under `template` uses: for ``chat`` one whose EOT is ``new`` is
    switched to the chat template's own end of turn (`lima_jax.data.chat_template`); any other
    is returned as it is."""
    if template == CHAT and tokenizer.eot_is_new:
        from lima_jax.data.chat_template import chat_tokenizer

        return chat_tokenizer(tokenizer)
    return tokenizer


def stop_names(tokenizer: Tokenizer, template: str,
               extra: Mapping[int, str] | None = None) -> dict[int, str]:
    """{stop id: its name in `stop_reason`}: EOS ('eos') and the template's end of turn ('eot'
    when it is not EOS), then `extra` (e.g. {BOS: 'bos'} to stop a base model that starts a new
    document). See the module docstring for why the tokenizer's ids."""
    names = {tokenizer.eos_id: "eos"}
    end_of_turn = end_of_turn_id(template, tokenizer)  # URIAL, not a training template: EOT
    if end_of_turn != tokenizer.eos_id:
        names[end_of_turn] = "eot"
    names.update(extra or {})
    return names


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer. text: the decoded new tokens, cut at the template's stop strings; tokens:
    the new ids, without the stop id; stop_reason: 'eot', 'eos' (or an extra stop's name),
    'stop_string' (cut at a URIAL stop string), 'length' (max_new_tokens) or 'context' (the
    model's max_seq_len); stop_id: the stop id produced, if any."""

    text: str
    tokens: list[int]
    stop_reason: str
    stop_id: int | None = None


class Answerer:
    """Answers prompts under one template with one model; the compiled decoder is reused from
    call to call. mesh: shards the model over devices (see `Generator`); extra_stops: more
    stop ids and their names (see `stop_names`). Under ``chat`` a tokenizer whose EOT is ``new``
    is switched to the chat template's end of turn (`tokenizer_for_template`)."""

    def __init__(self, model, tokenizer: Tokenizer, template: str = "lima", *, mesh=None,
                 extra_stops: Mapping[int, str] | None = None):
        self.tokenizer = tokenizer_for_template(tokenizer, template)
        self.template = template
        self.stop_names = stop_names(self.tokenizer, template, extra_stops)
        self.generator = Generator(model, mesh=mesh)

    @property
    def max_seq_len(self) -> int:
        return self.generator.config.max_seq_len

    def encode(self, prompt: str) -> list[int]:
        """The ids (BOS first) the model continues to answer `prompt` under the template."""
        return encode_for_template(prompt, self.tokenizer, self.template)

    def room(self, prompts: Sequence[Sequence[int]]) -> int:
        """How many new tokens the longest prompt leaves room for in the model's context
        (less than 1: none)."""
        return self.max_seq_len - max(len(p) for p in prompts)

    def answer(self, prompts: Sequence[Sequence[int]], *, sampling: SamplingConfig | None = None,
               max_new_tokens: int = 2048, seed: int = 0, prompt_ids: Sequence[str] | None = None,
               samples: Sequence[int] | None = None) -> list[Answer]:
        """Answers each encoded prompt (see `Generator.generate` for sampling, seed, prompt_ids
        and samples: a row's answer depends on (seed, its id, its sample) only)."""
        generations = self.generator.generate(
            prompts, sampling=sampling, max_new_tokens=max_new_tokens, stop_ids=list(self.stop_names),
            seed=seed, prompt_ids=prompt_ids, samples=samples, stop_names=self.stop_names)
        return [self._answer(g) for g in generations]

    def answer_texts(self, texts: Sequence[str], **kwargs) -> list[Answer]:
        """`answer` for prompt texts (each a single user turn under the template)."""
        return self.answer([self.encode(t) for t in texts], **kwargs)

    def _answer(self, generation: Generation) -> Answer:
        text, cut = cut_at_stop_strings(self.tokenizer.decode(generation.tokens), self.template)
        return Answer(text, generation.tokens, "stop_string" if cut else generation.stop_reason,
                      generation.stop_id)


# --------------------------------------------------------------------------- prompt files


@dataclasses.dataclass(frozen=True)
class AnswerFileResult:
    """What `answer_file` did. kept: answers already in the output (a resumed run); written:
    answers it added, the empty ones of too-long prompts included; too_long: ids of the prompts
    that leave no room to answer within the model's context."""

    out: pathlib.Path
    kept: int
    written: int
    too_long: tuple[str, ...] = ()


# Every line decode writes starts so (`_answer_record`'s first key): how a torn last line of its
# own is told from the end of some other file.
ANSWER_LINE_START = b'{"id": '
NOT_DECODE_OUTPUT = "OUT exists and is not decode output; it is left as it is: choose another --out"


def done_rows(out: str | pathlib.Path) -> set[tuple[str, int]]:
    """(id, sample) pairs already in OUT, an answer file of `answer_file`'s; reading changes nothing.

    A last line an interrupted run cut short is passed over (`answer_file` sets it aside before
    appending). Any other line that is not an answer means OUT is some other file: an InputError
    naming its first such ``file:line``, so a resumed run never drops or rewrites it."""
    out = pathlib.Path(out)
    if out.is_dir():
        raise InputError("is a directory; --out names the JSON Lines file answers go to", where=str(out))
    if not out.exists():
        return set()
    _check_torn_tail(out)
    try:
        return {_answer_key(record, where) for where, record in read_jsonl(out, skip_torn_tail=True)}
    except InputError as err:
        if err.hint:
            raise
        raise InputError(err.what, where=err.where, hint=NOT_DECODE_OUTPUT) from None


def _check_torn_tail(out: pathlib.Path) -> None:
    """Refuses a cut-short last line that is not the start of an answer line."""
    torn = torn_tail(out)
    if torn is None:
        return
    line, fragment = torn
    if not (fragment.startswith(ANSWER_LINE_START) or ANSWER_LINE_START.startswith(fragment)):
        raise InputError("not an answer line (nor the start of one cut short)", where=f"{out}:{line}",
                         hint=NOT_DECODE_OUTPUT)


def _answer_key(record: dict, where: str) -> tuple[str, int]:
    """(id, sample) of one answer line; an InputError for a line decode did not write."""
    try:
        if isinstance(record["text"], str):
            return str(record["id"]), int(record["sample"])
    except (KeyError, TypeError, ValueError):
        pass
    raise InputError(f"not an answer line (decode writes 'id', 'sample' and 'text'; this line has "
                     f"{sorted(record)[:8]})", where=where, hint=NOT_DECODE_OUTPUT)


def _read_prompts(path: str | pathlib.Path, limit: int) -> list[Prompt]:
    prompts = read_prompts(path)
    return prompts[:limit] if limit else prompts


def _pending(prompts: Sequence[Prompt], done: set[tuple[str, int]],
             num_samples: int) -> list[tuple[Prompt, int]]:
    return [(p, s) for p in prompts for s in range(num_samples) if (p.id, s) not in done]


def missing_answers(prompts: str | pathlib.Path, out: str | pathlib.Path, *, num_samples: int = 1,
                    limit: int = 0) -> list[tuple[Prompt, int]]:
    """The (prompt, sample) answers `answer_file` would still write into `out` (none: done)."""
    return _pending(_read_prompts(prompts, limit), done_rows(out), num_samples)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")


def _answer_record(prompt: Prompt, sample: int, answer: Answer | None) -> dict:
    """One output line; `answer` None: the prompt left no room to answer."""
    if answer is None:
        return {"id": prompt.id, "sample": sample, "prompt": prompt.text, "text": "",
                "tokens": [], "num_tokens": 0, "stop_reason": "prompt_too_long"}
    return {"id": prompt.id, "sample": sample, "prompt": prompt.text, "text": answer.text,
            "tokens": answer.tokens, "num_tokens": len(answer.tokens), "stop_reason": answer.stop_reason}


def answer_file(prompts: str | pathlib.Path, out: str | pathlib.Path, *, ckpt: str | None = None,
                hf: str | None = None, tokenizer: str | None = None, dtype: str | None = None,
                mesh=None, template: str = "lima", sampling: SamplingConfig | None = None,
                max_new_tokens: int = 2048, num_samples: int = 1, batch_size: int = 8, seed: int = 0,
                limit: int = 0, progress: bool = False) -> AnswerFileResult:
    """Answers every prompt of the JSON Lines file `prompts` (`num_samples` each; only the first
    `limit` prompts when set) with the model at `ckpt` or `hf` (`load_for_decoding`), appending
    one line per answer to `out` in ``python -m lima_jax.decode``'s format.

    An existing `out` is resumed: its (id, sample) answers are kept and not redone, and when
    none is missing the model is not even loaded. A last line an interrupted run cut short is
    set aside (`lima_jax.jsonl.set_aside_torn_tail`); an `out` that holds anything else than
    answers raises an InputError naming its ``file:line`` and is left untouched. Rows are
    batched longest prompt first; each answer depends on (seed, id, sample) only, not on its
    batch. `sampling` defaults to LIMA's.
    """
    _check_counts(num_samples=num_samples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    sampling = SamplingConfig() if sampling is None else sampling
    out = pathlib.Path(out)
    prompt_list = _read_prompts(prompts, limit)
    make_folder_for(out)
    done = done_rows(out)  # first: an OUT that is not decode output stops the run untouched
    rows = _pending(prompt_list, done, num_samples)
    if not rows:
        # Opened all the same: OUT is created, or a last line an interrupted run cut short is set
        # aside, so the file reads back whole.
        JsonlAppender(out).close()
        if done:
            print(f"decode: resuming {out}: {len(done)} answers there, 0 to go")
        return AnswerFileResult(out, len(done), 0)
    too_long = _answer_pending(prompt_list, rows, out, ckpt=ckpt, hf=hf, tokenizer=tokenizer,
                               dtype=dtype, mesh=mesh, template=template, sampling=sampling,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                               progress=progress, kept=len(done))
    return AnswerFileResult(out, len(done), len(rows), tuple(sorted(too_long)))


def _answer_pending(prompt_list: Sequence[Prompt], rows: list[tuple[Prompt, int]], out: pathlib.Path,
                    *, ckpt, hf, tokenizer, dtype, mesh, template, sampling, max_new_tokens,
                    batch_size, seed, progress, kept: int) -> set[str]:
    """Loads the model and appends the answers of `rows` to `out` (a torn last line set aside
    first, see `JsonlAppender`); returns the ids of the too-long prompts."""
    from lima_jax.decode.load import load_for_decoding  # heavy imports only when there is work

    model, tok = load_for_decoding(ckpt=ckpt, hf=hf, tokenizer=tokenizer, dtype=dtype,
                                   add_eot=template in EOT_TEMPLATES, mesh=mesh)
    tok = tokenizer_for_template(tok, template)  # chat: stop at the template's own end of turn
    if model.config.eot_token_id is None and template in EOT_TEMPLATES:
        print(f"decode: warning: the model has no EOT token; template {template} answers "
              "stop only at EOS or --max-new-tokens", file=sys.stderr)
    answerer = Answerer(model, tok, template, mesh=mesh)
    encoded = {p.id: answerer.encode(p.text) for p in prompt_list}
    too_long = _too_long(encoded, answerer.max_seq_len)
    with JsonlAppender(out) as writer:
        # A prompt that leaves no room to answer gets an empty answer, so none goes missing.
        for prompt, sample in rows:
            if prompt.id in too_long:
                writer.write(_answer_record(prompt, sample, None))
        _answer_rows(answerer, [(p, s) for p, s in rows if p.id not in too_long], encoded, writer,
                     sampling=sampling, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     seed=seed, progress=progress, kept=kept, out=out)
    return too_long


def _too_long(encoded: Mapping[str, list[int]], max_seq_len: int) -> set[str]:
    """Ids of the prompts with no room to answer within the context, counted on stderr."""
    too_long = {pid for pid, ids in encoded.items() if len(ids) >= max_seq_len}
    if too_long:
        print(f"decode: {len(too_long)} prompt(s) have max_seq_len={max_seq_len} tokens or "
              f"more and get an empty answer (stop_reason prompt_too_long), e.g. "
              f"{sorted(too_long)[:3]}", file=sys.stderr)
    return too_long


def _answer_rows(answerer: Answerer, rows, encoded, writer: JsonlAppender, *, sampling, max_new_tokens,
                 batch_size, seed, progress, kept: int, out: pathlib.Path) -> None:
    from tqdm import tqdm

    rows = sorted(rows, key=lambda row: -len(encoded[row[0].id]))  # similar lengths share a batch
    bar = tqdm(total=len(rows), unit="sample", disable=not progress, file=sys.stderr, initial=0,
               desc="decode")
    if kept:
        bar.write(f"decode: resuming {out}: {kept} answers there, {len(rows)} to go")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        # Full batches only (one compile per prompt bucket): repeat the last row as filler.
        filled = batch + [batch[-1]] * (batch_size - len(batch))
        answers = answerer.answer([encoded[p.id] for p, _ in filled], sampling=sampling,
                                  max_new_tokens=max_new_tokens, seed=seed,
                                  prompt_ids=[p.id for p, _ in filled], samples=[s for _, s in filled])
        for (prompt, sample), answer in zip(batch, answers):
            writer.write(_answer_record(prompt, sample, answer))
        new_tokens = sum(len(a.tokens) for a in answers[: len(batch)])
        bar.set_postfix(tok_s=f"{new_tokens / max(answerer.generator.timing.decode_s, 1e-9):.0f}")
        bar.update(len(batch))
    bar.close()
