"""LoRA training parity: lima_jax's train step under `config.lora` against transformers + peft +
torch.optim.AdamW, step by step, on the real stories260K checkpoint.

Both sides start from the same frozen base (stories260K, float32 everywhere) and the same
adapters (ours, drawn by `lora.attach`, copied into PEFT's), see the same packed batches in turn
(several examples per row with segment ids and per-example positions, trailing padding, a loss
mask over the second part of each example only) and the same learning rate at every step (our
optax schedule, linear decay 1e-3 -> 1e-4), and must report the same loss and gradient norm at
every step to 1e-4 relative, with the loss falling. Our step runs with and without gradient
accumulation (2 micro-batches), both against the one torch trajectory.

Measured (CPU, 12 steps, loss 2.57 -> 1.49 on the first batch's repeats): max relative
difference of the loss 6.2e-07 (grad_accum_steps=1) and 3.6e-07 (2), of the gradient norm
7.0e-07 and 6.2e-07; final adapters within 5.9e-04 of each tensor's largest value. For scale,
the same comparison with torch's weight decay off gives 5e-04, one adapter's A in a wrong
layout 2e-02, and the mask ignoring segments or a constant learning rate ~0.4.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lima_jax.model import from_hf
from lima_jax.model import lora as lora_lib
from lima_jax.model.config import LORA_TARGETS, LoraSpec
from lima_jax.train.config import get_base_config
from lima_jax.train.optim import learning_rate_schedule, make_optimizer
from lima_jax.train.step import StepFunctions

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

STEPS = 12
ROWS, LENGTH = 4, 64
TOLERANCE = 1e-4
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big red ball under a tree. She ran to the ball and kicked it very high. "
    "The ball flew over the fence and into the garden of an old man. Lily was sad and scared. "
    "She knocked on the door and said sorry to the man. The man smiled and gave her the ball back. "
    "Tom had a small dog called Max. Max liked to run and jump in the grass. "
    "Every morning Tom and Max went for a walk by the river. They saw ducks and fish in the water. "
    "Mom baked a big cake for the party. The children sang and danced all day long. "
    "At night the moon was bright and the stars were happy. Ben said good night to his teddy bear."
)


def packed_batches(tokenizer_model, count: int, seed: int = 0) -> list[dict]:
    """`count` packed [ROWS, LENGTH] batches of real story text: each row holds several examples
    ([BOS] sentence(s) [EOS]) with segment ids 1..k and positions from 0 inside each, then at
    least 3 padding tokens (segment 0); the loss covers the second half of each example only."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    sentences = [s.strip() + "." for s in STORY.split(".") if s.strip()]
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        batch = {"tokens": np.zeros((ROWS, LENGTH), np.int32), "targets": np.zeros((ROWS, LENGTH), np.int32),
                 "segment_ids": np.zeros((ROWS, LENGTH), np.int32), "positions": np.zeros((ROWS, LENGTH), np.int32),
                 "loss_mask": np.zeros((ROWS, LENGTH), np.float32)}
        for row in range(ROWS):
            start, segment = 0, 0
            room = LENGTH - 3 - int(rng.integers(0, 6))  # trailing padding of 3..8 tokens
            while True:
                chosen = rng.choice(len(sentences), size=int(rng.integers(1, 3)), replace=False)
                ids = [sp.bos_id()] + sp.encode(" ".join(sentences[i] for i in chosen)) + [sp.eos_id()]
                n = min(len(ids) - 1, room - start)  # tokens of this example in the row
                if n < 6:
                    break
                segment += 1
                span = slice(start, start + n)
                batch["tokens"][row, span] = ids[:n]
                batch["targets"][row, span] = ids[1:n + 1]
                batch["segment_ids"][row, span] = segment
                batch["positions"][row, span] = np.arange(n)
                batch["loss_mask"][row, start + n // 2:start + n] = 1.0  # the "response" half
                start += n
            assert segment >= 2, "every row should pack several examples"
            batch["positions"][row, start:] = np.arange(LENGTH - start)  # padding: own segment 0
        batches.append(batch)
    return batches


def optimizer_config():
    o = get_base_config().optimizer
    o.learning_rate, o.end_learning_rate = 1e-3, 1e-4
    o.warmup_steps, o.clip_norm = 0, 0.0
    assert (o.b1, o.b2, o.eps, o.weight_decay, o.weight_decay_mask) == (0.9, 0.95, 1e-8, 0.1, "matrices")
    return o


def our_trajectory(config, params, batches, grad_accum_steps: int):
    """(losses, gradient norms, final adapters) of STEPS train steps over `batches` in turn."""
    o = optimizer_config()
    fns = StepFunctions(config, make_optimizer(o, STEPS), learning_rate_schedule(o, STEPS),
                        grad_accum_steps=grad_accum_steps)
    state = fns.init_state(jax.random.PRNGKey(1), params)
    step = jax.jit(fns.train_step)
    losses, norms = [], []
    for i in range(STEPS):
        state, metrics = step(state, batches[i % len(batches)])
        assert bool(metrics["finite"])
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return losses, norms, jax.device_get(lora_lib.trainable(state["params"]))


def relative(ours, reference) -> np.ndarray:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.abs(ours - reference) / np.abs(reference)


def test_lora_training_matches_peft_step_by_step(stories):
    from tests.helpers.peft_reference import PeftReference

    base = from_hf(stories)  # float32 parameters, compute and logits
    plain_config = base.config
    assert (plain_config.param_dtype, plain_config.dtype, plain_config.logits_dtype) == ("float32",) * 3
    assert plain_config.padded_vocab_size == plain_config.vocab_size == 512
    lora = LoraSpec(rank=8, alpha=16.0, dropout=0.0, targets=LORA_TARGETS, base_dtype="")
    config = plain_config.replace(lora=lora)
    plain = nnx_params(base)
    params = lora_lib.attach(plain, config, jax.random.PRNGKey(0))
    adapters = lora_lib.trainable(params)
    assert set(adapters) == {"layers"}  # no token rows: only the 7 x 2 adapters train

    batches = packed_batches(stories / "tokenizer.model", count=3)
    o = optimizer_config()
    schedule = learning_rate_schedule(o, STEPS)
    reference = PeftReference(stories, lora, jax.device_get(adapters), lr=o.learning_rate, b1=o.b1,
                              b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    ref_losses, ref_norms = [], []
    for i in range(STEPS):
        loss, norm = reference.step(batches[i % len(batches)], float(schedule(i)))
        ref_losses.append(loss)
        ref_norms.append(norm)
    peft_final = reference.adapters_as_ours(lora.targets)  # A [L, IN, R], B [L, R, OUT]

    report = {}
    for accum in (1, 2):
        losses, norms, final = our_trajectory(config, params, batches, accum)
        loss_err, norm_err = relative(losses, ref_losses), relative(norms, ref_norms)
        report[accum] = (loss_err.max(), norm_err.max())
        print(f"LoRA parity, grad_accum_steps={accum}: max relative difference loss "
              f"{loss_err.max():.2e}, grad norm {norm_err.max():.2e}")
        for i in range(STEPS):
            print(f"  step {i:2d}: loss {losses[i]:.6f} / {ref_losses[i]:.6f}, "
                  f"grad norm {norms[i]:.6f} / {ref_norms[i]:.6f}")
        assert (loss_err < TOLERANCE).all(), (accum, loss_err)
        assert (norm_err < TOLERANCE).all(), (accum, norm_err)
        # The adapters themselves end where PEFT's do. Looser: Adam's first steps divide tiny
        # gradients by their own size, so rounding-level differences grow to ~1e-3 of a tensor's
        # largest value, while a wrong layout or update differs at order 1.
        worst = 0.0
        for layer in final["layers"].values():
            for name, value in layer.items():
                value = np.asarray(value).reshape(peft_final[name].shape)
                scale = np.abs(peft_final[name]).max()
                assert scale > 0, name
                difference = np.abs(value - peft_final[name]).max() / scale
                assert difference < 1e-2, (accum, name, difference)
                worst = max(worst, difference)
        print(f"  final adapters: max difference {worst:.2e} of each tensor's largest value")

    # The adapters moved and the model learned: the same batch gives a clearly lower loss the
    # next time round, on both sides.
    for i in range(len(batches), STEPS):
        assert ref_losses[i] < ref_losses[i - len(batches)] - 0.02, (i, ref_losses)
    assert ref_losses[-1] < 0.9 * ref_losses[(STEPS - 1) % len(batches)]


def nnx_params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
