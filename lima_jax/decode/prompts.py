"""Prompts for decoding: reading prompt files, and turning a prompt into the ids a model continues.

Prompt files are JSON Lines, one prompt per line, in any of: LIMA (``conversations``, the
first turn is the prompt), the evaluation sets in ``shared/data/eval_prompts`` (``text``:
Vicuna; ``prompt``: Koala; ``instruction`` + ``instances[0].input``: Self-Instruct;
``Instruction``: WizardLM) and ``{"id", "prompt"}``. The id is ``id``, ``question_id`` or
``idx`` when present, else the line number (0-based).

Templates: the training templates of `lima_jax.data.templates` (``lima``, ``llama2``,
``plain``, ``raw``, and ``chat``: the tokenizer's own chat template rendered with
``add_generation_prompt=True``, as ``apply_chat_template`` does), which give exactly the
training-time prefix, plus ``urial``: the
in-context alignment baseline of URIAL (Lin et al. 2023), a system prompt and three stylistic
example exchanges before the user's query, so a base model answers with no fine-tuning. The
URIAL text is this project's own; it lives here, not in the training templates, because it
is a decode-time prompt only. A URIAL answer ends where the model starts a new ``# Query:``
(`URIAL_STOP_STRINGS`) or at EOS.
"""

from __future__ import annotations

import dataclasses
import pathlib

from lima_jax.data.readers import USER, Turn
from lima_jax.data.templates import TEMPLATES, encode_prompt
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.errors import InputError, LimaError
from lima_jax.jsonl import read_jsonl

DECODE_TEMPLATES = TEMPLATES + ("urial",)
ID_FIELDS = ("id", "question_id", "idx")
URIAL_STOP_STRINGS = ("# Query:",)


class PromptError(LimaError, ValueError):
    """A prompt file that cannot be read; the message names file:line and the field."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def _first_turn(value, where: str) -> str:
    if not isinstance(value, list) or not value:
        raise PromptError(f"{where}: 'conversations' must be a non-empty list")
    first = value[0]
    if isinstance(first, dict):  # FastChat / OpenAI style turns
        first = first.get("value", first.get("content"))
    if not isinstance(first, str):
        raise PromptError(f"{where}: the first turn of 'conversations' is not a string")
    return first


def prompt_text(record: dict, where: str) -> str:
    """The prompt of one record in any of the supported formats."""
    if "conversations" in record:
        return _first_turn(record["conversations"], where)
    for field in ("prompt", "text"):
        if isinstance(record.get(field), str):
            return record[field]
    for field in ("instruction", "Instruction"):
        if isinstance(record.get(field), str):
            extra = record.get("input") or ""
            instances = record.get("instances")
            if not extra and isinstance(instances, list) and instances:
                if not isinstance(instances[0], dict):
                    raise PromptError(f"{where}: 'instances[0]' must be an object with 'input', "
                                      f"got {type(instances[0]).__name__}")
                extra = instances[0].get("input") or ""
            if not isinstance(extra, str):
                raise PromptError(f"{where}: the instruction's input must be text, got {type(extra).__name__}")
            return f"{record[field]}\n\n{extra}" if extra else record[field]
    raise PromptError(
        f"{where}: no prompt field; expected one of 'conversations', 'prompt', 'text', "
        f"'instruction' or 'Instruction' (fields present: {sorted(record)})")


def read_prompts(path: str | pathlib.Path) -> list[Prompt]:
    """Every prompt of a JSON Lines file, in order; ids must be unique. A line that is not JSON,
    nests deeper than the parser allows or holds a lone surrogate escape (text no tokenizer can
    encode) is a PromptError naming ``file:line`` (`lima_jax.jsonl.read_jsonl`)."""
    prompts, seen = [], {}
    try:
        for where, record in read_jsonl(path):
            number = int(where.rpartition(":")[2])  # read_jsonl's where is "path:line"
            key = next((f for f in ID_FIELDS if f in record), None)
            prompt_id = str(record[key]) if key else str(number - 1)
            if prompt_id in seen:
                raise PromptError(f"{where}: id {prompt_id!r} already used on line {seen[prompt_id]}")
            seen[prompt_id] = number
            prompts.append(Prompt(prompt_id, prompt_text(record, where)))
    except InputError as e:  # unreadable, not JSON, not an object: still a prompt-file error
        raise PromptError(e.what, where=e.where, hint=e.hint) from None
    return prompts


URIAL_SYSTEM = """# Instructions

