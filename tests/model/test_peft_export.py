"""`python -m lima_jax.convert lima-to-peft`: a LoRA run's adapters as a PEFT adapter directory.

End to end: a tiny Hugging Face Llama with a byte-BPE tokenizer is fine-tuned with LoRA (rank 4,
no dropout, float32, a learning rate that moves the adapters) through `lima_jax.train.loop.train`;
the run is exported merged (`lima-to-hf`) and as adapters (`lima-to-peft`), and transformers'
merged model and PEFT's base + adapters give the same float32 logits (1e-4), the new end of
turn among the inputs. (a) a new EOT (data.template=lima, data.eot=new: trainable token rows)
with an untied output layer; (b) the chat template's own end of turn (no new rows), tied
embeddings. Also: a checkpoint without LoRA, and an --out that is someone's folder, stop with one
line before anything is written.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lima_jax.cli import load_config
from tests.helpers.hf_reference import make_hf_llama
from tests.helpers.tokenizer_fixtures import byte_bpe_dir

REPO = pathlib.Path(__file__).resolve().parents[2]
SFT = str(REPO / "configs" / "sft.py")
QUESTIONS = ["Repeat the word apple.", "Sort: pear fig kiwi.", "Which is larger, 12 or 7?", "Name a colour."]
ANSWERS = ["apple", "fig kiwi pear", "12", "blue"]


def _base(folder: pathlib.Path, tied: bool) -> pathlib.Path:
    """A tiny random HF Llama (GQA) with the ChatML byte-BPE tokenizer beside it."""
    from lima_jax.data.tokenizer import Tokenizer

    hf = folder / "hf"
    byte_bpe_dir(hf, "chatml", texts=QUESTIONS + ANSWERS, vocab_size=300)
    make_hf_llama(hf, vocab_size=Tokenizer.load(hf).base_vocab_size, tie_word_embeddings=tied, hidden_size=32,
                  intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  bos_token_id=1, eos_token_id=2)
    return hf


def _train(folder: pathlib.Path, hf: pathlib.Path, *overrides: str) -> pathlib.Path:
    from lima_jax.train.loop import train

    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"conversations": [q, a], "source": "test"}) + "\n"
                            for q, a in zip(QUESTIONS * 2, ANSWERS * 2)))
    workdir = folder / "run"
    train(load_config(SFT, [
        f"workdir={workdir}", f"model.init_from={hf}", f"data.path={data}", "model.residual_dropout=0.0",
        "model.remat=none", "model.param_dtype=float32", "model.dtype=float32", "model.scan_unroll=0",
        "data.max_len=48", "data.global_batch_size=8", "data.num_epochs=3", "train.max_steps=2",
        "train.eval_at_start=False", "optimizer.learning_rate=0.01", "optimizer.end_learning_rate=0.01",
        "checkpoint.async_save=False", "lora.rank=4", "lora.dropout=0.0", "lora.alpha=8.0", *overrides]))
    return workdir


@pytest.fixture(scope="module")
def new_eot_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft_new_eot")
    hf = _base(folder, tied=False)
    return hf, _train(folder, hf, "data.template=lima", "data.eot=new")


@pytest.fixture(scope="module")
def chat_eot_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft_chat_eot")
    hf = _base(folder, tied=True)
    return hf, _train(folder, hf)  # data.template=chat: <|im_end|> ends a turn, no new row


def _without_trained_rows(hf: pathlib.Path, out: pathlib.Path, token: str) -> pathlib.Path:
    """A copy of the Hugging Face base `hf` whose rows of `token` were never trained (norms near
    zero in both tables, as Llama 3's base models ship <|eot_id|>)."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(hf, out)
    token_id = AutoTokenizer.from_pretrained(hf).convert_tokens_to_ids(token)
    weights = load_file(out / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in weights:
            weights[name][token_id] = 1e-4
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def untrained_eot_run(tmp_path_factory):
    """The chat template's <|im_end|> ends each turn, and the (untied) base never trained its rows."""
    folder = tmp_path_factory.mktemp("peft_untrained_eot")
    hf = _without_trained_rows(_base(folder, tied=False), folder / "untrained", "<|im_end|>")
    return hf, _train(folder, hf)


def _logits(model, sequences: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].float().numpy() for s in sequences]


def _check_peft_matches_merged(hf: pathlib.Path, workdir: pathlib.Path, tmp_path: pathlib.Path, eot: int) -> dict:
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lima_jax.convert import main

    torch.set_num_threads(1)  # OpenMP threads crawl on a loaded 2-core machine
    merged_dir, peft_dir = tmp_path / "merged", tmp_path / "peft"
    assert main(["lima-to-hf", "--ckpt", str(workdir), "--out", str(merged_dir)]) == 0
    assert main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(peft_dir)]) == 0
    adapter_config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(hf)
    tensors = load_file(peft_dir / "adapter_model.safetensors")
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert max(np.abs(t).max() for k, t in tensors.items() if "lora_B" in k) > 1e-3  # the adapters moved

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    vocab = merged.config.vocab_size
    if vocab != base.config.vocab_size:  # the run's new EOT: the base grows a row first
        base.resize_token_embeddings(vocab)
    base_logits = _logits(base, [[5, 6, 7]])
    model = PeftModel.from_pretrained(base, peft_dir).eval()
    tok = AutoTokenizer.from_pretrained(peft_dir)  # the run's tokenizer travels with the adapters
    assert len(tok) == vocab and tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(eot)) == eot
    prompt = tok("Which is larger, 12 or 7?")["input_ids"]
    sequences = [prompt + [eot] + prompt[:3], [eot, 5, 6, eot, 7], [5, 6, 7]]
    ours, theirs = _logits(merged, sequences), _logits(model, sequences)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
    print(f"max |logit difference| merged vs PEFT: {worst:.3g}")
    assert worst < 1e-4, worst
    assert float(np.abs(theirs[-1] - base_logits[0]).max()) > 1e-2  # not the base's logits
    return {"config": adapter_config, "tensors": tensors, "worst": worst}


