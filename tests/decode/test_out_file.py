"""What decode does with the files it is given: an --out it did not write is refused and left
byte for byte as it was, its own torn last line is set aside (never dropped), and a prompt file
with text no tokenizer can take is a file:line error. No model is loaded: each refusal comes first."""

from __future__ import annotations

import json
import pathlib

import pytest

from lima_jax.decode import answer_file
from lima_jax.decode.cli import main
from lima_jax.decode.prompts import PromptError, read_prompts
from lima_jax.errors import InputError
from lima_jax.evaluate.responses import read_responses
from lima_jax.jsonl import read_records


def _write(path: pathlib.Path, records) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _answer(prompt_id: str, sample: int = 0) -> dict:
    return {"id": prompt_id, "sample": sample, "prompt": "p", "text": "t", "tokens": [5],
            "num_tokens": 1, "stop_reason": "eos"}


@pytest.fixture
def prompts(tmp_path) -> pathlib.Path:
    return _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])


def _decode(prompts: pathlib.Path, out: pathlib.Path) -> int:
    # --hf names no model: a refusal must come before any loading.
    return main(["--hf", str(out.parent / "no-model"), "--prompts", str(prompts), "--out", str(out),
                 "--quiet"])


def test_a_lima_file_as_out_is_refused_and_left_untouched(tmp_path, prompts, capsys):
    out = _write(tmp_path / "train.jsonl", [{"conversations": ["q", "a"], "source": "s"}] * 3)
    before = out.read_bytes()
    assert _decode(prompts, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}:1: not an answer line") and "choose another --out" in err
    assert len(err.splitlines()) == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "train.jsonl"]


def test_the_first_foreign_line_is_named_after_answers(tmp_path, prompts, capsys):
    out = _write(tmp_path / "out.jsonl", [_answer("a"), {"id": "b", "note": "mine"}, _answer("b")])
    before = out.read_bytes()
    assert _decode(prompts, out) == 2
    assert f"error: {out}:2: not an answer line" in capsys.readouterr().err
    assert out.read_bytes() == before
    # Not JSON in the middle of the file, and a last line that is not the start of an answer.
    out.write_text(json.dumps(_answer("a")) + "\nnotes\n" + json.dumps(_answer("b")) + "\n")
    assert _decode(prompts, out) == 2
    assert f"error: {out}:2: not valid JSON" in capsys.readouterr().err
    out.write_text(json.dumps(_answer("a")) + "\nsome notes without a line feed")
    before = out.read_bytes()
    assert _decode(prompts, out) == 2
    assert f"error: {out}:2: not an answer line (nor the start of one cut short)" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_a_directory_as_out_is_one_line(tmp_path, prompts, capsys):
    (tmp_path / "outdir").mkdir()
    assert _decode(prompts, tmp_path / "outdir") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'outdir'}: is a directory; --out names the JSON Lines file answers go to"
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert _decode(prompts, blocker / "out.jsonl") == 2
    assert "a file is in the way" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_answer_file_from_python_raises_an_input_error(tmp_path, prompts):
    out = _write(tmp_path / "test.jsonl", [{"conversations": ["q"]}])
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"test\.jsonl:1: not an answer line"):
        answer_file(prompts, out, hf=str(tmp_path / "no-model"))
    assert out.read_bytes() == before


@pytest.mark.parametrize("fragment", [b'{"id": "b", "sam', b"{", '{"id": "b", "prompt": "é'.encode()[:-1]],
                         ids=["mid-field", "first-byte", "mid-character"])
def test_a_torn_last_answer_is_set_aside_and_the_file_reads_back(tmp_path, prompts, capsys, fragment):
    out = _write(tmp_path / "out.jsonl", [_answer("a")])
    with out.open("ab") as f:
        f.write(fragment)  # an interrupted run; the last case ends inside a two-byte character
    # --limit 1: only 'a' is asked for, and it is there: no model, but the file is opened to append.
    result = answer_file(prompts, out, hf=str(tmp_path / "no-model"), limit=1)
    assert (result.kept, result.written) == (1, 0)
    assert read_records(out) == [_answer("a")]
    assert (tmp_path / "out.jsonl.torn-1").read_bytes() == fragment
    assert "set aside in" in capsys.readouterr().err
    assert list(read_responses(out)) == [("a", 0)]


def test_a_prompt_with_a_lone_surrogate_or_deep_nesting_is_a_file_line_error(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "bad \\ud800 text"}\n')
    with pytest.raises(PromptError, match=r"p\.jsonl:2: text that cannot be encoded as UTF-8"):
        read_prompts(path)
    assert main(["--hf", str(tmp_path / "no-model"), "--prompts", str(path), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert f"error: {path}:2: text that cannot be encoded" in capsys.readouterr().err
    path.write_text('{"id": "a", "prompt": "x", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(PromptError, match=r"p\.jsonl:1: JSON nested deeper than the parser allows"):
        read_prompts(path)
