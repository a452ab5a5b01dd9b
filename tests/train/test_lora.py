"""LoRA runs (`config.lora`): the step on every mesh, with remat, accumulation and Pallas attention;
only the adapters carry optimizer state; a run from a checkpoint trains, saves its adapters only,
resumes bit for bit, stops at a non-finite step, decodes (`--ckpt`, merged on its base) with the
held-out loss it had in training, and `evaluate select` grades its snapshots; bad values name
their key in one line."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from lima_jax.checkpoint import TrainCheckpointer, read_train_meta, save_model
from lima_jax.model import get_preset
from lima_jax.model.config import LlamaConfig, LoraSpec
from lima_jax.model.llama import Llama
from lima_jax.model.lora import split_trainable
from lima_jax.sharding import make_mesh
from lima_jax.train import TrainingError, train
from lima_jax.train.config import RunConfigError, get_base_config, validate_config
from lima_jax.train.step import compile_train_step
from tests.helpers.train_configs import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------- the step


def _batch(rows: int, length: int, vocab: int) -> dict:
    rng = np.random.RandomState(0)
    segments = np.repeat(np.array([[1] * (length // 2) + [2] * (length // 2 - 2) + [0, 0]]), rows, 0)
    positions = np.concatenate([np.arange(length // 2), np.arange(length // 2 - 2), [0, 0]])
    return {"tokens": rng.randint(0, vocab, (rows, length)).astype(np.int32),
            "targets": rng.randint(0, vocab, (rows, length)).astype(np.int32),
            "loss_mask": ((rng.rand(rows, length) > 0.3) & (segments > 0)).astype(np.float32),
            "segment_ids": segments.astype(np.int32),
            "positions": np.tile(positions, (rows, 1)).astype(np.int32)}


def _lora_steps(mesh, attention="xla", remat="none", grad_accum_steps=1, base_dtype=""):
    """Three LoRA steps of a 2-layer model with 64-wide heads (so Pallas can run); (loss, grad
    norm) per step, and the final state."""
    config = get_base_config()
    config.optimizer.learning_rate = 1e-2
    config.train.grad_accum_steps = grad_accum_steps
    config.data.global_batch_size = 8
    model = LlamaConfig(vocab_size=256, dim=128, n_layers=2, n_heads=2, n_kv_heads=1, mlp_dim=256,
                        attention=attention, remat=remat,
                        lora=LoraSpec(rank=4, alpha=8.0, base_dtype=base_dtype, token_ids=(255,),
                                      packed_4bit=False))
    step = compile_train_step(config, model, mesh, total_steps=10)
    state = step.init_state(jax.random.PRNGKey(0))
    out = []
    for _ in range(3):
        state, metrics = step(state, _batch(8, 32, 256))
        out.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return np.asarray(out), state, step


@pytest.fixture(scope="module")
def reference():
    return _lora_steps(make_mesh({}, devices=jax.devices()[:1]))


@pytest.mark.parametrize("variant", [dict(mesh=dict(fsdp=8)), dict(mesh=dict(data=2, fsdp=2, tensor=2)),
                                     dict(mesh=dict(fsdp=2, tensor=4), remat="full"),
                                     dict(mesh=dict(data=2, tensor=4), grad_accum_steps=2),
                                     dict(mesh=dict(fsdp=4, tensor=2), attention="pallas")])
def test_lora_steps_match_on_every_mesh_with_remat_accumulation_and_pallas(reference, variant):
    variant = dict(variant)
    mesh = make_mesh(variant.pop("mesh"))
    got, state, step = _lora_steps(mesh, **variant)
    np.testing.assert_allclose(got[:, 0], reference[0][:, 0], rtol=2e-5)
    np.testing.assert_allclose(got[:, 1], reference[0][:, 1], rtol=5e-4)
    assert reference[0][-1, 0] < reference[0][0, 0]
    # Adapters are placed by the logical axes of the weight they adapt.
    shardings = step.param_shardings["layers"]["attention"]
    assert shardings["wq_lora_a"].spec[:2] == shardings["wq"].spec[:2]
    assert shardings["wq_lora_b"].spec[2:] == shardings["wq"].spec[2:]


def test_only_the_adapters_have_gradients_and_optimizer_state(reference):
    _, state, _ = reference
    adapters, frozen = split_trainable(jax.device_get(state["params"]))
    adapter_size = sum(x.size for x in jax.tree.leaves(adapters))
    moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * adapter_size  # AdamW's mu and nu
    assert sum(x.size for x in jax.tree.leaves(frozen)) > 20 * adapter_size
    # Three updates moved the adapters and left the base as it was.
    start_adapters, start_frozen = split_trainable(jax.device_get(reference[2].init_state(jax.random.PRNGKey(0))["params"]))
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(start_frozen)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(adapters["layers"]["attention"]["wq_lora_b"],
                              start_adapters["layers"]["attention"]["wq_lora_b"])


def test_an_int4_base_steps_on_cpu():
    got, state, _ = _lora_steps(make_mesh({"fsdp": 2}, devices=jax.devices()[:2]), base_dtype="int4")
    assert np.isfinite(got).all() and got[-1, 0] < got[0, 0]
    assert state["params"]["layers"]["mlp"]["w_up"].dtype == np.int8  # 4-bit values, byte containers


# ----------------------------------------------------------------- runs


def _base_checkpoint(root: pathlib.Path) -> pathlib.Path:
    """A lima_jax checkpoint of the tiny preset for the tiny run's 320-piece tokenizer (no EOT)."""
    base = root / "base"
    if not base.exists():
        config = get_preset("tiny").replace(vocab_size=320, eot_token_id=None)
        save_model(Llama(config, rngs=nnx.Rngs(3)), base)
    return base