def test_new_eot_run_untied_peft_matches_merged(new_eot_run, tmp_path):
    hf, workdir = new_eot_run
    from lima_jax.checkpoint import read_train_meta, saved_steps

    meta = read_train_meta(list(saved_steps(workdir).values())[-1])
    eot = meta["model_config"]["eot_token_id"]
    assert meta["model_config"]["lora"]["token_ids"] == [eot] and not meta["model_config"]["tie_embeddings"]
    result = _check_peft_matches_merged(hf, workdir, tmp_path, eot)
    config, tensors = result["config"], result["tensors"]
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"])
    assert config["trainable_token_indices"] == {"embed_tokens": [eot], "lm_head": [eot]}
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 4)
    assert tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.lm_head.token_adapter.trainable_tokens_delta"].shape == (1, 32)
    assert tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"].shape == (1, 32)


def test_reused_eot_run_tied_peft_matches_merged(chat_eot_run, tmp_path):
    hf, workdir = chat_eot_run
    from transformers import AutoTokenizer

    eot = AutoTokenizer.from_pretrained(hf).convert_tokens_to_ids("<|im_end|>")
    result = _check_peft_matches_merged(hf, workdir, tmp_path, eot)
    assert result["config"]["trainable_token_indices"] is None
    assert not any("token_adapter" in key for key in result["tensors"])


def test_bfloat16_and_replacing_an_earlier_export(chat_eot_run, tmp_path):
    from safetensors.numpy import load_file

    from lima_jax.convert import main

    _, workdir = chat_eot_run
    out = tmp_path / "peft"
    assert main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(out)]) == 0
    assert main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(out), "--dtype", "bfloat16"]) == 0
    tensors = load_file(out / "adapter_model.safetensors")
    assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}


