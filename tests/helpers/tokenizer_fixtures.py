"""Tokenizer directories as Hugging Face checkpoints ship them, made in the test.

- `byte_bpe_dir`: a byte-level BPE trained with `tokenizers` (as GPT-2, SmolLM, Llama 3 are), with
  added special tokens, saved by transformers (tokenizer.json + tokenizer_config.json) with a chat
  template: ``chatml`` (SmolLM / Qwen style ``<|im_start|>role\\n...<|im_end|>\\n``, with a
  ``{% generation %}`` block) or ``llama2`` (``<s>[INST] ... [/INST] answer </s>``, with no
  generation block, so its trained spans are found by rendering prefixes).
- `llama3_json_dir`: Meta's Llama 3 tiktoken file from ../shared converted to tokenizer.json by
  transformers' own converter, with BOS/EOS and Meta-Llama-3-8B-Instruct's chat template.
"""

from __future__ import annotations

import pathlib

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta's Llama-2-chat layout as its Hugging Face template writes it (system folded into the first
# user turn); whitespace around the answer is stripped, as Meta's reference code does.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Write a haiku about the sea.\nWaves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    "How do I sort a list in Python? Use sorted(xs) or xs.sort(); both take key= and reverse=.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 -42 1e-5",
    "Ünïcödé: café, naïve, 東京, Москва, emoji 🙂 and tabs\tand\nnewlines.",
]


def byte_bpe_dir(out: str | pathlib.Path, template: str = "chatml", texts: list[str] | None = None,
                 vocab_size: int = 400) -> pathlib.Path:
    """A byte-level BPE tokenizer directory (tokenizer.json + tokenizer_config.json) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = pathlib.Path(out)
    if template == "chatml":
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                 "unk_token": "<|endoftext|>"}
    elif template == "llama2":
        special = ["<unk>", "<s>", "</s>"]
        names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        raise ValueError(template)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts or []) + _CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)
    fast.chat_template = TEMPLATES[template]
    fast.save_pretrained(out)
    return out


def llama3_json_dir(shared_data: pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Meta's Llama 3 tokenizer as tokenizer.json (converted by transformers), with its chat template."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from lima_jax.data.tokenizer_backends import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS

    out = pathlib.Path(out)
    source = shared_data / "tokenizer" / "llama3"
    tokenizer = TikTokenConverter(str(source / "tokenizer.model"), pattern=LLAMA3_PATTERN).converted()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")
    fast.chat_template = (source / "chat_template.jinja").read_text()
    fast.save_pretrained(out)
    return out
