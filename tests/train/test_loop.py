"""Training: the step (sharding, accumulation, schedule, the NaN/inf guard), the run (checkpoints,
exact resume, SIGTERM, stopping at a non-finite step with a checkpoint that restores, metrics),
config errors, init_from, and the demo."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.checkpoint import TrainCheckpointer
from lima_jax.data import Tokenizer
from lima_jax.model import get_preset
from lima_jax.sharding import make_mesh
from lima_jax.train import TrainingError, train
from lima_jax.train.config import RunConfigError, get_base_config, validate_config
from lima_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask
from lima_jax.train.step import StepFunctions, compile_train_step
from tests.helpers.train_configs import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- the step


def _random_batch(rows: int, length: int, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    return {
        "tokens": rng.randint(0, 256, (rows, length)).astype(np.int32),
        "targets": rng.randint(0, 256, (rows, length)).astype(np.int32),
        "loss_mask": (rng.rand(rows, length) > 0.3).astype(np.float32),
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
    }


def _run_steps(mesh, grad_accum_steps=1, steps=3, dropout=0.0):
    config = get_base_config()
    config.optimizer.learning_rate = 1e-2
    config.train.grad_accum_steps = grad_accum_steps
    config.data.global_batch_size = 16  # the rows of _random_batch below
    step = compile_train_step(config, get_preset("tiny", residual_dropout=dropout), mesh, total_steps=10)
    state = step.init_state(jax.random.PRNGKey(0))
    out = []
    for _ in range(steps):
        state, metrics = step(state, _random_batch(16, 24))
        out.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return out, jax.device_get(state["params"])


@pytest.mark.parametrize("shape", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2),
                                   dict(fsdp=2, tensor=4)])
def test_sharded_steps_give_the_unsharded_losses(shape):
    reference, _ = _run_steps(make_mesh({}, devices=jax.devices()[:1]))
    sharded, _ = _run_steps(make_mesh(shape))
    reference, sharded = np.asarray(reference), np.asarray(sharded)
    np.testing.assert_allclose(sharded[:, 0], reference[:, 0], rtol=2e-5)  # losses
    # Gradient norms after two Adam steps carry the reduction-order rounding further.
    np.testing.assert_allclose(sharded[:, 1], reference[:, 1], rtol=2e-4)
    assert reference[-1, 0] < reference[0, 0]


def test_gradient_accumulation_equals_the_large_batch():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    whole_losses, whole_params = _run_steps(mesh, grad_accum_steps=1, steps=2)
    micro_losses, micro_params = _run_steps(mesh, grad_accum_steps=4, steps=2)
    # Loss and gradient norm agree to float rounding...
    np.testing.assert_allclose(np.asarray(micro_losses)[:, 0], np.asarray(whole_losses)[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(micro_losses)[:, 1], np.asarray(whole_losses)[:, 1], rtol=2e-4)
    # ...and so do the weights, up to Adam's rescaling of near-zero gradient entries, whose
    # rounding differences it magnifies: all but a handful of entries within 1% of one update
    # (lr = 1e-2), and none further than a few percent (jax 0.10 moves one entry by 3.7e-4).
    for a, b in zip(jax.tree.leaves(micro_params), jax.tree.leaves(whole_params)):
        off = np.abs(np.asarray(a) - np.asarray(b))
        assert (off > 1e-4).mean() <= 1e-3 and off.max() < 1e-3, (off.max(), (off > 1e-4).sum())


def test_learning_rate_is_1e5_at_the_first_step_and_exactly_1e6_at_the_last():
    o = get_base_config().optimizer
    schedule = learning_rate_schedule(o, 465)
    assert float(schedule(0)) == pytest.approx(1e-5, rel=1e-6)
    assert float(schedule(464)) == pytest.approx(1e-6, rel=1e-6)
    assert float(schedule(232)) == pytest.approx(1e-5 - 0.5 * 9e-6, rel=1e-5)
    o.warmup_steps = 10
    warm = learning_rate_schedule(o, 465)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1e-5)
    assert float(warm(464)) == pytest.approx(1e-6, rel=1e-6)


def test_weight_decay_mask_choices():
    params = nnx.to_pure_dict(nnx.state(
        nnx.eval_shape(lambda: __import__("lima_jax.model", fromlist=["Llama"]).Llama(
            get_preset("tiny"), rngs=nnx.Rngs(0))), nnx.Param))
    flat = lambda tree: {  # noqa: E731
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    matrices = flat(weight_decay_mask(params, "matrices"))
    assert not matrices["final_norm/scale"] and not matrices["layers/attention_norm/scale"]
    assert matrices["layers/attention/wq"] and matrices["embedding"]
    no_embed = flat(weight_decay_mask(params, "matrices_no_embeddings"))
    assert not no_embed["embedding"] and not no_embed["lm_head"] and no_embed["layers/mlp/w_up"]
    assert all(flat(weight_decay_mask(params, "all")).values())


# ----------------------------------------------------------------- config


def test_bad_values_are_refused_naming_the_key(tmp_path):
    c = tiny_config(tmp_path / "w", tmp_path / "d")
    c.optimizer.weight_decay_mask = "everything"
    with pytest.raises(RunConfigError, match=r"config\.optimizer\.weight_decay_mask"):
        validate_config(c)
    c = tiny_config(tmp_path / "w", tmp_path / "d", train__grad_accum_steps=3)
    with pytest.raises(RunConfigError, match=r"config\.train\.grad_accum_steps: must divide"):
        validate_config(c)
    c = tiny_config(tmp_path / "w", tmp_path / "d")
    c.model.preset = "llama9"
    with pytest.raises(RunConfigError, match=r"config\.model\.preset: unknown preset 'llama9'"):
        validate_config(c)
    c = tiny_config(tmp_path / "w", tmp_path / "d")
    c.data.packing = "worst_fit"
    with pytest.raises(RunConfigError, match=r"config\.data\.packing"):
        validate_config(c)


def test_cli_refuses_an_unknown_key_before_compiling(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lima_jax.train", "--config", str(REPO / "configs" / "demo.py"),
         f"--config.workdir={tmp_path}", "--config.optimizer.learning_rat=1e-4"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------- the run


def test_run_writes_metrics_checkpoints_and_learns(tmp_path):
    c = tiny_config(tmp_path / "run", tmp_path / "data", train__eval_exact_match=True)
    summary = train(c)
    run = tmp_path / "run"
    # Greedy answers to the 32 held-out requests, scored against their references.
    for when in ("eval_at_start", "eval_at_end"):
        assert 0.0 <= summary[when]["eval_exact_match"] <= 1.0
        prompt, answer, reference = summary[when]["eval_example"]
        assert prompt.endswith(("?", ".")) and isinstance(answer, str) and reference
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, summary["total_steps"] + 1))
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "mfu"):
        assert key in steps[0]
    assert steps[0]["mfu"] is None  # a CPU's peak is unknown
    assert steps[0]["lr"] == pytest.approx(1e-3) and steps[-1]["lr"] == pytest.approx(1e-4)
    assert summary["eval_at_end"]["eval_loss"] < summary["eval_at_start"]["eval_loss"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert json.loads((run / "config.json").read_text())["model"]["preset"] == "tiny"
    # Every epoch end was saved; kept are epochs 5-10 (none here) and the latest.
    checkpoints = TrainCheckpointer(run / "checkpoints")
    assert checkpoints.all_steps() == [summary["total_steps"]]
    # A checkpoint is self-contained: it carries the config and the tokenizer itself.
    meta = checkpoints.read_meta(summary["total_steps"])
    assert meta["config"]["model"]["preset"] == "tiny"
    tokenizer = Tokenizer.from_meta(meta)
    assert tokenizer.vocab_size == meta["model_config"]["vocab_size"]
    assert tokenizer.eot_id == meta["model_config"]["eot_token_id"] and tokenizer.kind == "sentencepiece"


def test_kept_checkpoints_are_the_chosen_epochs_and_the_latest(tmp_path):
    """checkpoint.selection = full_state: a full train state at every epoch end; kept are the
    chosen epochs and the latest."""
    c = tiny_config(tmp_path / "run", tmp_path / "data", checkpoint__keep_epochs_from=1,
                    checkpoint__keep_epochs_to=2, train__eval_data="", checkpoint__selection="full_state")
    summary = train(c)
    per_epoch = summary["total_steps"] // 3
    assert TrainCheckpointer(tmp_path / "run" / "checkpoints").all_steps() == [
        per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert not (tmp_path / "run" / "snapshots").exists()
    assert summary["checkpoint_bytes_written"]["snapshots"] == 0


def test_chosen_epochs_are_bfloat16_parameter_snapshots_and_only_the_latest_full_state(tmp_path):
    """checkpoint.selection = snapshot (the default): the chosen epochs store parameters only, in
    bfloat16; the full state is saved at the run's end only; every reader takes the snapshots."""
    import numpy as np

    from lima_jax.checkpoint import SNAPSHOT, checkpoint_kind, epoch_checkpoint, read_snapshot_meta
    from lima_jax.decode.load import load_for_decoding

    run = tmp_path / "run"
    c = tiny_config(run, tmp_path / "data", checkpoint__keep_epochs_from=1, checkpoint__keep_epochs_to=2,
                    train__eval_data="")
    summary = train(c)
    per_epoch = summary["total_steps"] // 3
    assert TrainCheckpointer(run / "checkpoints").all_steps() == [3 * per_epoch]
    assert sorted(int(p.name) for p in (run / "snapshots").iterdir()) == [per_epoch, 2 * per_epoch]
    written = summary["checkpoint_bytes_written"]
    full_state, snapshots = written["full_state"], written["snapshots"]
    # Two bfloat16 parameter snapshots against one float32 state with two Adam moments: 2 x 2 bytes
    # a parameter against 12 (+ the data iterator, meta and orbax's files on both sides).
    assert 0 < snapshots < 0.5 * full_state
    for epoch in (1, 2):
        snapshot = epoch_checkpoint(run, epoch)
        assert snapshot == run / "snapshots" / str(epoch * per_epoch) and checkpoint_kind(snapshot) == SNAPSHOT
        assert read_snapshot_meta(snapshot)["model_config"]["param_dtype"] == "bfloat16"
        model, tokenizer = load_for_decoding(ckpt=str(snapshot))
        assert model.embedding[...].dtype == np.dtype("bfloat16")
        assert tokenizer.vocab_size == model.config.vocab_size
    assert epoch_checkpoint(run, 3) == run / "checkpoints" / str(3 * per_epoch)
    from lima_jax.convert import lima_to_hf  # an export straight from a snapshot

    exported = lima_to_hf(str(epoch_checkpoint(run, 2)), str(tmp_path / "export"))
    assert (exported / "model.safetensors").is_file() and (exported / "tokenizer.model").is_file()


