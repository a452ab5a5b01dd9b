"""``data.template = "chat"``: the tokenizer's own chat template, rendered as transformers renders it.

The Jinja chat template that ships with a tokenizer (``chat_template`` in tokenizer_config.json, or
``chat_template.jinja`` beside it; `Tokenizer.chat_template`) is rendered in the environment
transformers' ``apply_chat_template`` uses: a sandboxed, immutable Jinja environment with
``trim_blocks``, ``lstrip_blocks`` and loop controls, a ``tojson`` filter that does not escape HTML,
``raise_exception(message)``, ``strftime_now(format)``, guarded ``dict``/``namespace``, and the
``{% generation %}...{% endgeneration %}`` block that records where assistant text lies. The template
sees ``messages`` ([{"role", "content"}, ...]; roles ``system``, ``user``, ``assistant``),
``tools``/``documents`` (None), ``add_generation_prompt`` and the tokenizer's named special tokens
(``bos_token``, ``eos_token``, ... from tokenizer_config.json / special_tokens_map.json; BOS and EOS
fall back to the tokenizer's own when the config names none, as for Meta's tiktoken file).

The rendered text is tokenized at once with the template's special tokens parsed
(`Tokenizer.encode_special`), so the ids are those of ``apply_chat_template(messages, tokenize=True)``.

Trained tokens (``loss_on='assistant'``): every assistant message's tokens and its end-of-turn token.
The assistant's characters come from the template's ``{% generation %}`` spans when it has them (as
``return_assistant_tokens_mask`` reads them); otherwise from rendering prefixes: the assistant message
``i`` is what ``messages[:i+1]`` adds to ``messages[:i]`` rendered with ``add_generation_prompt=True``
(a template whose prefix renders are not prefixes of each other cannot be trained this way: an
error). A token is trained when it overlaps such a span; each span is then cut after its last
end-of-turn token (a prefix render also holds what follows it, ChatML's ``\\n``), or, when a
generation span stops before it, extended up to the end-of-turn token that follows.

The end of turn (`template_end_of_turn`) is the template's own: the first special token it writes after
an assistant message's text (``<|eot_id|>`` Llama 3, ``<|im_end|>`` ChatML, ``</s>`` Llama 2). A chat
run's tokenizer uses that token as its EOT (`lima_jax.data.eot`); `encode_chats` switches a tokenizer
whose EOT is ``new`` to it, and refuses one whose EOT is another token.
"""

from __future__ import annotations

import contextvars
import functools
import json
import pathlib
import re
from collections.abc import Sequence
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lima_jax.data.encoded import Encoded, answered_turns
from lima_jax.data.errors import DataError
from lima_jax.data.readers import ASSISTANT, Turn
from lima_jax.data.tokenizer import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG, Tokenizer
from lima_jax.data.tokenizer_backends import split_on_special

CHAT = "chat"
# The named special tokens transformers passes to a template (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                      "mask_token")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# The conversation `template_end_of_turn` renders to find the token after an assistant's text.
PROBE_USER, PROBE_ANSWER = "Hello, who are you?", "I am a helpful assistant."

# (rendered blocks' total length, spans) while a render records its {% generation %} spans.
_TRACKING: contextvars.ContextVar = contextvars.ContextVar("lima_chat_generation", default=None)


# ------------------------------------------------------------------------------ the environment


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body and, while a render records,
    notes the body's character span in the output."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_record"), [], [], body).set_lineno(lineno)

    def _record(self, caller) -> str:
        text = caller()
        tracking = _TRACKING.get()
        if tracking is not None:
            written, spans = tracking
            spans.append((written[0], written[0] + len(text)))
        return text


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Dict:
    """``dict(...)`` for templates, without the attributes of the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` refusing underscore names (no way to CPython internals)."""

    def __init__(*args, **kwargs):  # Jinja's signature trick, so that namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a template cannot set {name!r} on a namespace")


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                       namespace=_Namespace)
    return env.from_string(template)


# ------------------------------------------------------------------------------ rendering


def template_location(tokenizer: Tokenizer) -> str:
    """The file the tokenizer's chat template came from (tokenizer_config.json or chat_template.jinja)."""
    path = pathlib.Path(tokenizer.path) if tokenizer.path else None
    folder = (path if path.is_dir() else path.parent) if path else pathlib.Path("tokenizer")
    name = TOKENIZER_CONFIG if tokenizer.config.get("chat_template") else CHAT_TEMPLATE_FILE
    return str(folder / name)


def require_template(tokenizer: Tokenizer) -> str:
    """The tokenizer's chat template, or a DataError on ``config.data.template`` saying where it was sought."""
    template = tokenizer.chat_template
    if template is None:
        raise DataError("config.data.template",
                        f"template 'chat' uses the tokenizer's chat template, and {tokenizer.path or 'the tokenizer'} "
                        "has none",
                        f"a chat template is read from 'chat_template' in {TOKENIZER_CONFIG} or from "
                        f"{CHAT_TEMPLATE_FILE} beside the tokenizer; add one or choose another template", "config")
    return template


