"""Parity of lima_jax's LLaMA with transformers.LlamaForCausalLM, Hugging Face
import/export round trips, and the errors for checkpoints the model cannot hold."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from safetensors.numpy import load_file, save_file
from transformers import LlamaForCausalLM

from lima_jax import convert
from lima_jax.model import ConfigError, from_hf, load_hf_config, to_hf
from lima_jax.model.hf import CheckpointError
from tests.helpers.hf_reference import hf_greedy, hf_logits, make_hf_llama
from tests.helpers.model_helpers import forward, greedy_tokens

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

PARITY_CONFIGS = {
    "multi-head, untied": dict(num_attention_heads=4, num_key_value_heads=4),
    "grouped-query, untied": dict(num_attention_heads=8, num_key_value_heads=2),
    "grouped-query, tied": dict(num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=True),
    "theta 500000, llama3 scaling": dict(num_attention_heads=4, num_key_value_heads=2,
                                         rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
    "head_dim != D/N": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32),
}

TOKENS = np.random.RandomState(0).randint(0, 200, size=(2, 96))


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf_model = make_hf_llama(tmp_path, **PARITY_CONFIGS[name])
    reference = hf_logits(hf_model, TOKENS)
    model = from_hf(tmp_path)
    ours = forward(model, TOKENS)
    assert ours.shape == (2, 96, model.config.padded_vocab_size)
    diff = np.abs(ours[..., :200] - reference).max()
    print(f"parity [{name}]: max abs logit difference {diff:.2e} (logit scale {np.abs(reference).max():.1f})")
    assert diff <= 1e-4
    # The padded vocabulary columns can never win a softmax.
    assert (ours[..., 200:] < -1e30).all()


def test_llama3_scaling_changes_logits(tmp_path):
    """The rope-scaling parity case is only a check if scaling matters at this length."""
    scaled = make_hf_llama(tmp_path / "a", rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)
    plain = make_hf_llama(tmp_path / "b", rope_theta=500000.0)
    assert np.abs(hf_logits(scaled, TOKENS) - hf_logits(plain, TOKENS)).max() > 1e-2


def test_rope_parameters_of_transformers_5_are_read(tmp_path):
    make_hf_llama(tmp_path, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("rope_scaling", None)
    raw.pop("rope_theta", None)
    raw["rope_parameters"] = dict(LLAMA3_SCALING, rope_theta=500000.0)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = load_hf_config(tmp_path)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling.kind == "llama3" and config.rope_scaling.factor == 8.0


def test_bfloat16_import_is_close(tmp_path):
    hf_model = make_hf_llama(tmp_path)
    reference = hf_logits(hf_model, TOKENS)
    model = from_hf(tmp_path, dtype="bfloat16")
    assert model.embedding[...].dtype == jnp.bfloat16
    ours = forward(model, TOKENS)[..., :200]
    assert ours.dtype == np.float32
    # bf16 keeps ~3 significant digits: agreement, not identity.
    assert np.abs(ours - reference).mean() < 0.05 * np.abs(reference).mean()


def test_export_round_trip_gives_identical_transformers_logits(tmp_path):
    hf_model = make_hf_llama(tmp_path / "hf", num_attention_heads=8, num_key_value_heads=2)
    assert convert.main(["hf-to-lima", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert convert.main(["lima-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    back = LlamaForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    np.testing.assert_array_equal(hf_logits(back, TOKENS), hf_logits(hf_model, TOKENS))
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["vocab_size"] == 200 and exported["eos_token_id"] == 2


def test_sharded_safetensors_round_trip(tmp_path):
    """Export into several shards with an index, and import from that index."""
    hf_model = make_hf_llama(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    to_hf(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    again = from_hf(tmp_path / "sharded")
    np.testing.assert_array_equal(forward(again, TOKENS),
                                  forward(model, TOKENS))
    back = LlamaForCausalLM.from_pretrained(tmp_path / "sharded", attn_implementation="eager")
    np.testing.assert_array_equal(hf_logits(back.eval(), TOKENS), hf_logits(hf_model, TOKENS))


@pytest.mark.parametrize("tied", [False, True])
def test_eot_token_is_added_and_exported_as_eos(tmp_path, tied):
    hf_model = make_hf_llama(tmp_path / "hf", tie_word_embeddings=tied)
    reference = hf_logits(hf_model, TOKENS)
    model = from_hf(tmp_path / "hf", add_eot=True)
    config = model.config
    assert (config.vocab_size, config.eot_token_id, config.padded_vocab_size) == (201, 200, 256)
    ours = forward(model, TOKENS)
    assert np.abs(ours[..., :200] - reference).max() <= 1e-4
    assert (ours[..., 201:] < -1e30).all() and (ours[..., 200] > -1e30).all()
    table = np.asarray(model.embedding[...])
    np.testing.assert_allclose(table[200], table[:200].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not table[201:].any()

    # Make EOT the certain next token: the exported model must stop right there.
    if tied:
        model.embedding[...] = model.embedding[...].at[200].set(50.0)
    else:
        model.lm_head[...] = model.lm_head[...].at[:, 200].set(50.0)
    to_hf(model, tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert exported["vocab_size"] == 201
    assert exported["eos_token_id"] == [200, 2] and generation["eos_token_id"] == [200, 2]
    back = LlamaForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert hf_greedy(back, [1, 17, 42], max_new_tokens=20) == [200]


def _edit_config(directory, **changes):
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(model_type="qwen2"), "model_type"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling.rope_type"),
        (dict(num_key_value_heads=3), "n_kv_heads"),
    ],
)
def test_unrepresentable_config_is_refused_naming_the_field(tmp_path, changes, field):
    make_hf_llama(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_hf(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    make_hf_llama(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        from_hf(tmp_path)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    make_hf_llama(tmp_path)
    _edit_config(tmp_path, intermediate_size=80)
    with pytest.raises(CheckpointError) as err:
        from_hf(tmp_path)
    message = str(err.value)
    assert "model.layers.0.mlp.gate_proj.weight" in message
    assert "(96, 64)" in message and "(80, 64)" in message


def test_convert_cli_reports_errors_without_traceback(tmp_path, capsys):
    make_hf_llama(tmp_path)
    _edit_config(tmp_path, model_type="gpt2")
    assert convert.main(["hf-to-lima", "--hf", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "model_type" in capsys.readouterr().err


# ----------------------------------------------------------------- the real checkpoint


def test_stories260k_logits_and_greedy_tokens_match_transformers(stories):
    hf_model = LlamaForCausalLM.from_pretrained(stories, attn_implementation="eager").eval()
    model = from_hf(stories)
    assert model.config.n_kv_heads == 4 and model.config.tie_embeddings
    sp = spm.SentencePieceProcessor(model_file=str(stories / "tokenizer.model"))
    prompt = [sp.bos_id()] + sp.encode("Once upon a time, there was a little girl named Lily.")
    tokens = np.asarray([prompt + list(range(3, 60))])
    reference = hf_logits(hf_model, tokens)
    ours = forward(model, tokens)[..., :512]
    diff = np.abs(ours - reference).max()
    print(f"parity [stories260K]: max abs logit difference {diff:.2e}")
    assert diff <= 1e-4

    expected = hf_greedy(hf_model, prompt, max_new_tokens=64)
    produced = greedy_tokens(model, prompt, max_new_tokens=64, stop_ids={2})
    assert len(expected) == 64, "the reference story should run the full 64 tokens"
    assert produced == expected
    print("stories260K greedy:", sp.decode(produced))


def test_stories260k_export_generates_exactly_as_before(stories, tmp_path):
    hf_model = LlamaForCausalLM.from_pretrained(stories, attn_implementation="eager").eval()
    assert convert.main(["hf-to-lima", "--hf", str(stories), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "tokenizer.model").is_file()
    assert convert.main(["lima-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    back = LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens = np.asarray([[1] + list(range(10, 80))])
    np.testing.assert_array_equal(hf_logits(back, tokens), hf_logits(hf_model, tokens))
    prompt = [1, 403, 407, 261, 378]
    assert hf_greedy(back, prompt, 64) == hf_greedy(hf_model, prompt, 64)


def test_a_mistral_checkpoint_without_a_sliding_window_is_a_llama(tmp_path):
    """Mistral 7B v0.2/v0.3-style directories (model_type 'mistral', sliding_window null) read as
    LLaMA and give transformers' MistralForCausalLM logits; a real window is refused, named."""
    import json

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from lima_jax.model.config import ConfigError

    config = MistralConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=None, tie_word_embeddings=False, rope_theta=1e6)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf_model = MistralForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            param.copy_((1.0 + 0.2 * torch.randn_like(param)) if name.endswith("norm.weight")
                        else torch.randn_like(param) / np.sqrt(param.shape[-1]))
    hf_model.save_pretrained(tmp_path)
    diff = np.abs(forward(from_hf(tmp_path), TOKENS)[..., :200] - hf_logits(hf_model, TOKENS)).max()
    print(f"parity [mistral, no sliding window]: max abs logit difference {diff:.2e}")
    assert diff <= 1e-4

    raw = json.loads((tmp_path / "config.json").read_text())
    raw["sliding_window"] = 64
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="sliding_window.*64 is shorter than the context"):
        from_hf(tmp_path)