def _train_command(workdir, data_dir, *extra):
    code = (
        "import sys, json; sys.path.insert(0, %r);"
        "from tests.helpers.train_configs import tiny_config; from lima_jax.train.cli import main;"
        "c = tiny_config(__import__('pathlib').Path(%r), __import__('pathlib').Path(%r), "
        "checkpoint__every_steps=2, train__eval_data='');"
        "[c.__setattr__('resume', True) if a == 'resume' else None for a in sys.argv[1:]];"
        "sys.exit(main(c))" % (str(REPO), str(workdir), str(data_dir))
    )
    return [sys.executable, "-c", code, *extra]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _wait_for_step(workdir: pathlib.Path, step: int, process, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        if (workdir / "metrics.jsonl").exists() and max(losses(workdir) or {0: 0}) >= step:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("the run did not reach step %d" % step)


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    data = tmp_path / "data"
    whole = subprocess.run(_train_command(tmp_path / "whole", data), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    reference = losses(tmp_path / "whole")

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed, data), env=_env(), text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_step(killed, 9, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert max(losses(killed)) < max(reference)
    # A half-written step (as a kill mid-save leaves) must never be taken as the latest.
    (killed / "checkpoints" / ("99" + ".orbax-checkpoint-tmp-123")).mkdir()
    resumed = subprocess.run(_train_command(killed, data, "resume"), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(killed) == reference  # every step, bit for bit


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(_train_command(workdir, tmp_path / "data"), env=_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_step(workdir, 3, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "preempted"
    saved = summary["last_checkpoint"]
    assert saved >= 3 and saved in TrainCheckpointer(workdir / "checkpoints").all_steps()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from lima_jax.decode.load import load_for_decoding

    run = tmp_path / "run"
    c = tiny_config(run, tmp_path / "data", checkpoint__every_steps=1, train__eval_data="")
    c.optimizer.learning_rate = 1e30  # the first update blows the weights up
    c.optimizer.end_learning_rate = 1e30
    with pytest.raises(TrainingError, match=r"step (\d+): the loss is .*, the gradient norm (nan|inf); "
                       r"the update was not applied .*last good checkpoint is step") as err:
        train(c)
    bad_step = int(str(err.value).split(":")[0].split()[1])
    assert TrainCheckpointer(run / "checkpoints").all_steps() == [bad_step - 1]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["update_skipped"]
    # The checkpoint holds finite weights (checked as they load) and the whole state restores:
    # a resumed run comes back to the same step and stops there again, naming the same checkpoint.
    load_for_decoding(ckpt=str(run))
    c.resume = True
    with pytest.raises(TrainingError, match=rf"step {bad_step}: .*last good checkpoint is step {bad_step - 1}"):
        train(c)


class _InfGradient(StepFunctions):
    """A finite loss with an infinite gradient: sqrt(|x - x|) is 0, its derivative at 0 is not."""

    def _masked_ce(self, params, batch, rng, deterministic):
        ce, logits, mask = super()._masked_ce(params, batch, rng, deterministic)
        scale = params["final_norm"]["scale"]
        return ce + jnp.sqrt(jnp.abs(scale - jax.lax.stop_gradient(scale))).sum(), logits, mask


@pytest.mark.parametrize("fault", ["nan_weight", "inf_gradient"])
def test_a_non_finite_step_applies_no_update(fault):
    config = get_base_config()
    model_config = get_preset("tiny", residual_dropout=0.0)
    schedule = learning_rate_schedule(config.optimizer, 10)
    fns_class = _InfGradient if fault == "inf_gradient" else StepFunctions
    fns = fns_class(model_config, make_optimizer(config.optimizer, 10), schedule)
    state = fns.init_state(jax.random.PRNGKey(0))
    if fault == "nan_weight":
        state["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(jnp.nan)
    before = jax.device_get(state)
    after, metrics = jax.jit(fns.train_step)(state, _random_batch(4, 16))
    assert not bool(metrics["finite"])
    assert not np.isfinite(float(metrics["grad_norm"]))
    assert np.isfinite(float(metrics["loss"])) == (fault == "inf_gradient")
    for kept, old in zip(jax.tree.leaves(jax.device_get(after)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(kept, old)  # params, Adam moments, count and step as they were


def test_a_finite_step_updates_and_says_so():
    config = get_base_config()
    fns = StepFunctions(get_preset("tiny", residual_dropout=0.0), make_optimizer(config.optimizer, 10),
                        learning_rate_schedule(config.optimizer, 10))
    state = fns.init_state(jax.random.PRNGKey(0))
    before = jax.device_get(state["params"]["embedding"])
    after, metrics = jax.jit(fns.train_step)(state, _random_batch(4, 16))
    assert bool(metrics["finite"]) and int(after["step"]) == 1
    assert not np.array_equal(jax.device_get(after["params"]["embedding"]), before)


def test_init_from_a_hugging_face_directory_adds_the_eot_row(tmp_path):
    from lima_jax.data.pipeline import load_tokenizer
    from lima_jax.train.state import make_model_config
    from tests.helpers.hf_reference import make_hf_llama

    c = tiny_config(tmp_path / "run", tmp_path / "data", train__eval_data="")
    tokenizer = load_tokenizer(c.data, str(tmp_path / "run"))
    make_hf_llama(tmp_path / "hf", vocab_size=tokenizer.base_vocab_size)
    c.model.init_from = str(tmp_path / "hf")
    c.train.max_steps = 1
    summary = train(c)
    assert summary["status"] == "completed"
    config = make_model_config(c, tokenizer)
    assert config.vocab_size == tokenizer.vocab_size and config.eot_token_id == tokenizer.eot_id
    assert config.n_heads == 4 and config.mlp_dim == 96  # the checkpoint's shape, not the preset's
    make_hf_llama(tmp_path / "wrong", vocab_size=tokenizer.base_vocab_size + 5)
    c.model.init_from = str(tmp_path / "wrong")
    with pytest.raises(RunConfigError, match="config.model.init_from: .* must match"):
        make_model_config(c, tokenizer)
