"""``template = "chat"``: the tokenizer's own chat template, token-identical to transformers'
``apply_chat_template`` over LIMA conversations, with the loss on each assistant message and its
end-of-turn token, the decode prompt a prefix of the training ids, and one-line errors."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lima_jax.data import chat_template, templates
from lima_jax.data.errors import DataError
from lima_jax.data.readers import ASSISTANT, SYSTEM, USER, Turn, read_file
from lima_jax.data.tokenizer import CHAT_TEMPLATE_FILE, Tokenizer
from tests.helpers.tokenizer_fixtures import byte_bpe_dir, llama3_json_dir

SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and briefly."
# How each template writes an assistant message's content (before its end-of-turn token).
WRITTEN = {"chatml": lambda c: c, "llama2": lambda c: f" {c.strip()} ", "llama3": str.strip,
           "tiktoken": str.strip}
END_OF_TURN = {"chatml": "<|im_end|>", "llama2": "</s>", "llama3": "<|eot_id|>", "tiktoken": "<|eot_id|>"}
KINDS = tuple(WRITTEN)


@pytest.fixture(scope="module")
def dirs(shared_data, tmp_path_factory) -> dict[str, pathlib.Path]:
    out = tmp_path_factory.mktemp("chat_tokenizers")
    llama3 = llama3_json_dir(shared_data, out / "llama3")
    return {"chatml": byte_bpe_dir(out / "chatml", "chatml"), "llama2": byte_bpe_dir(out / "llama2", "llama2"),
            "llama3": llama3, "tiktoken": shared_data / "tokenizer" / "llama3"}


@pytest.fixture(scope="module")
def toks(dirs) -> dict[str, Tokenizer]:
    """Each tokenizer as loaded, EOT ``new``: the chat encoding switches it to the template's own."""
    return {kind: Tokenizer.load(dirs[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def hf_tokenizers(dirs):
    from transformers import AutoTokenizer

    loaded = {kind: AutoTokenizer.from_pretrained(dirs[kind]) for kind in ("chatml", "llama2", "llama3")}
    # Meta's tiktoken file is compared with its tokenizer.json conversion (same ids, same template).
    return {**loaded, "tiktoken": loaded["llama3"]}


@pytest.fixture(scope="module")
def lima(shared_data) -> list[tuple[Turn, ...]]:
    """A sample of LIMA train: every multi-turn conversation (and the one ending on a user turn),
    every 4th other one, a system message added to every 5th of those."""
    conversations, _ = read_file(str(shared_data / "lima" / "train.jsonl"))
    sample = [c.turns for i, c in enumerate(conversations) if len(c.turns) != 2 or i % 4 == 0]
    return [((Turn(SYSTEM, SYSTEM_PROMPT),) + t) if i % 5 == 0 else t for i, t in enumerate(sample)]


def ids_of(result) -> list[int]:
    """apply_chat_template's ids: a list, or (transformers 5) a dict / BatchEncoding."""
    return list(result if isinstance(result, list) else result["input_ids"])


def kept(turns):
    return templates.answered_turns(turns, "chat")[0]


def spans(trained: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], trained.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def with_template(tok: Tokenizer, template: str) -> Tokenizer:
    """``tok`` with another chat template (in chat_template.jinja; none in its config)."""
    files = dict(tok.files)
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    config.pop("chat_template", None)
    files["tokenizer_config.json"] = json.dumps(config).encode()
    files[CHAT_TEMPLATE_FILE] = template.encode()
    return Tokenizer(files, tok.path)


def conv(*texts, system=None):
    turns = [Turn(SYSTEM, system)] if system else []
    return turns + [Turn((USER, ASSISTANT)[i % 2], t) for i, t in enumerate(texts)]


def test_the_sample_has_multi_turn_system_and_unanswered_conversations(lima):
    assert len(lima) >= 250
    assert sum(len([t for t in c if t.role == ASSISTANT]) > 1 for c in lima) >= 25
    assert sum(c[0].role == SYSTEM for c in lima) >= 50
    assert sum(c[-1].role == USER for c in lima) >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_ids_and_loss_mask_match_apply_chat_template(kind, toks, hf_tokenizers, lima):
    tok = toks[kind]
    hf = hf_tokenizers[kind]
    eot_id = tok.piece_to_id(END_OF_TURN[kind])
    assert chat_template.template_end_of_turn(tok) == END_OF_TURN[kind]
    encoded = templates.encode_conversations(lima, tok, "chat")
    checked = 0
    for turns, e in zip(lima, encoded, strict=True):
        messages = chat_template.messages_of(kept(turns))
        reference = hf.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=kind == "chatml")
        assert e.ids.tolist() == ids_of(reference), (kind, messages[:2])
        assert e.dropped_turns == len(turns) - len(messages)
        assert e.response_tokens == int(e.trained.sum()) and e.prompt_tokens + e.response_tokens == len(e.ids)
        answers = [m["content"] for m in messages if m["role"] == ASSISTANT]
        trained_spans = spans(e.trained)
        assert len(trained_spans) == len(answers)
        for (start, stop), answer in zip(trained_spans, answers, strict=True):
            assert e.ids[stop - 1] == eot_id  # each span ends on the template's end of turn
            assert tok.decode(e.ids[start: stop - 1]) == WRITTEN[kind](answer)
        if kind == "chatml":  # the template's {% generation %} blocks, read by transformers
            assert e.trained.astype(int).tolist() == reference["assistant_masks"]
        checked += 1
    print(f"{kind}: {checked} LIMA conversations token-identical")


@pytest.mark.parametrize("kind", KINDS)
def test_the_prompt_is_apply_chat_templates_and_a_prefix_of_training(kind, toks, hf_tokenizers, lima):
    tok = toks[kind]
    hf = hf_tokenizers[kind]
    checked = 0
    for turns in lima[::3]:
        turns = kept(turns)
        last_user = max(i for i, t in enumerate(turns) if t.role == USER)
        prompt_turns = turns[: last_user + 1]
        prompt = templates.encode_prompt(prompt_turns, tok, "chat")
        reference = hf.apply_chat_template(chat_template.messages_of(prompt_turns), tokenize=True,
                                           add_generation_prompt=True)
        assert prompt == ids_of(reference)
        training = templates.encode_conversations([turns], tok, "chat")[0]
        assert training.ids[: len(prompt)].tolist() == prompt
        # The answer starts right after the prompt; inside it only the earlier answers are trained.
        assert training.trained[len(prompt)] and not training.trained[len(prompt) - 1]
        earlier = sum(t.role == ASSISTANT for t in prompt_turns)
        assert len(spans(training.trained[: len(prompt)])) == earlier
        checked += 1
    assert checked >= 80


def test_a_trailing_user_turn_is_dropped_and_counted(toks):
    tok = toks["chatml"]
    texts = ["one two", "three four", "five six", "seven eight", "nine ten"]
    e = chat_template.encode_chat(conv(*texts), tok)
    full = chat_template.encode_chat(conv(*texts[:4]), tok)
    assert e.dropped_turns == 1 and full.dropped_turns == 0
    assert e.ids.tolist() == full.ids.tolist() and e.trained.tolist() == full.trained.tolist()
    nothing = chat_template.encode_chat(conv("only a question"), tok)
    assert (len(nothing.ids), nothing.dropped_turns) == (0, 1)


def test_loss_on_all_and_the_run_tokenizer(toks):
    tok = toks["tiktoken"]
    e = templates.encode_conversations([conv("q", "a")], tok, "chat", "all")[0]
    assert e.trained.all() and 0 < e.response_tokens < len(e.ids)
    run_tok = chat_template.chat_tokenizer(tok)
    assert run_tok.eot == "<|eot_id|>" and not run_tok.eot_is_new and run_tok.vocab_size == tok.base_vocab_size
    assert templates.end_of_turn_id("chat", run_tok) == run_tok.piece_to_id("<|eot_id|>")
    assert chat_template.chat_tokenizer(run_tok) is run_tok
    variables = chat_template.special_token_variables(tok)  # no config: Meta's BOS/EOS
    assert variables == {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}


def test_a_system_message_passes_through(toks):
    tok = toks["tiktoken"]
    turns = conv("Hi", "Hello", system="Be kind.")
    text, _ = chat_template.render(chat_template.messages_of(turns), tok)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>")
    e = chat_template.encode_chat(turns, tok)
    assert e.ids.tolist() == tok.encode_special(text) and e.ids[0] == tok.bos_id


# ---------------------------------------------------------------------------------- bad input


def test_no_chat_template_names_the_key_and_where_templates_are_read(shared_data):
    tok = Tokenizer.load(shared_data / "tokenizer" / "llama" / "tokenizer.model")
    with pytest.raises(DataError, match=r"^config\.data\.template: .*has none.*tokenizer_config\.json"
                       r".*chat_template\.jinja") as err:
        templates.encode_conversations([conv("q", "a")], tok, "chat")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="config.data.template"):
        templates.encode_prompt(conv("q"), tok, "chat")


def test_a_template_that_raises_gives_its_message(dirs, toks):
    tok = toks["llama2"]  # its template insists on alternating roles
    with pytest.raises(DataError, match=r"chat_template\.jinja: the chat template raised: Conversation roles "
                       "must alternate") as err:
        chat_template.encode_chat(conv("q", "a") + [Turn(ASSISTANT, "again")], tok)
    assert str(dirs["llama2"]) in str(err.value) and "\n" not in str(err.value)
    broken = with_template(tok, "{% for m in messages %}{{ m.content }")
    with pytest.raises(DataError, match="chat_template.jinja: the chat template is not valid Jinja"):
        chat_template.encode_chat(conv("q", "a"), broken)
    undefined = with_template(tok, "{{ messages[0].content.nope() }}")
    with pytest.raises(DataError, match="the chat template raised"):
        chat_template.encode_chat_prompt(conv("q"), undefined)


def test_a_template_without_an_assistant_role(toks):
    tok = with_template(toks["chatml"],
                        "{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n"
                        "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="chat_template.jinja: the chat template renders no assistant content"):
        chat_template.encode_chat(conv("q", "a"), tok)


def test_a_template_with_no_end_of_turn_token(toks):
    tok = with_template(toks["chatml"],
                        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}")
    with pytest.raises(DataError, match="writes no end-of-turn special token after an assistant message"):
        chat_template.template_end_of_turn(tok)


def test_prefix_renders_that_are_not_prefixes_name_the_template(toks):
    tok = with_template(toks["chatml"],
                        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                        "{% if not add_generation_prompt %}<|endoftext|>{% endif %}")
    e = chat_template.encode_chat(conv("q", "a"), tok)  # one exchange: the prefixes still hold
    assert e.response_tokens > 0
    with pytest.raises(DataError, match=r"chat_template\.jinja: .*is not a prefix.*generation"):
        chat_template.encode_chat(conv("q", "a", "q2", "a2"), tok)


def test_an_end_of_turn_other_than_the_templates_is_refused(toks):
    tok = toks["chatml"].with_eot("<|endoftext|>")
    with pytest.raises(DataError, match=r"config\.data\.eot: '<\|endoftext\|>' is not the end of turn .*<\|im_end\|>"):
        chat_template.encode_chat(conv("q", "a"), tok)


def test_generation_blocks_must_cover_every_assistant_message(toks):
    tok = with_template(toks["chatml"],
                        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and "
                        "loop.last %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}"
                        "{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}")
    assert chat_template.encode_chat(conv("q", "a"), tok).response_tokens > 0
    with pytest.raises(DataError, match=r"generation %\} blocks mark 1 span\(s\) for 2 assistant"):
        chat_template.encode_chat(conv("q", "a", "q2", "a2"), tok)


def test_a_generation_block_without_the_end_of_turn_is_extended_to_it(toks):
    tok = with_template(toks["chatml"],
                        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
                        "{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
                        "<|im_end|>\n{% endfor %}")
    e = chat_template.encode_chat(conv("q", "an answer"), tok)
    (start, stop), = spans(e.trained)
    assert e.ids[stop - 1] == tok.piece_to_id("<|im_end|>") and stop == len(e.ids) - 1  # not the "\n"
    assert tok.decode(e.ids[start: stop - 1]) == "an answer"