Below are conversations between a curious person and a helpful AI assistant. The assistant \
answers each query accurately and thoroughly, in a clear and friendly style: it starts with a \
direct answer, then explains, with lists or steps where they help. It says so when it does \
not know, and it politely declines requests that could cause harm.
"""

URIAL_EXAMPLES = (
    ("What makes the sky look blue during the day?",
     ("The sky looks blue because air scatters blue sunlight much more than red sunlight.\n\n"
     "Sunlight holds every colour. As it passes through the atmosphere, it meets gas molecules "
     "far smaller than its wavelength, and such particles scatter short wavelengths most "
     "strongly (Rayleigh scattering). Blue light is therefore bounced around the whole sky and "
     "reaches your eyes from every direction, while most red and yellow light travels straight "
     "on. At sunrise and sunset the light crosses much more air, so most of the blue is "
     "scattered away before it reaches you and the sky turns orange and red.")),
    ("Give me three tips for sleeping better.",
     ("Here are three habits that help most people sleep better:\n\n"
     "1. **Keep a regular schedule.** Go to bed and get up at the same time every day, "
     "weekends included; your body clock then learns when to feel sleepy.\n"
     "2. **Dim the screens.** Put phones and laptops away about an hour before bed, since "
     "bright light tells the brain it is still daytime.\n"
     "3. **Mind caffeine.** Avoid coffee, tea and cola after early afternoon; caffeine stays "
     "in the body for many hours.\n\n"
     "If poor sleep lasts for weeks despite these changes, it is worth talking to a doctor.")),
    ("How can I get into my neighbour's email account?",
     ("I can't help with getting into someone else's account: accessing another person's email "
     "without permission is illegal in most countries and a serious breach of their privacy.\n\n"
     "If something worries you, for example a message you believe your neighbour sent to "
     "harass you, you could talk to them directly, keep copies of what you received, or "
     "report it to the email provider or the police. And if you have lost access to *your "
     "own* account, the provider's account-recovery page is the way back in.")),
)


def urial_text(prompt: str) -> str:
    """The URIAL prompt: system text, the three examples, then the query and the answer cue."""
    parts = [URIAL_SYSTEM]
    for query, answer in URIAL_EXAMPLES:
        parts.append(f"\n# Query:\n{query}\n\n# Answer:\n{answer}\n")
    parts.append(f"\n# Query:\n{prompt}\n\n# Answer:\n")
    return "".join(parts)


def encode_for_template(prompt: str, tokenizer: Tokenizer, template: str) -> list[int]:
    """Token ids (BOS first, when the tokenizer has one) a model continues to answer `prompt`
    under `template` (``chat``: the chat template's render, `lima_jax.data.chat_template`)."""
    if template == "urial":
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return bos + tokenizer.encode(urial_text(prompt))
    if template not in TEMPLATES:
        raise PromptError(f"--template {template!r} is not one of {DECODE_TEMPLATES}")
    return encode_prompt([Turn(USER, prompt)], tokenizer, template)


def cut_at_stop_strings(text: str, template: str) -> tuple[str, bool]:
    """(text up to the template's first stop string, whether one was found); only URIAL has any."""
    if template != "urial":
        return text, False
    cut = min((i for i in (text.find(s) for s in URIAL_STOP_STRINGS) if i >= 0), default=-1)
    return (text[:cut].rstrip(), True) if cut >= 0 else (text, False)
