"""The quickstart notebook's logic: the runtime, scaling LIMA's recipe to it, bringing a model
(an uploaded directory or a llama2.c file), the data subset, prompts that fit, and the
before/after table. The notebook itself runs in tests/notebooks/test_notebooks.py."""

from __future__ import annotations

import json

import pytest

from lima_jax.data import read_conversations
from lima_jax.model import count_parameters, get_preset
from lima_jax.notebooks import quickstart
from lima_jax.train.config import get_base_config, rows_per_device_check, validate_config
from tests.helpers.llama2c_reference import write_llama2c

GIB = 2**30


def _scaled(runtime, preset="llama2-7b", **config_changes):
    model_config = get_preset(preset).replace(**config_changes)
    c = get_base_config()
    c.workdir, c.data.path, c.data.tokenizer = "/tmp/x", "x.jsonl", "t.model"
    notes = quickstart.scale_recipe(c, runtime, model_config, count_parameters(model_config))
    validate_config(c)
    return c, notes


def test_detect_runtime_sees_this_machine():
    runtime = quickstart.detect_runtime()
    assert runtime.platform == "cpu" and runtime.devices >= 1 and runtime.memory_per_device > 0
    assert "cpu" in runtime.describe()


def test_cpu_keeps_the_recipe_small_and_float32():
    c, notes = _scaled(quickstart.Runtime("cpu", "cpu", 1, 16 * GIB), "llama2-7b", n_layers=2, dim=64,
                       n_heads=4, n_kv_heads=4, mlp_dim=128, vocab_size=512, max_seq_len=1024)
    assert (c.model.dtype, c.data.max_len, c.data.global_batch_size) == ("float32", 512, 8)
    assert c.optimizer.learning_rate == pytest.approx(1e-3)  # capped at 100 x LIMA's 1e-5
    assert c.optimizer.end_learning_rate == pytest.approx(c.optimizer.learning_rate / 10)
    assert c.data.num_epochs == 15 and c.optimizer.b2 == 0.95 and c.model.residual_dropout == 0.2
    assert any("max_len 512" in n for n in notes)
    assert c.train.max_steps == quickstart.CPU_MAX_STEPS


def test_7b_on_a_tpu_slice_accumulates_to_lima_batch():
    runtime = quickstart.Runtime("tpu", "TPU v5 lite", 8, 16 * GIB)
    c, notes = _scaled(runtime)
    assert (c.model.dtype, c.data.max_len, c.data.global_batch_size) == ("bfloat16", 2048, 64)
    assert c.train.grad_accum_steps > 1 and any("micro-batches" in n for n in notes)
    rows_per_device_check(c, 8)  # every micro-batch splits over the 8 chips
    assert c.optimizer.learning_rate == pytest.approx(1e-5, rel=0.05)
    assert c.train.max_steps == 0  # accelerators run every epoch


def test_a_model_too_big_for_the_runtime_says_so():
    with pytest.raises(MemoryError, match="choose a smaller MODEL"):
        _scaled(quickstart.Runtime("gpu", "Tesla T4", 1, 15 * GIB))


def test_fetch_model_takes_an_uploaded_directory_or_a_llama2c_file(tmp_path, shared_data):
    stories = shared_data / "checkpoints" / "stories260K-hf"
    assert quickstart.fetch_model(str(stories), tmp_path) == stories
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        quickstart.fetch_model(str(tmp_path / "empty"), tmp_path)
    binary = write_llama2c(stories, tmp_path / "stories260K.bin")
    out = quickstart.fetch_model(f"llama2c:{binary}", tmp_path,
                                 tokenizer=str(stories / "tokenizer.model"))
    assert out == tmp_path / "models" / "stories260K"
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 4
    assert (out / "tokenizer.model").is_file()


def test_write_subset_keeps_lima_format(tmp_path):
    lima = tmp_path / "in.jsonl"
    rows = [{"conversations": [f"question {i}", f"answer {i}"], "source": "s"} for i in range(5)]
    rows.append({"conversations": ["q", "a", "q2", "a2"], "source": "multi_turn"})
    lima.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = quickstart.write_subset(str(lima), tmp_path / "sub.jsonl", 3)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows[:3]
    everything = read_conversations(str(quickstart.write_subset(str(lima), tmp_path / "all.jsonl")))
    assert len(everything.conversations) == 6 and len(everything.conversations[-1].turns) == 4


def test_short_prompts_and_the_table(shared_data):
    from lima_jax.data import Tokenizer

    tokenizer = Tokenizer.load(shared_data / "checkpoints" / "stories260K-hf" / "tokenizer.model")
    prompts = ["Hi", "word " * 300, "Tell me a story."]
    assert quickstart.short_prompts(prompts, tokenizer, 2, max_tokens=64) == ["Hi", "Tell me a story."]
    with pytest.raises(ValueError, match="only 2 of 3 prompts fit"):
        quickstart.short_prompts(prompts, tokenizer, 3, max_tokens=64)
    before = [quickstart.Answer("<b>x</b>", "length", 5)]
    after = [quickstart.Answer("y", "eot", 1)]
    table = quickstart.side_by_side_html(["a < b"], before, after)
    assert "&lt;b&gt;x&lt;/b&gt;" in table and "a &lt; b" in table and "stop: eot" in table