def special_token_variables(tokenizer: Tokenizer) -> dict[str, str]:
    """The special-token variables a template sees (``bos_token``, ``eos_token``, ...), as transformers
    passes them: the named tokens of the tokenizer's config, BOS/EOS from the tokenizer when unnamed."""
    def text(value) -> str | None:
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) and value else None

    variables = {}
    extra = tokenizer.config.get("extra_special_tokens")
    if isinstance(extra, dict):  # named extra tokens (``image_token`` ...) are template variables too
        variables.update({k: text(v) for k, v in extra.items() if isinstance(k, str) and text(v)})
    for key in SPECIAL_TOKEN_KEYS:
        if text(tokenizer.config.get(key)):
            variables[key] = text(tokenizer.config[key])
    for key, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
        if key not in variables and token_id is not None:
            variables[key] = tokenizer.id_to_piece(token_id)
    return variables


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def render(messages: Sequence[dict], tokenizer: Tokenizer, *, add_generation_prompt: bool = False,
           template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered text, the character spans of its ``{% generation %}`` blocks) of ``messages``
    under the tokenizer's chat template (or ``template``); template errors are DataErrors naming the file."""
    template = require_template(tokenizer) if template is None else template
    where = template_location(tokenizer)
    try:
        compiled = _compile(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise DataError(where, f"the chat template is not valid Jinja (line {e.lineno}: {_one_line(e.message)})",
                        "", "chat_template") from None
    written, spans = [0], []
    blocks = []
    token = _TRACKING.set((written, spans))
    try:
        for block in compiled.generate(messages=[dict(m) for m in messages], tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt,
                                       **special_token_variables(tokenizer)):
            blocks.append(block)
            written[0] += len(block)
    except Exception as e:  # a template is user code: any failure is the template's
        message = _one_line(getattr(e, "message", None) or e) or type(e).__name__
        raise DataError(where, f"the chat template raised: {message}",
                        f"rendering {len(messages)} message(s) with roles "
                        f"{[m.get('role') for m in messages][:6]}", "chat_template") from None
    finally:
        _TRACKING.reset(token)
    return "".join(blocks), spans


def messages_of(turns: Sequence[Turn]) -> list[dict]:
    """Turns as chat-template messages: [{"role": ..., "content": ...}]."""
    return [{"role": t.role, "content": t.text} for t in turns]


def template_end_of_turn(tokenizer: Tokenizer) -> str:
    """The text of the special token the chat template writes right after an assistant's text
    (``<|eot_id|>``, ``<|im_end|>``, ``</s>``): the template's end of turn."""
    where = template_location(tokenizer)
    text, _ = render([{"role": "user", "content": PROBE_USER}, {"role": ASSISTANT, "content": PROBE_ANSWER}],
                     tokenizer)
    at = text.find(PROBE_ANSWER)
    if at < 0:
        raise DataError(where, "the chat template renders no assistant content (a [user, assistant] "
                        "conversation renders without the assistant's text)",
                        "the 'chat' template needs a template with an 'assistant' role", "chat_template")
    for piece, special in split_on_special(text[at + len(PROBE_ANSWER):], tokenizer.special_tokens):
        if special:
            return piece
    raise DataError(where, "the chat template writes no end-of-turn special token after an assistant message",
                    "the 'chat' template needs a special token (<|eot_id|>, <|im_end|>, </s> ...) that ends "
                    "the assistant's turn, so a model learns to stop", "chat_template")


def chat_end_of_turn(tokenizer: Tokenizer, policy: str = "auto") -> str:
    """The chat template's end of turn under the run's ``config.data.eot`` policy: ``auto`` (or '')
    takes it, its own text is accepted, any other token is a DataError naming the key (the
    template writes its own end of turn, so a chat run cannot end turns with another)."""
    own = template_end_of_turn(tokenizer)
    if policy not in ("auto", "", own):
        raise DataError("config.data.eot", f"{policy!r} is not the end of turn of the chat template "
                        f"({own!r} in {template_location(tokenizer)})",
                        f"leave it at auto or set it to {own!r}", "config")
    return own


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the chat template's end of turn as its EOT: switched when its EOT is ``new``;
    a DataError on ``config.data.eot`` when it is another token (`chat_end_of_turn`)."""
    own = chat_end_of_turn(tokenizer, "auto" if tokenizer.eot_is_new else tokenizer.eot)
    return tokenizer if own == tokenizer.eot else tokenizer.with_eot(own)


# ------------------------------------------------------------------------------ encoding


def _prefix_spans(messages: list[dict], tokenizer: Tokenizer, template: str, full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant messages in ``full``, from prefix renders."""
    where = template_location(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != ASSISTANT:
            continue
        before, _ = render(messages[:i], tokenizer, add_generation_prompt=True, template=template)
        after, _ = render(messages[: i + 1], tokenizer, template=template)
        for shorter, longer, what in ((before, after, f"messages[:{i + 1}]"), (after, full, "all messages")):
            if not longer.startswith(shorter):
                raise DataError(where, f"the chat template's render of messages[:{i}] with "
                                f"add_generation_prompt=True, then messages[:{i + 1}], is not a prefix of its "
                                f"render of {what}, so the assistant's tokens cannot be told apart",
                                "wrap the assistant content in {% generation %}...{% endgeneration %} or choose "
                                "another template", "chat_template")
        if len(after) == len(before):
            raise DataError(where, f"the chat template renders nothing for assistant message {i}",
                            "the 'chat' template needs a template with an 'assistant' role", "chat_template")
        spans.append((len(before), len(after)))
    return spans


def _trained_mask(ids: list[int], starts: list[int], text_len: int, spans: list[tuple[int, int]],
                  eot_id: int, where: str) -> np.ndarray:
    """True on the tokens overlapping each span, ending at the span's last end-of-turn token (or
    extended to the next one when the span stops before it)."""
    n = len(ids)
    ids_arr = np.asarray(ids, np.int64)
    starts_arr = np.asarray(starts, np.int64)
    ends = np.append(starts_arr[1:], text_len)
    ends = np.maximum(ends, starts_arr + 1)  # tokens of one multi-byte character share its start
    trained = np.zeros(n, bool)
    for k, (s, e) in enumerate(spans):
        inside = np.flatnonzero((starts_arr < e) & (ends > s))
        if not len(inside):
            continue
        first, last = int(inside[0]), int(inside[-1])
        eots = np.flatnonzero(ids_arr[first: last + 1] == eot_id)
        if len(eots):
            last = first + int(eots[-1])
        else:
            limit = spans[k + 1][0] if k + 1 < len(spans) else text_len
            after = np.flatnonzero((ids_arr == eot_id) & (np.arange(n) > last) & (starts_arr < limit))
            if not len(after):
                raise DataError(where, "no end-of-turn special token follows an assistant message",
                                "the 'chat' template needs the assistant's turn ended by its end-of-turn "
                                "token", "chat_template")
            last = int(after[0])
        trained[first: last + 1] = True
    return trained


def _encode_one(turns: Sequence[Turn], tokenizer: Tokenizer, template: str, loss_on: str) -> Encoded:
    kept, dropped = answered_turns(turns, CHAT)
    if not kept:
        return Encoded(np.zeros(0, np.int32), np.zeros(0, bool), 0, 0, dropped)
    messages = messages_of(kept)
    where = template_location(tokenizer)
    n_assistant = sum(m["role"] == ASSISTANT for m in messages)
    if GENERATION_TAG.search(template):
        text, spans = render(messages, tokenizer, template=template)
        if len(spans) != n_assistant:
            raise DataError(where, f"the chat template's {{% generation %}} blocks mark {len(spans)} span(s) for "
                            f"{n_assistant} assistant message(s)",
                            "put one generation block around each assistant message", "chat_template")
    else:
        text, _ = render(messages, tokenizer, template=template)
        spans = _prefix_spans(messages, tokenizer, template, text)
    ids, starts = tokenizer.encode_with_offsets(text)
    trained = _trained_mask(ids, starts, len(text), spans, tokenizer.eot_id, where)
    response = int(trained.sum())
    if loss_on == "all":
        trained[:] = True
    return Encoded(np.asarray(ids, np.int32), trained, len(ids) - response, response, dropped)


def encode_chats(conversations: Sequence[Sequence[Turn]], tokenizer: Tokenizer,
                 loss_on: str = "assistant") -> list[Encoded]:
    """`encode_chat` for many conversations (the template's end of turn is found once)."""
    template = require_template(tokenizer)
    tokenizer = chat_tokenizer(tokenizer)
    return [_encode_one(turns, tokenizer, template, loss_on) for turns in conversations]


def encode_chat(turns: Sequence[Turn], tokenizer: Tokenizer, loss_on: str = "assistant") -> Encoded:
    """One conversation under the tokenizer's chat template: the ids of
    ``apply_chat_template(messages, tokenize=True)`` and the trained tokens (module docstring).
    Turns after the last assistant turn are dropped and counted."""
    return encode_chats([turns], tokenizer, loss_on)[0]


def encode_chat_prompt(turns: Sequence[Turn], tokenizer: Tokenizer) -> list[int]:
    """Token ids for a model to write the next assistant turn: the turns rendered with
    ``add_generation_prompt=True`` (``apply_chat_template(..., add_generation_prompt=True)``)."""
    text, _ = render(messages_of(turns), tokenizer, add_generation_prompt=True)
    return tokenizer.encode_special(text)
