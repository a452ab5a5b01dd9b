"""Training: LIMA's recipe as a sharded `jax.jit` step.

`config` holds the run configuration and its validation, `optim` the optimizer and schedule,
`step` the pure train/eval step and `compile_train_step` (the one place the sharded step is built,
for the loop, the ahead-of-time plan, the benchmark and the tests), `state` what the loop does
before it starts (starting weights, model config, demo data), `loop` the run itself (`train`),
`prefetch` the batches built and placed ahead of the step, `metrics` its logs, `workdir` the
one-run-per-workdir rules and the run's fingerprint, `preemption` the SIGTERM watch (one host or
all), `held_out` the exact-match score, `aot` the TPU plan check, `bench` the training benchmark
and `cli` the command ``python -m lima_jax.train``.
"""


def __getattr__(name: str):
    # `lima_jax.train.train(config)` without importing the loop (orbax, grain) for a config file.
    if name in ("train", "TrainingError"):
        from lima_jax.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'lima_jax.train' has no attribute {name!r}")
