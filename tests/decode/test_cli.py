"""`python -m lima_jax.decode`: prompt file formats, the URIAL template, output lines and
resume on stories260K, and decoding straight from a training run's checkpoint."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from lima_jax.decode.cli import main
from lima_jax.decode.prompts import (
    PromptError,
    cut_at_stop_strings,
    encode_for_template,
    read_prompts,
    urial_text,
)

FIELDS = {"id", "sample", "prompt", "text", "tokens", "num_tokens", "stop_reason"}


def _write(path: pathlib.Path, records) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_read_prompts_every_format(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"conversations": ["lima prompt", "answer"], "source": "x"},
        {"id": "k1", "prompt": "koala"},
        {"question_id": 7, "text": "vicuna", "category": "generic"},
        {"id": "s1", "instruction": "self-instruct", "instances": [{"input": "the input", "output": ""}]},
        {"idx": 3, "Instruction": "wizard"},
    ])
    prompts = read_prompts(path)
    assert [(p.id, p.text) for p in prompts] == [
        ("0", "lima prompt"), ("k1", "koala"), ("7", "vicuna"),
        ("s1", "self-instruct\n\nthe input"), ("3", "wizard")]
    _write(path, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(PromptError, match=r"p.jsonl:2: id 'a' already used on line 1"):
        read_prompts(path)
    _write(path, [{"id": "a", "question": "x"}])
    with pytest.raises(PromptError, match=r"p.jsonl:1: no prompt field"):
        read_prompts(path)
    _write(path, [{"id": "a", "instruction": "x", "instances": ["not an object"]}])
    with pytest.raises(PromptError, match=r"p.jsonl:1: 'instances\[0\]' must be an object"):
        read_prompts(path)


def test_read_the_shared_eval_and_lima_prompt_files(shared_data):
    files = sorted((shared_data / "eval_prompts").glob("*.jsonl")) + [shared_data / "lima" / "test.jsonl"]
    for path in files:
        prompts = read_prompts(path)
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert len(prompts) == len(lines) > 0, path
        assert all(p.text.strip() for p in prompts), path


def test_urial_prompt_has_three_examples_before_the_query(shared_data):
    from lima_jax.data import Tokenizer

    text = urial_text("How do magnets work?")
    assert text.count("# Query:") == 4 and text.count("# Answer:") == 4
    assert text.endswith("# Query:\nHow do magnets work?\n\n# Answer:\n")
    tok = Tokenizer.load(shared_data / "checkpoints" / "stories260K-hf" / "tokenizer.model")
    ids = encode_for_template("How do magnets work?", tok, "urial")
    assert ids[0] == tok.bos_id and tok.decode(ids).rstrip().endswith("# Answer:")
    assert cut_at_stop_strings("Magnets pull.\n\n# Query:\nnext", "urial") == ("Magnets pull.", True)
    assert cut_at_stop_strings("a # Query: b", "raw") == ("a # Query: b", False)


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_every_field_and_resumes(shared_data, tmp_path):
    ckpt = shared_data / "checkpoints" / "stories260K-hf"
    prompts = _write(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": t} for i, t in
                                            enumerate(["Once upon a time", "The dog", "Tim saw"])])
    out = tmp_path / "out.jsonl"
    common = ["--hf", str(ckpt), "--prompts", str(prompts), "--out", str(out), "--template", "raw",
              "--max-new-tokens", "8", "--batch-size", "2", "--quiet", "--seed", "1"]
    assert main(common) == 0
    first = _lines(out)
    assert len(first) == 3 and all(set(r) == FIELDS for r in first)
    assert {r["id"] for r in first} == {"q0", "q1", "q2"}
    for r in first:
        assert r["num_tokens"] == len(r["tokens"]) <= 8
        assert r["stop_reason"] in ("eos", "length")
    with out.open("a") as f:
        f.write('{"id": "q0", "sam')  # a torn line from an interrupted run
    assert main(common + ["--num-samples", "2"]) == 0
    second = _lines(out)
    assert second[:3] == first  # kept, not redone
    assert (tmp_path / "out.jsonl.torn-1").read_text() == '{"id": "q0", "sam'  # set aside, not dropped
    assert sorted((r["id"], r["sample"]) for r in second) == [(f"q{i}", s) for i in range(3) for s in (0, 1)]
    by_key = {(r["id"], r["sample"]): r["tokens"] for r in second}
    assert by_key[("q0", 0)] != by_key[("q0", 1)]  # sampled: another sample, another text


def test_decode_from_a_training_checkpoint(tmp_path):
    from lima_jax.decode.load import load_for_decoding
    from lima_jax.train import train
    from tests.helpers.train_configs import tiny_config

    workdir = tmp_path / "run"
    train(tiny_config(workdir, tmp_path / "data", train__max_steps=2, train__eval_data=""))
    step_dir = workdir / "checkpoints" / "2"
    assert step_dir.is_dir()
    model, tokenizer = load_for_decoding(ckpt=str(workdir))
    saved = ocp.StandardCheckpointer().restore(step_dir / "state")["params"]
    ours = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ours, saved)
    assert model.config.eot_token_id == tokenizer.eot_id

    prompts = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hello there"}])
    out = tmp_path / "out.jsonl"
    assert main(["--ckpt", str(step_dir), "--prompts", str(prompts), "--out", str(out), "--greedy",
                 "--max-new-tokens", "6", "--batch-size", "1", "--quiet"]) == 0
    (record,) = _lines(out)
    assert record["id"] == "a" and record["stop_reason"] in ("eot", "eos", "length")
    assert tokenizer.eot_id not in record["tokens"]


def test_a_prompt_longer_than_the_context_gets_a_counted_empty_answer(shared_data, tmp_path, capsys):
    stories = shared_data / "checkpoints" / "stories260K-hf"
    prompts = _write(tmp_path / "p.jsonl", [{"id": "long", "prompt": "Once upon a time " * 200},
                                            {"id": "short", "prompt": "Once upon a time"}])
    out = tmp_path / "out.jsonl"
    assert main(["--hf", str(stories), "--template", "raw", "--greedy", "--max-new-tokens", "4",
                 "--prompts", str(prompts), "--out", str(out), "--quiet"]) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["long"]["stop_reason"] == "prompt_too_long" and rows["long"]["text"] == ""
    assert rows["short"]["num_tokens"] == 4
    assert "1 prompt(s) have max_seq_len=512 tokens or more" in capsys.readouterr().err


def test_bad_input_is_an_error_not_a_traceback(tmp_path, capsys):
    prompts = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
    assert main(["--hf", str(tmp_path / "missing"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "error: --hf" in capsys.readouterr().err


def test_template_chat_is_an_option_and_urial_needs_no_bos(tmp_path):
    from lima_jax.data import Tokenizer
    from lima_jax.decode.cli import build_parser
    from tests.helpers.tokenizer_fixtures import byte_bpe_dir

    args = build_parser().parse_args(["--hf", "x", "--prompts", "p", "--out", "o", "--template", "chat"])
    assert args.template == "chat"
    tok = Tokenizer.load(byte_bpe_dir(tmp_path / "bpe", "chatml"))
    files = dict(tok.files)
    config = json.loads(files["tokenizer_config.json"])
    del config["bos_token"]
    files["tokenizer_config.json"] = json.dumps(config).encode()
    no_bos = Tokenizer(files, tok.path)
    assert encode_for_template("Hi", no_bos, "urial") == no_bos.encode(urial_text("Hi"))
    assert encode_for_template("Hi", no_bos, "chat") == no_bos.encode_special(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
