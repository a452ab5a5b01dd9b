"""The data report (Table 1) and its CLI, on a small file and on the real LIMA train set."""

import json

import numpy as np
import pytest

from lima_jax.data.__main__ import main as cli_main
from lima_jax.data.tokenizer import Tokenizer
from tests.helpers.data_fixtures import tiny


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")


def run_cli(capsys, *args):
    code = cli_main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_report_counts_and_statistics(tok, capsys):
    path = str(tiny.FIXTURES / "lima.jsonl")
    report = json.loads(run_cli(capsys, "report", "--data", path, "--tokenizer", tok.path,
                                "--max-len", "64", "--json"))
    assert {k: v["examples"] for k, v in report["sources"].items()} == {
        "multi_turn": 2, "stackexchange": 2, "authors": 1, "nlp": 1, "wikihow": 1, "writingprompts": 1}
    assert report["sources"]["multi_turn"]["turns"] == 7
    assert report["trailing_user_turns_removed"] == 1
    # Prompt/response statistics are the encoded counts, checked here for one source.
    texts = ["Name three primary colors.", "Red, yellow and blue."]
    prompt = 1 + len(tok.encode(texts[0])) + 1  # BOS, text, EOT
    response = len(tok.encode(texts[1])) + 1
    nlp = report["sources"]["nlp"]
    assert (nlp["prompt_tokens"]["max"], nlp["response_tokens"]["max"]) == (prompt, response)
    assert nlp["tokens"] == prompt + response and nlp["loss_tokens"] == response
    assert report["tokens"] == sum(s["tokens"] for s in report["sources"].values())
    assert report["all"]["examples"] == 8 and report["skipped"]["total"] == 0
    assert 0 < report["packing_efficiency"]["best_fit"] <= 1


def test_report_text_plot_and_skips(tok, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    good = (tiny.FIXTURES / "lima.jsonl").read_text()
    data.write_text(good + "{oops\n")
    plot = tmp_path / "lengths.png"
    out = run_cli(capsys, "report", "--data", str(data), "--tokenizer", tok.path, "--on-error",
                  "skip", "--plot", str(plot))
    assert "stackexchange" in out and "packing efficiency at 2048" in out
    assert "skipped bad records: 1 {'malformed_json': 1}" in out and f"{data}:9: malformed JSON" in out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_steps_cli_prints_the_plan(tok, capsys):
    out = run_cli(capsys, "steps", "--data", str(tiny.FIXTURES / "lima.jsonl"), "--tokenizer",
                  tok.path, "--epochs", "15", "--batch-size", "4", "--max-len", "64")
    assert "15 epochs x 2 steps = 30 steps at global batch 4" in out


def test_table1_on_real_lima(shared_data, capsys):
    out = run_cli(capsys, "report", "--data", str(shared_data / "lima" / "train.jsonl"),
                  "--tokenizer", str(shared_data / "tokenizer" / "llama" / "tokenizer.model"), "--json")
    report = json.loads(out)
    assert {k: v["examples"] for k, v in report["sources"].items()} == {
        "stackexchange": 400, "wikihow": 200, "writingprompts": 150, "nlp": 50, "authors": 200,
        "multi_turn": 30}
    assert 700_000 < report["tokens"] < 800_000  # "about 750,000 tokens"
    assert report["trimmed"] == 69 and report["dropped_no_trained_token"] == 0
    assert report["trailing_user_turns_removed"] == 1
    assert report["packing_efficiency"]["best_fit"] >= 0.95
    assert report["packing_efficiency"]["first_fit"] >= 0.95
    # wikiHow: very short prompts (titles), long bodies, as in the paper's Table 1.
    wikihow = report["sources"]["wikihow"]
    assert wikihow["prompt_tokens"]["mean"] < 20 and wikihow["response_tokens"]["mean"] > 1500
    llama = Tokenizer.load(shared_data / "tokenizer" / "llama" / "tokenizer.model")
    assert report["vocab_size"] == llama.vocab_size
    assert np.isclose(report["all"]["examples"], 1030)
