"""`python -m lima_jax.convert` never deletes what it did not write, and a safetensors file a
download cut short is one line naming it: --out that holds other data, or is a file, is refused
before anything is read; a checkpoint of the kind the command writes is replaced as before.

The tokenizer travels: hf-to-lima keeps every tokenizer file of the source, and lima-to-hf writes
one that transformers' AutoTokenizer reads and encodes exactly as lima_jax does (SentencePiece,
tokenizer.json, Meta's Llama 3 tiktoken file; a new EOT as the special token <EOT>), with the end of
turn first in eos_token_id so that transformers' generate stops where lima_jax stops."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from lima_jax import convert
from lima_jax.checkpoint import save_model
from lima_jax.data.tokenizer import EOT_PIECE, Tokenizer
from lima_jax.decode.cli import main as decode_main
from lima_jax.errors import InputError
from lima_jax.model import from_hf, to_hf
from lima_jax.model.hf import CheckpointError
from tests.data.test_tokenizer_export import EDGE_TEXTS, assert_encodes_as, lima_texts
from tests.helpers.hf_reference import make_hf_llama
from tests.helpers.tokenizer_fixtures import byte_bpe_dir, llama3_json_dir


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("hf")
    make_hf_llama(path, num_hidden_layers=1)
    return path


def _someones_data(folder: pathlib.Path) -> dict[str, bytes]:
    (folder / "params").mkdir(parents=True)
    (folder / "params" / "notes.txt").write_text("a week of work")
    (folder / "results.csv").write_text("a,b\n1,2\n")
    return _snapshot(folder)


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_hf_to_lima_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, hf_dir, capsys):
    out = tmp_path / "mine"
    before = _someones_data(out)
    assert convert.main(["hf-to-lima", "--hf", str(hf_dir), "--out", str(out)]) == 2
    assert _one_line_error(capsys) == (
        f"error: {out}: is not empty and not a lima_jax model checkpoint (model_config.json + params/) "
        "(choose a new or empty folder; nothing was written)")
    assert _snapshot(out) == before
    # Refused before the Hugging Face directory is even read.
    assert convert.main(["hf-to-lima", "--hf", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "is not empty" in _one_line_error(capsys)
    # From Python, save_model itself refuses.
    with pytest.raises(InputError, match="not a lima_jax model checkpoint"):
        save_model(from_hf(hf_dir), out)
    assert _snapshot(out) == before


def test_hf_to_lima_replaces_its_own_checkpoint_and_fills_an_empty_folder(tmp_path, hf_dir):
    out = tmp_path / "ckpt"
    out.mkdir()
    assert convert.main(["hf-to-lima", "--hf", str(hf_dir), "--out", str(out)]) == 0
    assert convert.main(["hf-to-lima", "--hf", str(hf_dir), "--out", str(out), "--add-eot"]) == 0
    assert json.loads((out / "model_config.json").read_text())["eot_token_id"] == 200


def test_out_that_is_a_file_is_one_line(tmp_path, hf_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    for command in (["hf-to-lima", "--hf", str(hf_dir)], ["lima-to-hf", "--ckpt", str(tmp_path)],
                    ["llama2c-to-hf", "--bin", str(tmp_path / "x.bin")]):
        assert convert.main([*command, "--out", str(blocker)]) == 2
        assert _one_line_error(capsys) == f"error: {blocker}: is a file; --out names a folder"
        assert convert.main([*command, "--out", str(blocker / "sub")]) == 2
        assert f"cannot be created: {blocker} is a file" in _one_line_error(capsys)
    assert blocker.read_text() == "keep me"
    with pytest.raises(InputError, match="is a file; a model checkpoint is a folder"):
        save_model(from_hf(hf_dir), blocker)


def test_to_hf_commands_refuse_a_folder_that_is_not_a_model_directory(tmp_path, hf_dir, capsys):
    ckpt = tmp_path / "ckpt"
    assert convert.main(["hf-to-lima", "--hf", str(hf_dir), "--out", str(ckpt)]) == 0
    capsys.readouterr()  # its progress lines
    workdir = tmp_path / "run"  # a training workdir holds a config.json too
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    for out in (ckpt, workdir):
        before = _snapshot(out)
        assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(out)]) == 2
        assert "is not empty and not a Hugging Face model directory" in _one_line_error(capsys)
        assert convert.main(["llama2c-to-hf", "--bin", str(tmp_path / "x.bin"), "--out", str(out)]) == 2
        assert "is not empty and not a Hugging Face model directory" in _one_line_error(capsys)
        assert _snapshot(out) == before
    exported = tmp_path / "exported"
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(exported)]) == 0
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(exported)]) == 0  # replaced


def _truncate(path: pathlib.Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path, capsys):
    hf = tmp_path / "hf"
    make_hf_llama(hf, num_hidden_layers=1, vocab_size=400)
    byte_bpe_dir(hf, "chatml")  # decoding reads the tokenizer before any weight
    _truncate(hf / "model.safetensors")
    capsys.readouterr()  # transformers' progress bar
    out = tmp_path / "ckpt"
    assert convert.main(["hf-to-lima", "--hf", str(hf), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {hf / 'model.safetensors'}: not a readable safetensors file")
    assert not out.exists()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    assert decode_main(["--hf", str(hf), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                        "--quiet"]) == 2
    assert f"{hf / 'model.safetensors'}: not a readable safetensors file" in _one_line_error(capsys)
    (hf / "model.safetensors").write_bytes(b"\x00" * 64)  # not safetensors at all
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        from_hf(hf)


def test_a_truncated_shard_or_a_broken_index_is_named(tmp_path, hf_dir, capsys):
    sharded = tmp_path / "sharded"
    to_hf(from_hf(hf_dir), sharded, max_shard_bytes=20_000)
    shard = sorted(sharded.glob("model-*-of-*.safetensors"))[-1]
    _truncate(shard, 0.9)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a readable safetensors file"):
        from_hf(sharded)
    index = sharded / "model.safetensors.index.json"
    index.write_text(index.read_text()[:40])
    assert convert.main(["hf-to-lima", "--hf", str(sharded), "--out", str(tmp_path / "c")]) == 2
    assert f"{index}: not a safetensors index" in _one_line_error(capsys)


# --------------------------------------------------------------------------- the tokenizer travels


def _hf_model_with_tokenizer(out: pathlib.Path, tokenizer_dir: pathlib.Path, **config) -> pathlib.Path:
    """A tiny random HF Llama (untied) whose vocabulary is the tokenizer's, the tokenizer's files beside it."""
    size = Tokenizer.load(tokenizer_dir).base_vocab_size
    make_hf_llama(out, vocab_size=size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, **config)
    for path in tokenizer_dir.iterdir():
        if path.is_file() and path.name != "README.md":
            shutil.copyfile(path, out / path.name)
    return out


def _read(folder: pathlib.Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _assert_token_ids(export: pathlib.Path, **expected) -> None:
    """config.json and generation_config.json name these ids (the end of turn first in eos)."""
    config, generation = _read(export, "config.json"), _read(export, "generation_config.json")
    for key, value in expected.items():
        assert config.get(key) == value, (key, config.get(key))
        if key != "unk_token_id":
            assert generation.get(key) == value, (key, generation.get(key))


def _greedy_after_rigging(export: pathlib.Path, token_id: int, prompt: list[int]) -> list[int]:
    """transformers' greedy generation from the export with its weights rigged so that `token_id`
    is always the argmax (every position holds the same vector, whose logit is largest for it): a
    generate that stops at `token_id` returns it alone, one that does not runs on."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export).eval()
    assert model.generation_config.eos_token_id == _read(export, "generation_config.json")["eos_token_id"]
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id] = model.model.norm.weight
        out = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, num_beams=1)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def chatml_hf(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("chatml")
    return _hf_model_with_tokenizer(folder / "hf", byte_bpe_dir(folder / "tok", "chatml"),
                                    bos_token_id=1, eos_token_id=2)


def test_hf_to_lima_keeps_every_tokenizer_file_and_lima_to_hf_registers_a_new_eot(tmp_path, chatml_hf):
    from transformers import AutoTokenizer

    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    assert convert.main(["hf-to-lima", "--hf", str(chatml_hf), "--out", str(ckpt), "--add-eot"]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (ckpt / name).read_bytes() == (chatml_hf / name).read_bytes(), name
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    tok = Tokenizer.load(chatml_hf)  # the new EOT: id 400, the tokenizer's size
    hf_tok = AutoTokenizer.from_pretrained(export)
    assert_encodes_as(hf_tok, tok, lima_texts(None))
    assert hf_tok.convert_tokens_to_ids(EOT_PIECE) == tok.eot_id == 400
    assert (hf_tok.eos_token, hf_tok.chat_template) == ("<|im_end|>", tok.chat_template)  # as they came
    _assert_token_ids(export, bos_token_id=1, eos_token_id=[400, 2], pad_token_id=0, unk_token_id=0)
    assert _greedy_after_rigging(export, 400, tok.encode("Hi")) == [400]  # stops at the end of turn
    assert _greedy_after_rigging(export, 2, tok.encode("Hi")) == [2]  # and at EOS
    # Read back (decode --hf, or init_from for more training): its <EOT> is the end of turn, no new row.
    from lima_jax.decode.load import load_for_decoding

    model, back = load_for_decoding(hf=str(export), add_eot=True)
    assert (back.eot, back.eot_id, model.config.vocab_size) == (EOT_PIECE, 400, 401)
    # Without the EOT the model's end is EOS alone, and the tokenizer files come unchanged.
    assert convert.main(["hf-to-lima", "--hf", str(chatml_hf), "--out", str(ckpt)]) == 0
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    assert (export / "tokenizer.json").read_bytes() == (chatml_hf / "tokenizer.json").read_bytes()
    _assert_token_ids(export, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_a_training_runs_reused_end_of_turn(tmp_path, chatml_hf, monkeypatch):
    """A run with eot <|im_end|> (the tokenizer's EOS here): no new token, the files as they came."""
    from transformers import AutoTokenizer

    tok = Tokenizer.load(chatml_hf, eot="<|im_end|>")
    model = from_hf(chatml_hf, eot_token_id=tok.eot_id)
    monkeypatch.setattr(convert, "load_for_decoding", lambda ckpt: (model, tok))
    run, export = tmp_path / "run", tmp_path / "export"
    run.mkdir()
    convert.lima_to_hf(str(run), str(export))
    assert (export / "tokenizer.json").read_bytes() == (chatml_hf / "tokenizer.json").read_bytes()
    hf_tok = AutoTokenizer.from_pretrained(export)
    assert_encodes_as(hf_tok, tok, EDGE_TEXTS)
    assert hf_tok.convert_tokens_to_ids("<|im_end|>") == 2 and len(hf_tok) == 400
    _assert_token_ids(export, bos_token_id=1, eos_token_id=2, pad_token_id=0, unk_token_id=0)
    assert _greedy_after_rigging(export, 2, tok.encode("Hi")) == [2]


def test_a_tokenizer_lima_jax_cannot_read_travels_as_it_is(tmp_path, chatml_hf, capsys):
    hf, ckpt, export = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "export"
    shutil.copytree(chatml_hf, hf)
    config = _read(hf, "tokenizer_config.json")
    del config["eos_token"]  # lima_jax needs an EOS; the files still belong with the model
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    assert convert.main(["hf-to-lima", "--hf", str(hf), "--out", str(ckpt)]) == 0
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (export / name).read_bytes() == (hf / name).read_bytes(), name
    err = capsys.readouterr().err
    assert err.count("names no EOS token") == 2 and "copied as they are" in err


def test_a_tokenizer_the_model_cannot_embed_stops_before_writing(tmp_path, hf_dir, chatml_hf, capsys):
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    save_model(from_hf(hf_dir), ckpt, tokenizer=Tokenizer.load(chatml_hf))  # 200 ids, a tokenizer of 400
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 2
    assert _one_line_error(capsys) == (f"error: {ckpt}: the tokenizer has 400 ids, the model embeds 200 "
                                       "(the tokenizer is not the model's)")
    assert not export.exists()


def test_sentencepiece_model_with_a_new_eot(tmp_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = shared_data / "checkpoints" / "stories260K-hf"
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    assert convert.main(["hf-to-lima", "--hf", str(source), "--out", str(ckpt), "--add-eot"]) == 0
    assert (ckpt / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    tok = Tokenizer.load(source)
    hf_tok = AutoTokenizer.from_pretrained(export)
    assert_encodes_as(hf_tok, tok, lima_texts(shared_data))
    assert hf_tok.convert_tokens_to_ids(EOT_PIECE) == tok.eot_id == 512
    assert hf_tok.encode(f"Once{EOT_PIECE}", add_special_tokens=False)[-1] == 512
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.unk_token_id) == (1, 2, 0)
    _assert_token_ids(export, bos_token_id=1, eos_token_id=[512, 2], pad_token_id=0, unk_token_id=0)
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.generation_config.eos_token_id == [512, 2] and model.config.vocab_size == 513


@pytest.fixture(scope="module")
def llama3_weights(tmp_path_factory) -> pathlib.Path:
    """A tiny random HF Llama with Llama 3's vocabulary (128,256 ids), no tokenizer yet."""
    out = tmp_path_factory.mktemp("llama3_weights")
    make_hf_llama(out, vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, bos_token_id=128000, eos_token_id=128001)
    return out


def _llama3_hf(weights: pathlib.Path, tokenizer_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    shutil.copytree(weights, out)
    for path in tokenizer_dir.iterdir():
        if path.is_file() and path.name != "README.md":
            shutil.copyfile(path, out / path.name)
    return out


def test_llama3_tiktoken_with_a_new_eot(tmp_path, shared_data, llama3_weights):
    from transformers import AutoTokenizer

    source = shared_data / "tokenizer" / "llama3"
    hf = _llama3_hf(llama3_weights, source, tmp_path / "hf")
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    assert convert.main(["hf-to-lima", "--hf", str(hf), "--out", str(ckpt), "--add-eot"]) == 0
    assert (ckpt / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    assert (ckpt / "chat_template.jinja").is_file()
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    # transformers reads a tokenizer.json converted from Meta's file, kept as original/tokenizer.model.
    assert (export / "original" / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    tok = Tokenizer.load(source)
    hf_tok = AutoTokenizer.from_pretrained(export)
    assert_encodes_as(hf_tok, tok, lima_texts(shared_data, n=20))
    assert hf_tok.convert_tokens_to_ids(EOT_PIECE) == tok.eot_id == 128256
    assert hf_tok.chat_template == tok.chat_template
    _assert_token_ids(export, bos_token_id=128000, eos_token_id=[128256, 128001], pad_token_id=128004)
    assert "unk_token_id" not in _read(export, "config.json")
    assert _greedy_after_rigging(export, 128256, tok.encode("Hi")) == [128256]


def test_llama3_tokenizer_json_with_a_reused_eot(tmp_path, shared_data, llama3_weights):
    from transformers import AutoTokenizer

    tokenizer_dir = llama3_json_dir(shared_data, tmp_path / "tok")
    hf = _llama3_hf(llama3_weights, tokenizer_dir, tmp_path / "hf")
    ckpt, export = tmp_path / "ckpt", tmp_path / "export"
    assert convert.main(["hf-to-lima", "--hf", str(hf), "--out", str(ckpt)]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (ckpt / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name
    config = _read(ckpt, "model_config.json")  # a model fine-tuned with <|eot_id|> as its end of turn
    (ckpt / "model_config.json").write_text(json.dumps({**config, "eot_token_id": 128009}))
    assert convert.main(["lima-to-hf", "--ckpt", str(ckpt), "--out", str(export)]) == 0
    assert (export / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    tok = Tokenizer.load(tokenizer_dir, eot="<|eot_id|>")
    hf_tok = AutoTokenizer.from_pretrained(export)
    assert_encodes_as(hf_tok, tok, EDGE_TEXTS)
    assert hf_tok.eos_token == "<|end_of_text|>"  # the tokenizer's EOS, as it came
    _assert_token_ids(export, bos_token_id=128000, eos_token_id=[128009, 128001], pad_token_id=128004)
    assert _greedy_after_rigging(export, 128009, tok.encode("Hi")) == [128009]
