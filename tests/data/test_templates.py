"""Chat templates and loss masks: layout, every assistant turn trained, trailing turns dropped."""

import numpy as np
import pytest

from lima_jax.data import templates
from lima_jax.data.errors import DataError
from lima_jax.data.readers import ASSISTANT, SYSTEM, USER, Turn
from tests.helpers.data_fixtures import tiny


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")


def conv(*texts, system=None):
    turns = [Turn(SYSTEM, system)] if system else []
    return turns + [Turn((USER, ASSISTANT)[i % 2], t) for i, t in enumerate(texts)]


def encode_one(turns, tok, template="lima", loss_on="assistant"):
    return templates.encode_conversations([turns], tok, template, loss_on)[0]


def test_lima_layout_and_mask(tok):
    q, a = "The user asks a question.", "The assistant gives an answer."
    e = encode_one(conv(q, a), tok)
    qi, ai = tok.encode(q), tok.encode(a)
    expected = [tok.bos_id, *qi, tok.eot_id, *ai, tok.eot_id]
    assert e.ids.tolist() == expected and e.ids.dtype == np.int32
    # Trained: exactly the answer and its EOT.
    assert e.trained.tolist() == [False] * (len(qi) + 2) + [True] * (len(ai) + 1)
    assert (e.prompt_tokens, e.response_tokens, e.dropped_turns) == (len(qi) + 2, len(ai) + 1, 0)


def test_every_assistant_turn_trained_and_trailing_user_turn_dropped(tok):
    texts = ["one two", "three four", "five six", "seven eight", "nine ten"]
    e = encode_one(conv(*texts), tok)
    assert e.dropped_turns == 1
    full = encode_one(conv(*texts[:4]), tok)
    assert e.ids.tolist() == full.ids.tolist()  # the unanswered last prompt is gone
    eot_positions = np.flatnonzero(e.ids == tok.eot_id)
    assert len(eot_positions) == 4
    trained_eots = e.trained[eot_positions].tolist()
    assert trained_eots == [False, True, False, True]  # user EOTs untrained, assistant EOTs trained
    spans = np.diff(np.concatenate([[0], e.trained.astype(int), [0]]))
    assert (spans == 1).sum() == 2  # two separate trained spans: both assistant turns


def test_loss_on_all_trains_every_token(tok):
    e = encode_one(conv("a question", "an answer"), tok, loss_on="all")
    assert e.trained.all() and e.response_tokens < len(e.ids)


def test_llama2_template_text(tok):
    llama = tok
    turns = conv("Hi", "Hello there", "Bye", "Goodbye", system="Be kind.")
    e = encode_one(turns, llama, "llama2")
    assert (e.ids == llama.bos_id).sum() == 2 and (e.ids == llama.eos_id).sum() == 2
    assert llama.eot_id not in e.ids.tolist()
    first = e.ids.tolist().index(llama.eos_id)
    assert llama.decode(e.ids[:first]) == "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello there"
    assert e.trained[first] and not e.trained[first + 1]  # EOS trained, next BOS not
    assert templates.end_of_turn_id("llama2", llama) == llama.eos_id


def test_plain_and_raw(tok):
    e = encode_one(conv("a question", "an answer"), tok, "plain")
    assert tok.decode(e.ids) == "User: a question\n\nAssistant: an answer"
    assert e.ids[-1] == tok.eot_id and e.trained[-1]
    r = encode_one(conv("a question", "an answer", "more"), tok, "raw")
    assert r.dropped_turns == 0 and tok.eot_id not in r.ids.tolist()
    assert tok.decode(r.ids) == "a question an answer more"


# ``chat`` needs a tokenizer with a chat template: tests/data/test_chat_template.py.
@pytest.mark.parametrize("template", [t for t in templates.TEMPLATES if t != "chat"])
def test_prompt_is_the_prefix_training_used(tok, template):
    turns = conv("first question", "first answer", "second question")
    prompt = templates.encode_prompt(turns, tok, template)
    trained = encode_one(turns + [Turn(ASSISTANT, "second answer")], tok, template)
    assert trained.ids[: len(prompt)].tolist() == prompt
    assert trained.trained[len(prompt)]  # the very next token is the answer's first


def test_unknown_template_names_the_key(tok):
    with pytest.raises(DataError, match="config.data.template: unknown template 'chatml'"):
        encode_one(conv("q", "a"), tok, "chatml")
    with pytest.raises(DataError, match="config.data.loss_on"):
        encode_one(conv("q", "a"), tok, "lima", "prompt")


def test_chat_is_a_template_and_needs_the_tokenizers_chat_template(tok):
    assert "chat" in templates.TEMPLATES
    templates.check_template("chat")
    with pytest.raises(DataError, match="config.data.template: template 'chat' uses the tokenizer's chat template"):
        encode_one(conv("q", "a"), tok, "chat")


@pytest.mark.parametrize("template", ["lima", "llama2", "plain", "raw"])
def test_a_tokenizer_without_bos_gets_none(tmp_path, template):
    import json

    from lima_jax.data.tokenizer import Tokenizer
    from tests.helpers.tokenizer_fixtures import byte_bpe_dir

    with_bos = Tokenizer.load(byte_bpe_dir(tmp_path / "bpe", "chatml"))
    files = dict(with_bos.files)
    config = json.loads(files["tokenizer_config.json"])
    del config["bos_token"]
    files["tokenizer_config.json"] = json.dumps(config).encode()
    no_bos = Tokenizer(files, with_bos.path)
    assert no_bos.bos_id is None
    turns = conv("a question", "an answer", system="Be brief.")
    e, reference = encode_one(turns, no_bos, template), encode_one(turns, with_bos, template)
    bos = with_bos.bos_id
    assert e.ids.tolist() == [i for i in reference.ids.tolist() if i != bos]
    assert e.trained.tolist() == [t for i, t in zip(reference.ids, reference.trained) if i != bos]
    prompt = templates.encode_prompt(turns[:2], no_bos, template)
    assert prompt == e.ids[: len(prompt)].tolist() and len(prompt) > 0