def test_errors_are_one_line_before_anything_is_written(chat_eot_run, tmp_path, capsys):
    from lima_jax.convert import main

    hf, workdir = chat_eot_run
    out = tmp_path / "peft"
    # A Hugging Face directory or model checkpoint holds merged weights: lima-to-hf's business.
    assert main(["lima-to-peft", "--ckpt", str(hf), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(hf) in err and "lima-to-hf" in err and not out.exists()
    # Someone's folder is never replaced; a merged export is not an adapter directory either.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(mine) in err and "not empty" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["lima-to-peft", "--ckpt", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "neither a training step" in capsys.readouterr().err and not out.exists()


def test_a_checkpoint_without_lora_or_init_from_says_so(chat_eot_run, tmp_path, capsys, monkeypatch):
    from lima_jax import convert
    from lima_jax.checkpoint import read_train_meta, saved_steps

    _, workdir = chat_eot_run
    meta = read_train_meta(list(saved_steps(workdir).values())[-1])
    full = json.loads(json.dumps(meta))
    full["model_config"]["lora"] = None
    monkeypatch.setattr(convert, "read_train_meta", lambda _: full)
    assert convert.main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not LoRA adapters" in err and "lima-to-hf" in err
    bare = json.loads(json.dumps(meta))
    bare["config"]["model"]["init_from"] = ""
    monkeypatch.setattr(convert, "read_train_meta", lambda _: bare)
    assert convert.main(["lima-to-peft", "--ckpt", str(workdir), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.init_from" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rows_the_run_reinitialised_in_its_base_travel_as_trainable_tokens(chat_eot_run, tmp_path):
    """A reused end of turn the base never trained (Llama 3's <|eot_id|>): the run set its rows to
    the mean in the frozen base; PEFT's copy of the base lacks that, so the export carries them."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from lima_jax import convert
    from lima_jax.checkpoint import read_train_meta, saved_steps
    from lima_jax.model.config import LlamaConfig
    from lima_jax.model.peft import write_peft
    from lima_jax.train.base_weights import LORA_BASE_META, lora_base_params

    hf, workdir = chat_eot_run
    meta = read_train_meta(list(saved_steps(workdir).values())[-1])
    config = LlamaConfig.from_dict(meta["model_config"])
    eot = config.eot_token_id
    assert eot in meta[LORA_BASE_META]["needed_ids"]
    assert convert._reinitialised_rows(meta, config) is None  # every row of the random base is trained
    untrained = tmp_path / "hf"
    shutil.copytree(hf, untrained)
    weights = load_file(untrained / "model.safetensors")
    weights["model.embed_tokens.weight"][eot] = 1e-4
    save_file(weights, str(untrained / "model.safetensors"), metadata={"format": "pt"})
    meta["config"]["model"]["init_from"] = str(untrained)
    rows = convert._reinitialised_rows(meta, config)
    assert rows["ids"] == [eot] and "lm_head" not in rows  # tied: one table
    run_base = np.asarray(lora_base_params(meta, config)["embedding"])
    np.testing.assert_array_equal(rows["embedding"][0], run_base[eot])  # the row the run trained on
    adapters, _, _ = convert._read_adapters(list(saved_steps(workdir).values())[-1])
    out = write_peft(adapters, config, tmp_path / "peft", base_model=str(untrained), base_rows=rows)
    tensors = load_file(out / "adapter_model.safetensors")
    assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"] == {"embed_tokens": [eot]}
    np.testing.assert_array_equal(tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"],
                                  rows["embedding"])


def test_a_quantized_base_exports_with_a_warning(tmp_path, caplog):
    from flax import nnx

    from lima_jax.model import lora as lora_lib
    from lima_jax.model.config import LlamaConfig, LoraSpec
    from lima_jax.model.llama import abstract_model
    from lima_jax.model.peft import write_peft

    config = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64,
                         lora=LoraSpec(rank=2, base_dtype="int8", targets=("q", "down")))
    abstract = lora_lib.trainable(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    adapters = {"layers": {m: {k: np.ones(v.shape, np.float32) for k, v in names.items()}
                           for m, names in abstract["layers"].items()}}
    with caplog.at_level("WARNING"):
        write_peft(adapters, config, tmp_path / "peft", base_model="/base")
    assert "int8-quantized base" in caplog.text
    written = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert written["target_modules"] == ["q_proj", "down_proj"] and written["r"] == 2


def test_rows_the_base_never_trained_train_beside_the_adapters(untrained_eot_run, tmp_path):
    """A reused end of turn whose rows the base never trained starts as the mean row (as a new EOT)
    and, under LoRA, trains with the adapters (both tables); the export carries the trained rows
    as PEFT trainable tokens, and PEFT on the untouched base gives the merged export's logits."""
    from lima_jax import convert
    from lima_jax.checkpoint import read_train_meta, saved_steps
    from lima_jax.model.config import LlamaConfig
    from lima_jax.model.hf import load_hf_config
    from lima_jax.train.base_weights import reinitialised_rows

    hf, workdir = untrained_eot_run
    step = list(saved_steps(workdir).values())[-1]
    meta = read_train_meta(step)
    config = LlamaConfig.from_dict(meta["model_config"])
    eot = config.eot_token_id
    assert config.lora.token_ids == (eot,) and eot < load_hf_config(hf).vocab_size  # a base row, not a new one
    start = reinitialised_rows(hf, config, [eot])  # the mean rows the run started from
    assert start["ids"] == [eot]
    adapters, _, _ = convert._read_adapters(step)
    trained_embedding = np.asarray(adapters["token_rows"], np.float32)[0]
    trained_head = np.asarray(adapters["token_head"], np.float32)[:, 0]
    assert np.abs(trained_embedding - start["embedding"][0]).max() > 1e-3  # they trained
    assert np.abs(trained_head - start["lm_head"][0]).max() > 1e-3
    assert convert._reinitialised_rows(meta, config) is None  # nothing left frozen at the mean
    result = _check_peft_matches_merged(hf, workdir, tmp_path, eot)
    assert result["config"]["trainable_token_indices"] == {"embed_tokens": [eot], "lm_head": [eot]}
    np.testing.assert_allclose(
        result["tensors"]["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"][0],
        trained_embedding)


def test_a_lima_checkpoint_base_reinitialises_the_rows_a_hugging_face_one_does(untrained_eot_run, tmp_path):
    from transformers import AutoTokenizer

    from lima_jax.convert import main
    from lima_jax.model.hf import load_hf_config
    from lima_jax.train.base_weights import reinitialised_rows

    hf, _ = untrained_eot_run
    assert main(["hf-to-lima", "--hf", str(hf), "--out", str(tmp_path / "lima")]) == 0
    config = load_hf_config(hf)
    eot = AutoTokenizer.from_pretrained(hf).convert_tokens_to_ids("<|im_end|>")
    # Of the ids a run needs, the untrained one is found and the trained ones (BOS, EOS) are not.
    from_hf_dir, from_lima = (reinitialised_rows(path, config, [1, 2, eot]) for path in (hf, tmp_path / "lima"))
    assert from_hf_dir["ids"] == from_lima["ids"] == [eot]
    for table in ("embedding", "lm_head"):
        np.testing.assert_array_equal(from_hf_dir[table], from_lima[table])



def test_a_resumed_run_trains_the_same_base_rows_bit_for_bit(untrained_eot_run, tmp_path):
    """Resuming finds the same untrained rows in the base again and continues them exactly."""
    import jax

    from lima_jax.checkpoint import saved_steps
    from lima_jax.convert import _read_adapters

    hf, _ = untrained_eot_run
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole = _train(tmp_path / "whole", hf, "train.max_steps=3")
    cut = _train(tmp_path / "cut", hf)
    _train(tmp_path / "cut", hf, "train.max_steps=3", "resume=True")
    assert max(saved_steps(whole)) == max(saved_steps(cut)) == 3
    a, b = (_read_adapters(saved_steps(workdir)[3])[0] for workdir in (whole, cut))
    assert set(a) == set(b) == {"layers", "token_rows", "token_head"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
