"""Fine-tuning a checkpoint as users bring it: a Hugging Face Llama directory with a byte-level BPE
tokenizer.json and a ChatML chat template, trained with ``template=chat``, decoded, exported, and
read back by transformers (model and tokenizer) with the same greedy tokens.

Also: the checkpoint's tokenizer is the default (``data.tokenizer = ''``), a missing one stops the
run before any weight loads, a train/serve mismatch is refused, untrained rows are initialised,
and configs/llama3_8b.py plans with no tokenizer.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lima_jax.cli import load_config
from tests.helpers.hf_reference import make_hf_llama
from tests.helpers.tokenizer_fixtures import CHATML_TEMPLATE, byte_bpe_dir

REPO = pathlib.Path(__file__).resolve().parents[2]
SFT = str(REPO / "configs" / "sft.py")

QUESTIONS = ["Repeat the word apple.", "Sort: pear fig kiwi.", "Which is larger, 12 or 7?",
             "Say the last word of: the quick brown fox.", "Name a colour.", "Count to three."]
ANSWERS = ["apple", "fig kiwi pear", "12", "fox", "blue", "one two three"]


def _conversations(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)], ANSWERS[i % len(ANSWERS)]
        turns = [q, a] if i % 3 else [q, a, "And again?", a]
        out.append({"conversations": turns, "source": "test"})
    return out


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A tiny random HF Llama (GQA, tied embeddings) with the ChatML byte-BPE tokenizer beside it."""
    folder = tmp_path_factory.mktemp("own_ckpt")
    hf = folder / "hf"
    byte_bpe_dir(hf, "chatml", texts=QUESTIONS + ANSWERS, vocab_size=320)
    from lima_jax.data.tokenizer import Tokenizer

    size = Tokenizer.load(hf).base_vocab_size
    make_hf_llama(hf, vocab_size=size, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in _conversations(24)))
    return folder


def _config(folder: pathlib.Path, workdir: pathlib.Path, *overrides: str):
    return load_config(SFT, [
        f"workdir={workdir}", f"model.init_from={folder / 'hf'}", f"data.path={folder / 'train.jsonl'}",
        "model.residual_dropout=0.0", "model.remat=none", "model.param_dtype=float32", "model.dtype=float32",
        "data.max_len=64", "data.global_batch_size=8", "data.num_epochs=1", "train.max_steps=3",
        "optimizer.learning_rate=0.001", "optimizer.end_learning_rate=0.0001", "train.log_every=1",
        "checkpoint.async_save=False", *overrides])


def test_chat_template_run_trains_decodes_exports_and_transformers_agrees(own_checkpoint, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lima_jax.convert import lima_to_hf
    from lima_jax.decode.answer import answer_file
    from lima_jax.decode.sampling import SamplingConfig
    from lima_jax.train import train

    workdir, hf = tmp_path / "run", tmp_path / "hf"
    shutil.copytree(own_checkpoint / "hf", hf)
    # 8 epochs of 3 steps at a high learning rate: the model learns the answers and to end its turn.
    train(_config(own_checkpoint, workdir, f"model.init_from={hf}", "data.num_epochs=8", "train.max_steps=0",
                  "optimizer.learning_rate=0.01", "optimizer.end_learning_rate=0.001"))
    run_data = json.loads((workdir / "config.json").read_text())["data"]
    assert run_data["tokenizer"] == str(hf) and run_data["template"] == "chat"  # the checkpoint's own
    shutil.rmtree(hf)  # decoding and export need nothing but the run: its checkpoints carry the tokenizer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    out = tmp_path / "answers.jsonl"
    answer_file(prompts, out, ckpt=str(workdir), template="chat", sampling=SamplingConfig.greedy_config(),
                max_new_tokens=12, batch_size=2)
    answers = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    # <|im_end|> is both the template's end of turn and this tokenizer's EOS: reason 'eos'.
    assert sum(r["stop_reason"] in ("eot", "eos") for r in answers.values()) >= 4, answers

    export = tmp_path / "export"
    lima_to_hf(str(workdir), str(export))
    hf_tok = AutoTokenizer.from_pretrained(export)
    hf_model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    im_end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    eos = hf_model.generation_config.eos_token_id
    assert (eos[0] if isinstance(eos, list) else eos) == im_end  # the end of turn first
    for i, question in enumerate(QUESTIONS):
        prompt = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True)
        prompt = prompt["input_ids"] if not isinstance(prompt, list) else prompt
        with torch.no_grad():
            generated = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                          num_beams=1)[0, len(prompt):].tolist()
        ours = answers[str(i)]
        stop = {"eot": im_end, "eos": hf_tok.eos_token_id}.get(ours["stop_reason"])
        expected = ours["tokens"] + ([stop] if stop is not None else [])
        assert generated[:len(expected)] == expected, (question, generated, ours)
        if stop is not None:
            assert len(generated) == len(expected)  # transformers stopped where lima_jax stopped


