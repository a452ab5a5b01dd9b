"""The one prompt -> answer path: the stop ids each template gets, answers that match the
decoder's own, and answering a prompt file (resume, nothing to do, a torn last line)."""

from __future__ import annotations

import json
import pathlib

import pytest

from lima_jax.decode import Answerer, SamplingConfig, answer_file, missing_answers, stop_names
from lima_jax.decode.answer import done_rows


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    from lima_jax.data import Tokenizer

    return Tokenizer.load(shared_data / "checkpoints" / "stories260K-hf" / "tokenizer.model")


def _write(path: pathlib.Path, records) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_template_end_of_turn_and_eos_stop_an_answer(tokenizer):
    eos, eot, bos = tokenizer.eos_id, tokenizer.eot_id, tokenizer.bos_id
    for template in ("lima", "plain", "urial"):
        assert stop_names(tokenizer, template) == {eos: "eos", eot: "eot"}
    for template in ("llama2", "raw"):
        assert stop_names(tokenizer, template) == {eos: "eos"}
    assert stop_names(tokenizer, "raw", {bos: "bos"}) == {eos: "eos", bos: "bos"}


def test_chat_stops_at_the_chat_templates_end_of_turn_and_eos(shared_data):
    from lima_jax.data import Tokenizer
    from lima_jax.decode import encode_for_template
    from lima_jax.decode.answer import tokenizer_for_template

    loaded = Tokenizer.load(shared_data / "tokenizer" / "llama3")  # tiktoken + chat_template.jinja
    assert loaded.eot_is_new
    tok = tokenizer_for_template(loaded, "chat")
    eot, eos = tok.piece_to_id("<|eot_id|>"), tok.piece_to_id("<|end_of_text|>")
    assert (tok.eot_id, tok.vocab_size) == (eot, loaded.base_vocab_size)  # no new row
    assert stop_names(tok, "chat") == {eos: "eos", eot: "eot"}
    assert tokenizer_for_template(loaded, "lima") is loaded and tokenizer_for_template(tok, "chat") is tok
    # The prompt is the template's render with the assistant header (add_generation_prompt=True).
    assert encode_for_template("Who is Tim?", tok, "chat") == tok.encode_special(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWho is Tim?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_answers_are_the_decoders_tokens_decoded(shared_data):
    from lima_jax.decode import Generator
    from lima_jax.decode.load import load_for_decoding

    model, tokenizer = load_for_decoding(hf=str(shared_data / "checkpoints" / "stories260K-hf"),
                                         add_eot=True)
    answerer = Answerer(model, tokenizer, "lima")
    ids = [answerer.encode(t) for t in ("Tell me a story.", "Who is Tim?")]
    assert answerer.room(ids) == model.config.max_seq_len - max(map(len, ids))
    greedy = SamplingConfig.greedy_config()
    answers = answerer.answer(ids, sampling=greedy, max_new_tokens=12)
    generations = Generator(model).generate(ids, sampling=greedy, max_new_tokens=12,
                                            stop_ids=[tokenizer.eos_id, tokenizer.eot_id])
    assert [a.tokens for a in answers] == [g.tokens for g in generations]
    assert [a.text for a in answers] == [tokenizer.decode(g.tokens) for g in generations]
    assert all(a.stop_reason in ("eot", "eos", "length") for a in answers)


def test_a_complete_answers_file_is_kept_without_loading_a_model(tmp_path, capsys):
    prompts = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    out = tmp_path / "out.jsonl"
    answers = [{"id": i, "sample": s, "prompt": "", "text": "t", "tokens": [5], "num_tokens": 1,
                "stop_reason": "eos"} for i in ("a", "b") for s in (0, 1)]
    _write(out, answers[:3])
    with out.open("a") as f:
        f.write('{"id": "b", "sam')  # a torn line from an interrupted run
    before = out.read_bytes()
    assert [(p.id, s) for p, s in missing_answers(prompts, out, num_samples=2)] == [("b", 1)]
    assert out.read_bytes() == before  # only read: the torn line is set aside by answer_file
    assert missing_answers(prompts, out, num_samples=2, limit=1) == []
    _write(out, answers)
    # No model is needed (the path does not exist): every answer is there already.
    result = answer_file(prompts, out, hf=str(tmp_path / "no-model"), num_samples=2)
    assert (result.kept, result.written, result.too_long) == (4, 0, ())
    assert "4 answers there, 0 to go" in capsys.readouterr().out
    assert done_rows(out) == {(i, s) for i in ("a", "b") for s in (0, 1)}


def test_bad_counts_are_input_errors(tmp_path):
    from lima_jax.errors import InputError

    prompts = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
    with pytest.raises(InputError, match="--num-samples must be >= 1"):
        answer_file(prompts, tmp_path / "out.jsonl", hf="x", num_samples=0)
