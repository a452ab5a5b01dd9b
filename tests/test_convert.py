"""`python -m lima_jax.convert` never deletes what it did not write, and a safetensors file a
download cut short is one line naming it: --out that holds other data, or is a file, is refused
before anything is read; a checkpoint of the kind the command writes is replaced as before."""

from __future__ import annotations

import json
import pathlib

import pytest

from lima_jax import convert
from lima_jax.checkpoint import save_model
from lima_jax.decode.cli import main as decode_main
from lima_jax.errors import InputError
from lima_jax.model import from_hf, to_hf
from lima_jax.model.hf import CheckpointError
from tests.helpers.hf_reference import make_hf_llama


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
    make_hf_llama(hf, num_hidden_layers=1)
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