def test_missing_tokenizer_stops_before_any_weight_loads(own_checkpoint, tmp_path, monkeypatch):
    import shutil

    from lima_jax.train import train
    from lima_jax.train.config import RunConfigError

    bare = tmp_path / "bare"
    shutil.copytree(own_checkpoint / "hf", bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bare / name).unlink(missing_ok=True)
    (bare / "model.safetensors").write_bytes(b"not read")  # a weight read would fail differently
    config = _config(own_checkpoint, tmp_path / "run", f"model.init_from={bare}")
    with pytest.raises(RunConfigError, match=r"data.tokenizer.*no tokenizer.json, tokenizer.model"):
        train(config)


def test_decode_hf_without_tokenizer_is_one_line_before_weights(own_checkpoint, tmp_path, capsys):
    import shutil

    from lima_jax.decode.cli import main

    bare = tmp_path / "bare"
    shutil.copytree(own_checkpoint / "hf", bare)
    (bare / "tokenizer.json").unlink()
    (bare / "model.safetensors").write_bytes(b"not read")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "1", "prompt": "hi"}) + "\n")
    code = main(["--hf", str(bare), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--greedy"])
    err = capsys.readouterr().err
    assert code == 2 and "no tokenizer.json, tokenizer.model or original/tokenizer.model" in err


def test_train_refuses_a_template_whose_prompt_is_not_the_training_prefix(own_checkpoint, tmp_path):
    """A template that writes the assistant header one way in training and another way as the
    generation prompt: decoding would serve a context training never showed."""
    from lima_jax.train import train
    from lima_jax.train.config import RunConfigError

    hf = tmp_path / "hf"
    import shutil

    shutil.copytree(own_checkpoint / "hf", hf)
    bad = CHATML_TEMPLATE.replace("{{ '<|im_start|>assistant\\n' }}{% endif %}",
                                  "{{ '<|im_start|>assistant\\n\\n' }}{% endif %}")
    assert bad != CHATML_TEMPLATE
    config_path = hf / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["chat_template"] = bad
    config_path.write_text(json.dumps(tok_config))
    (hf / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(RunConfigError, match="prefix"):
        train(_config(own_checkpoint, tmp_path / "run", f"model.init_from={hf}"))


def test_untrained_rows_of_needed_tokens_start_as_the_mean_row(own_checkpoint, caplog):
    import jax.numpy as jnp

    from lima_jax.model.vocab_rows import reinit_untrained_rows

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    table[7] = 1e-4  # never trained, as Llama 3 base's <|eot_id|>
    head = rng.normal(size=(8, 64)).astype(np.float32)
    head[:, 7] = 0.0
    params = {"embedding": jnp.asarray(np.pad(table, ((0, 14), (0, 0)))), "lm_head": jnp.asarray(head)}
    fixed_params, fixed = reinit_untrained_rows(params, [7, 3, 2], vocab_size=50)
    assert fixed == [7]
    np.testing.assert_allclose(np.asarray(fixed_params["embedding"][7]), table.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fixed_params["lm_head"][:, 7]), head[:, :50].mean(1), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(fixed_params["embedding"][3]), table[3])  # trained rows kept


def test_llama3_8b_plan_needs_no_tokenizer():
    from lima_jax.train.aot import compile_plan
    from lima_jax.train.config import validate_config

    config = load_config(str(REPO / "configs" / "llama3_8b.py"), [
        "compile_only=True", "model.n_layers=1", "model.dim=256", "model.n_heads=2", "model.n_kv_heads=1",
        "model.mlp_dim=512", "data.global_batch_size=8", "data.max_len=128", "train.grad_accum_steps=1",
        "mesh.fsdp=-1"])
    validate_config(config)
    report = compile_plan(config)
    assert report["per_device_gib"]["peak"] > 0