def _lora_config(workdir, root, **changes):
    c = tiny_config(workdir, root / "data", model__init_from=str(_base_checkpoint(root)), lora__rank=4,
                    optimizer__learning_rate=1e-2, optimizer__end_learning_rate=1e-3, **changes)
    return c


def _element_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape")))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    run = root / "run"
    summary = train(_lora_config(run, root, checkpoint__keep_epochs_from=2, checkpoint__keep_epochs_to=3))
    return root, run, summary


def test_a_lora_run_learns_and_its_checkpoints_hold_the_adapters_only(lora_run):
    import orbax.checkpoint as ocp

    _, run, summary = lora_run
    assert summary["status"] == "completed"
    assert summary["eval_at_end"]["eval_loss"] < summary["eval_at_start"]["eval_loss"] - 0.3
    state = ocp.StandardCheckpointer().metadata(run / "checkpoints" / "21" / "state").item_metadata
    params = state["params"]
    assert set(params) == {"layers", "token_rows", "token_head"}  # the new EOT's rows, no tables
    assert all(name.endswith(("_lora_a", "_lora_b")) for module in params["layers"].values() for name in module)
    meta = read_train_meta(run / "checkpoints" / "21")
    assert meta["model_config"]["lora"]["rank"] == 4 and meta["lora_base"]["needed_ids"]
    # Counted in array elements, not bytes on disk: a tiny model's OCDBT files are mostly overhead.
    base = ocp.StandardCheckpointer().metadata(run.parent / "base" / "params").item_metadata
    saved, base_count = _element_count(params), _element_count(base)
    assert saved < base_count / 10  # adapters and the EOT rows only
    assert _element_count(state["opt_state"]) <= 2 * saved + 4  # AdamW's two moments and counters, no base


def test_decoding_a_lora_run_merges_it_and_keeps_its_held_out_loss(lora_run):
    from lima_jax.data import build_pipeline
    from lima_jax.decode.load import load_for_decoding
    from lima_jax.train.loop import _evaluate

    root, run, summary = lora_run
    model, tokenizer = load_for_decoding(ckpt=str(run))
    assert model.config.lora is None  # merged into plain weights
    c = _lora_config(run, root)
    c.data.path, c.data.num_epochs, c.data.shuffle = c.train.eval_data, 1, False
    pipeline = build_pipeline(c.data, tokenizer=tokenizer)
    sharded = compile_train_step(c, model.config, make_mesh({}, devices=jax.devices()[:1]), 10)
    held_out = _evaluate(sharded, nnx.to_pure_dict(nnx.state(model, nnx.Param)), pipeline)
    assert held_out["eval_loss"] == pytest.approx(summary["eval_at_end"]["eval_loss"], rel=1e-5)
    assert held_out["eval_token_accuracy"] == pytest.approx(summary["eval_at_end"]["eval_token_accuracy"])


