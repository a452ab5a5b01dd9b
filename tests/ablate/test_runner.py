"""The ablation runner: the tiny configuration end to end on CPU (subsets, training, decoding,
grading, results and chart), resuming cell by cell, config errors that name the key, and the
real 7B configurations' subsets built from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lima_jax.ablate.cli import main
from lima_jax.ablate.config import (
    AblationConfigError,
    load_config_file,
    validate_ablation,
)
from lima_jax.ablate.runner import build_subsets, run_ablation
from lima_jax.ablate.subsets import AblationError
from lima_jax.evaluate.instructions import parse_score
from lima_jax.evaluate.judges.reference import ReferenceJudge

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "ablations"


def tiny(workdir: pathlib.Path, kind: str = "quantity"):
    c = load_config_file(CONFIGS / "tiny.py", kind)
    c.workdir = str(workdir)
    return c


def _ids(path: pathlib.Path) -> set[str]:
    return {json.loads(line)["id"] for line in path.read_text().splitlines()}


def test_reference_judge_scores_by_similarity():
    judge = ReferenceJudge({"Sort: b, a": "a, b"})
    assert parse_score(judge.scale_reply("Sort:  b, a", "a, b")) == 6
    assert parse_score(judge.scale_reply("Sort: b, a", "zzzzzzzz")) == 1
    assert 1 < parse_score(judge.scale_reply("Sort: b, a", "a, c")) < 6


def _cli(*args: str, cache: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    # One CPU device, not the 8 fake ones of this test session: a tiny model sharded 8 ways
    # compiles several times slower and gains nothing. With `cache`, compiles that repeat
    # across cells and runs (state init, the decoder) come from JAX's persistent cache.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    if cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, "-m", "lima_jax.ablate", "--config", str(CONFIGS / "tiny.py"),
                           *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _results(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def test_tiny_ablation_end_to_end_and_resume(tmp_path, capsys):
    workdir, cache = tmp_path / "ablate", tmp_path / "jax_cache"
    first = _cli(f"--config.workdir={workdir}", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    report = _results(workdir)
    cells = {r["cell"]: r for r in report["cells"]}
    assert list(cells) == ["n16", "n32"] and all(r["status"] == "done" for r in cells.values())
    for name, r in cells.items():
        assert r["size"] == int(name[1:])
        assert r["scored"] + r["skipped"] == 3 * 5 and r["prompts"] >= 1
        assert 1.0 <= r["mean"] <= 6.0 and r["ci_low"] <= r["mean"] <= r["ci_high"]
        assert r["train"]["status"] == "completed"
        assert len((workdir / "cells" / name / "responses.jsonl").read_text().splitlines()) == 15
    # Quantity subsets nest (one permutation), and every cell trained on its own file.
    assert _ids(workdir / "cells" / "n16" / "data.jsonl") < _ids(workdir / "cells" / "n32" / "data.jsonl")
    markdown = (workdir / "results.md").read_text()
    assert f"| n16 | random of generated:tiny | 16 | {cells['n16']['mean']:.2f} |" in markdown
    png = (workdir / "scores.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # A rerun skips finished cells: nothing is trained, decoded or graded again.
    checkpoint_times = {p: p.stat().st_mtime for p in (workdir / "cells").rglob("checkpoints/*")}
    capsys.readouterr()
    again = run_ablation(tiny(workdir))
    assert [r["status"] for r in again["cells"]] == ["resumed", "resumed"]
    assert [r["mean"] for r in _results(workdir)["cells"]] == [cells["n16"]["mean"], cells["n32"]["mean"]]
    out = capsys.readouterr().out
    assert "training" not in out and "done earlier" in out
    assert checkpoint_times == {p: p.stat().st_mtime for p in (workdir / "cells").rglob("checkpoints/*")}

    # A cell whose training was interrupted resumes through the trainer from its checkpoint;
    # its answers and the judge's replies are kept, so its score is the same.
    (workdir / "cells" / "n32" / "result.json").unlink()
    (workdir / "cells" / "n32" / "train" / "summary.json").unlink()
    third = _cli(f"--config.workdir={workdir}", cache=cache)
    assert third.returncode == 0, third.stderr[-3000:]
    assert [r["status"] for r in _results(workdir)["cells"]] == ["resumed", "done"]
    assert _results(workdir)["cells"][1]["mean"] == cells["n32"]["mean"]
    assert "train: resumed from" in third.stdout and "n32: decoding" not in third.stdout

    # A new judge regrades the kept answers; nothing is trained or decoded again.
    config = tiny(workdir)
    config.judge.spec = "length"
    capsys.readouterr()
    regraded = run_ablation(config)
    assert [r["status"] for r in regraded["cells"]] == ["done", "done"]
    assert [r["judge_spec"] for r in regraded["cells"]] == ["length", "length"]
    out = capsys.readouterr().out
    assert "n16: training" not in out and "n16: decoding" not in out

    # Answers sampled with other settings are never reused.
    config.decode.temperature = 0.5
    with pytest.raises(AblationError, match=r"config\.decode\.temperature: 0\.7 then, 0\.5 now"):
        run_ablation(config)

    # A changed subset would silently mix data into a finished cell: refused, before training.
    config = tiny(workdir)
    config.seed = 1
    with pytest.raises(AblationError, match="differs from the subset"):
        run_ablation(config)


def test_condition_variant_builds_its_subsets(tmp_path):
    config = tiny(tmp_path, "condition")
    _, subsets = build_subsets(config)
    assert {name: size for name, (_, size) in subsets.items()} == {
        "one_task": 32, "four_tasks": 32, "longest": 32}
    one = [json.loads(x) for x in subsets["one_task"][0].read_text().splitlines()]
    four = [json.loads(x) for x in subsets["four_tasks"][0].read_text().splitlines()]
    assert {r["source"] for r in one} == {"repeat"}
    assert sorted(r["source"] for r in four) == sorted(["repeat", "sort", "larger", "last"] * 8)


@pytest.mark.parametrize("change, key", [
    (lambda c: setattr(c.cells.n16, "select", "best"), "config.cells.n16.select"),
    (lambda c: c.cells.n16.update({"sise": 3}), "config.cells.n16: unknown key"),
    (lambda c: setattr(c.cells.n16, "size", 0), "config.cells.n16.size"),
    (lambda c: setattr(c.cells.n16, "quotas", "a=1"), "config.cells.n16.quotas"),
    (lambda c: setattr(c.judge, "spec", ""), "config.judge.spec"),
    (lambda c: setattr(c.decode, "num_samples", 0), "config.decode.num_samples"),
    (lambda c: setattr(c.recipe.optimizer, "learning_rate", -1.0), "config.recipe.optimizer.learning_rate"),
    (lambda c: setattr(c.recipe.model, "preset", "llama1-7b"), "config.recipe.model.init_from"),
    (lambda c: setattr(c, "plot", "pie"), "config.plot"),
])
def test_bad_config_values_name_the_key(tmp_path, change, key):
    config = tiny(tmp_path)
    change(config)
    with pytest.raises(AblationConfigError, match=key.replace(".", r"\.")):
        validate_ablation(config)


def test_subset_errors_stop_before_any_training(tmp_path):
    config = tiny(tmp_path)
    config.cells.n32.size = 10_000
    with pytest.raises(AblationConfigError, match=r"config\.cells\.n32\.size: random_n: asked for 10000"):
        run_ablation(config)
    config.cells.n32.size = 32
    config.cells.n16.sources = "poetry"
    with pytest.raises(AblationConfigError, match=r"config\.cells\.n16\.sources: \['poetry'\] not in"):
        run_ablation(config)
    assert not list(tmp_path.rglob("train"))


def test_cli_rejects_an_unknown_key_and_a_bad_value(tmp_path, capsys):
    unknown = _cli(f"--config.workdir={tmp_path}", "--config.cells.n16.sise=3")
    assert unknown.returncode != 0 and "sise" in unknown.stderr
    assert not (tmp_path / "cells").exists()
    config = tiny(tmp_path)
    config.decode.num_samples = 0
    assert main(config) == 2
    assert "error: config.decode.num_samples: must be an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quantity", "quality", "diversity"])
def test_real_configs_build_their_subsets(shared_data, tmp_path, monkeypatch, name):
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the 7B configs name ../shared/data relative to the repository")
    monkeypatch.chdir(REPO)
    config = load_config_file(CONFIGS / f"{name}.py")
    config.workdir = str(tmp_path)
    config.judge.spec = "length"
    with pytest.raises(AblationConfigError, match="config.recipe.model.init_from"):
        validate_ablation(config)
    config.recipe.model.init_from = str(tmp_path / "llama-7b-hf")
    assert config.recipe.model.preset == "llama1-7b" and config.recipe.data.global_batch_size == 64
    _, subsets = build_subsets(config)
    sizes = {cell: size for cell, (_, size) in subsets.items()}
    expected = {"quantity": {"n1000": 1000, "n2000": 2000, "n4000": 4000, "n8000": 8000},
                "quality": {"unfiltered": 2000, "claude_t45": 2000, "helpfulness_t45": 2000,
                            "longest": 2000},
                "diversity": {"stackexchange": 200, "wikihow": 200, "dolly_open_qa": 800,
                              "dolly_mixed": 800}}[name]
    assert sizes == expected and list(sizes) == list(expected)
    if name == "quantity":
        ids = [_ids(path) for path, _ in subsets.values()]
        assert all(len(small) == n and small < large
                   for small, large, n in zip(ids, ids[1:], (1000, 2000, 4000)))


def test_a_cell_decodes_an_epoch_from_its_snapshot(tmp_path):
    """decode.epoch > 0: the epoch's parameter snapshot (checkpoint.selection's default), else its full
    state (checkpoint.selection=full_state); the runner names an epoch that kept neither."""
    from lima_jax.ablate.runner import AblationError, _checkpoint_for

    (tmp_path / "epochs.json").write_text(json.dumps({"epoch_end_steps": [7, 14, 21]}))
    (tmp_path / "snapshots" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "14").mkdir(parents=True)
    assert _checkpoint_for(tmp_path, 1) == tmp_path / "snapshots" / "7"
    assert _checkpoint_for(tmp_path, 2) == tmp_path / "checkpoints" / "14"
    assert _checkpoint_for(tmp_path, 0) == tmp_path  # the workdir: its newest step
    with pytest.raises(AblationError, match="epoch 3's checkpoint was not kept"):
        _checkpoint_for(tmp_path, 3)


def test_a_lora_recipe_runs_end_to_end(tmp_path):
    """The recipe's `lora` block reaches every cell: each trains adapters on the shared base and is
    decoded through its adapters merged onto that base."""
    from flax import nnx

    from lima_jax.checkpoint import save_model
    from lima_jax.model import get_preset
    from lima_jax.model.llama import Llama

    base = tmp_path / "base"  # the tiny recipe's shape, for its 512-piece tokenizer (no EOT)
    shape = get_preset("tiny").replace(dim=64, n_layers=2, max_seq_len=128, vocab_size=512, eot_token_id=None)
    save_model(Llama(shape, rngs=nnx.Rngs(0)), base)
    workdir = tmp_path / "ablate"
    result = _cli(f"--config.workdir={workdir}", f"--config.recipe.model.init_from={base}",
                  "--config.recipe.model.dim=0", "--config.recipe.model.n_layers=0",
                  "--config.recipe.lora.rank=4", "--config.recipe.lora.base_dtype=int8",
                  "--config.recipe.optimizer.learning_rate=1e-2", "--config.decode.num_samples=1",
                  "--config.decode.batch_size=3", cache=tmp_path / "jax_cache")
    assert result.returncode == 0, result.stderr[-3000:]
    cells = {r["cell"]: r for r in _results(workdir)["cells"]}
    assert all(r["status"] == "done" and r["train"]["status"] == "completed" for r in cells.values())
    assert all(r["scored"] + r["skipped"] == 3 for r in cells.values())
    run = json.loads((workdir / "cells" / "n16" / "train" / "config.json").read_text())
    assert run["lora"]["rank"] == 4 and run["lora"]["base_dtype"] == "int8"
