"""The superficial-alignment experiment's pieces: requests, the base model's own responses,
the measurements and their summary, the fine-tuning config, the table and the plot.
The whole experiment runs in tests/notebooks/test_notebooks.py."""

from __future__ import annotations

import numpy as np
import pytest

from lima_jax.data.readers import ASSISTANT, USER, Turn
from lima_jax.data.templates import encode_conversations
from lima_jax.decode.load import load_for_decoding
from lima_jax.notebooks import superficial
from lima_jax.train.config import validate_config


@pytest.fixture(scope="module")
def stories(shared_data):
    path = shared_data / "checkpoints" / "stories260K-hf"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"real checkpoint not present: {path}")
    return load_for_decoding(hf=str(path), add_eot=True), path


def test_requests_are_distinct_seeded_and_name_their_character():
    requests = superficial.make_requests(100, seed=3)
    assert len({r.text for r in requests}) == 100
    assert requests == superficial.make_requests(100, seed=3)
    assert requests != superficial.make_requests(100, seed=4)
    names = {n for kind in superficial.TRAIN_NAMES.values() for n in kind}
    for r in requests:
        assert r.name in names and r.activity in superficial.ACTIVITIES
        assert superficial.names_character(r.text, r.name)
        assert r.opening.startswith(f"Once upon a time, there was a little {r.kind} named {r.name}.")
    held_out = superficial.held_out_requests(9)
    assert [r.name in names for r in held_out] == [True, False] * 4 + [True]
    assert not {r.activity for r in held_out} & set(superficial.ACTIVITIES)
    assert not {r.text for r in held_out} & {r.text for r in superficial.all_requests()}
    with pytest.raises(ValueError, match="only 576 distinct"):  # 12 names x 12 activities x 4 wordings
        superficial.make_requests(577, superficial.HELD_OUT_NAMES)


def test_names_character_matches_whole_words():
    assert superficial.names_character("Then Tim ran home.", "Tim")
    assert superficial.names_character("Tim's ball", "Tim")
    assert not superficial.names_character("Timmy ran home.", "Tim")
    assert not superficial.names_character("A zoom lens", "Zoe")


def test_summary_counts_each_stop_reason():
    m = superficial.Measurement(
        stop_reasons=["eot", "eot", "bos", "length"], lengths=[10, 20, 30, 400],
        texts=["a", "b", "c", "d"], adherent=[True, False, True, True],
        new_name=[False, True, False, True])
    s = m.summary()
    assert (s["requests"], s["eot_stop_rate"], s["bos_stop_rate"], s["unfinished_rate"]) == (4, 0.5, 0.25, 0.25)
    assert s["adherence"] == 0.75 and s["length_median"] == 25.0
    assert (s["adherence_seen_names"], s["adherence_new_names"]) == (1.0, 0.5)
    table = superficial.format_table([superficial.result_row(0, m), superficial.result_row(8, m, steps=15)])
    assert "| 0 (base) | 0 | 50% | 25% | 25% | 75% (100% / 50%) | 25 (13-289) |" in table
    assert "| 8 | 15 |" in table


def test_plot_has_a_panel_per_figure(tmp_path):
    m = superficial.Measurement(["eot", "bos"], [5, 9], ["x", "y"], [True, False], [False, True])
    rows = [superficial.result_row(0, m), superficial.result_row(8, m)]
    fig = superficial.plot_results(rows, tmp_path / "plot.png")
    assert len(fig.axes) == 3 and (tmp_path / "plot.png").stat().st_size > 0
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["base", "8"]


def test_finetune_config_is_a_valid_lima_run(tmp_path):
    c = superficial.finetune_config(tmp_path / "hf", tmp_path / "train.jsonl", tmp_path / "run",
                                    epochs=3, max_len=128)
    validate_config(c)
    assert (c.data.template, c.data.loss_on, c.data.num_epochs, c.data.max_len) == ("lima", "assistant", 3, 128)
    assert (c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.warmup_steps) == (0.95, 0.1, 0)
    assert c.data.tokenizer == str(tmp_path / "hf" / "tokenizer.model")


def test_own_responses_are_the_base_models_complete_stories(stories):
    (model, tokenizer), _ = stories
    records = superficial.own_responses(model, tokenizer, 6, max_new_tokens=340, max_len=384,
                                        batch_size=16, progress=False)
    assert len(records) == 6
    requests = {r.text: r for r in superficial.all_requests()}
    conversations = []
    for record in records:
        request, response = record["conversations"]
        assert response.startswith(requests[request].opening)
        assert len(response) > len(requests[request].opening) + 40  # the model wrote a story
        conversations.append([Turn(USER, request), Turn(ASSISTANT, response)])
    encoded = encode_conversations(conversations, tokenizer)
    assert max(len(e.ids) for e in encoded) <= 384  # nothing trimmed: every EOT is trained
    assert all(e.ids[-1] == tokenizer.eot_id for e in encoded)


def test_own_responses_says_when_too_few_stories_end(stories):
    (model, tokenizer), _ = stories
    with pytest.raises(ValueError, match="stories ended within max_new_tokens=4"):
        superficial.own_responses(model, tokenizer, 8, names={"girl": ("Lily",)},
                                  max_new_tokens=4, progress=False)


def test_base_model_never_stops_at_eot(stories):
    (model, tokenizer), _ = stories
    held_out = superficial.held_out_requests(8)
    m = superficial.measure(model, tokenizer, held_out, max_new_tokens=64, progress=False)
    assert len(m.stop_reasons) == 8 and set(m.stop_reasons) <= {"bos", "length", "eos", "eot"}
    assert m.stop_reasons.count("eot") == 0  # its EOT row is the mean embedding: never chosen
    assert all(n <= 64 for n in m.lengths)
    assert m.adherent == [superficial.names_character(t, r.name) for t, r in zip(m.texts, held_out)]
    assert m.new_name == [False, True] * 4
    # Padding a batch to a fixed shape must not change what each request gets.
    alone = superficial.measure(model, tokenizer, held_out[:3], max_new_tokens=64, batch_size=8,
                                progress=False)
    assert alone.texts == m.texts[:3]
    assert np.mean(m.lengths) > 0