def test_select_grades_the_snapshots_of_a_lora_run(lora_run, capsys):
    from lima_jax.evaluate.cli import main

    root, run, _ = lora_run
    dev = root / "dev.jsonl"
    dev.write_text("".join((root / "data" / "held_out.jsonl").read_text().splitlines(keepends=True)[:4]))
    code = main(["select", "--workdir", str(run), "--epochs", "2-3", "--dev", str(dev),
                 "--judge", "length", "--out", str(root / "sel"), "--max-new-tokens", "4", "--quiet"])
    assert code == 0
    result = json.loads((root / "sel" / "select.json").read_text())
    assert [r["epoch"] for r in result["epochs"]] == [2, 3]
    assert all(pathlib.Path(r["checkpoint"]).parent.name == "snapshots" for r in result["epochs"])


def test_decoding_names_a_missing_base(lora_run, tmp_path):
    import shutil

    from lima_jax.decode.load import load_for_decoding
    from lima_jax.errors import LimaError

    root, run, _ = lora_run
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    (moved / "snapshots").exists() and shutil.rmtree(moved / "snapshots")
    base = root / "base"
    hidden = base.rename(root / "base_away")
    try:
        with pytest.raises(LimaError, match="holds its adapters only, and its base model.init_from"):
            load_for_decoding(ckpt=str(moved / "checkpoints" / "21"))
    finally:
        hidden.rename(base)


def test_a_resumed_lora_run_continues_bit_for_bit(tmp_path):
    def config(workdir, max_steps, resume=False):
        c = _lora_config(workdir, tmp_path, train__eval_data="", train__max_steps=max_steps,
                         checkpoint__every_steps=5)
        c.resume = resume
        return c

    train(config(tmp_path / "whole", 12))
    train(config(tmp_path / "cut", 8))
    summary = train(config(tmp_path / "cut", 12, resume=True))
    assert summary["start_step"] == 8
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_a_non_finite_lora_step_stops_the_run_at_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    c = _lora_config(run, tmp_path, checkpoint__every_steps=1, train__eval_data="")
    c.optimizer.learning_rate = c.optimizer.end_learning_rate = 1e30  # the adapters blow up
    with pytest.raises(TrainingError, match=r"the update was not applied .*last good checkpoint is step") as err:
        train(c)
    bad_step = int(str(err.value).split(":")[0].split()[1])
    assert TrainCheckpointer(run / "checkpoints").all_steps() == [bad_step - 1]
    # The adapters kept are finite and restore onto the base read again: the resumed run comes
    # back to the same step and stops there again.
    c.resume = True
    with pytest.raises(TrainingError, match=rf"step {bad_step}: .*last good checkpoint is step {bad_step - 1}"):
        train(c)


# ----------------------------------------------------------------- bad values


@pytest.mark.parametrize("change, key", [
    (dict(rank=-1), "lora.rank"), (dict(targets="q,attn"), "lora.targets"),
    (dict(base_dtype="fp8"), "lora.base_dtype"), (dict(alpha=0.0), "lora.alpha"),
])
def test_bad_lora_values_are_refused_naming_the_key(tmp_path, change, key):
    c = _lora_config(tmp_path / "run", tmp_path)
    for name, value in change.items():
        c.lora[name] = value
    with pytest.raises(RunConfigError, match=rf"^config\.{key}: "):
        validate_config(c)


def test_lora_needs_a_checkpoint_and_a_rank_within_the_targets(tmp_path):
    from lima_jax.data.pipeline import load_tokenizer
    from lima_jax.train.state import make_model_config

    c = _lora_config(tmp_path / "run", tmp_path)
    c.model.init_from = ""
    with pytest.raises(RunConfigError, match=r"^config\.lora\.rank: LoRA adapts a pretrained model"):
        validate_config(c)
    c = _lora_config(tmp_path / "run", tmp_path)
    c.lora.rank = 1000
    with pytest.raises(RunConfigError, match=r"^config\.lora\.rank: .*exceeds the dimensions of target 'q'"):
        make_model_config(c, load_tokenizer(c.data, str(tmp_path / "run")))


def test_the_cli_says_a_bad_target_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lima_jax.train", "--config", str(REPO / "configs" / "demo.py"),
         f"--config.workdir={tmp_path / 'run'}", "--config.lora.rank=8", "--config.lora.targets=q,mlp"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert any(line.startswith("error: config.lora.targets: mlp: the targets are q,k,v,o,gate,up,down") for line in lines), \
        result.stderr[-2000:]

