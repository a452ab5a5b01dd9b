"""The plan check's run-time model: a run's wall clock from a handful of numbers.

Pure arithmetic, no JAX: `estimate_run` takes the step time, the steps of each epoch, the bytes of
each kind of checkpoint and the storage bandwidth, and returns the run's wall clock with its
breakdown (weights load, compile, compute, the checkpoint writes that do not overlap compute,
export) under a checkpoint policy, beside the bytes today's policy would write. The plan check
(`lima_jax.train.aot.compile_plan`) fills it from the compiled step and the data plan;
`estimate_from_report` recomputes it from a plan.json report for other storage speeds, step
counts (packing on or off) or policies.

The checkpoint policies (config.checkpoint.selection):

- 'snapshot' (default): a parameters-only snapshot (checkpoint.snapshot_dtype) at the end of
  each kept epoch (checkpoint.keep_epochs_from..keep_epochs_to, counted from 1); the full train
  state (parameters + optimizer state) every checkpoint.every_steps steps (if > 0) and at the
  run's end.
- 'full_state' (the policy before snapshots): the full train state at every epoch end and
  every checkpoint.every_steps steps (the run's end is the last epoch's end).

Saves are asynchronous (orbax): a save runs while the next steps compute, but a save cannot start
before the previous one finished (the loop blocks until it has), and the run's end waits for the
last one. `simulate_saves` plays that timeline; the device-to-host copy each save starts with is
taken as instantaneous (it is small beside the write at these bandwidths).
"""

from __future__ import annotations

import dataclasses

POLICIES = ("snapshot", "full_state")
FULL, SNAPSHOT = "full_state", "snapshot"  # the kinds of save


@dataclasses.dataclass(frozen=True)
class Save:
    step: int  # the save follows this step (counted from 1)
    kind: str  # FULL or SNAPSHOT
    seconds: float  # its write time


def step_seconds_at_mfu(model_flops_per_step: float, chips: int, peak_flops: float, mfu: float) -> float:
    """The step time at model FLOPs utilisation `mfu`: the analytic model FLOPs of a step over
    all `chips` (`total_flops_per_token` x tokens) at `mfu` of their dense peak."""
    return model_flops_per_step / (chips * peak_flops * mfu)


def roofline_step_seconds(flops_per_device: float, bytes_per_device: float, peak_flops: float,
                          hbm_bandwidth: float) -> dict:
    """The roofline bound of a step from its per-device FLOPs and HBM bytes: the larger of the
    compute time at peak and the memory time at full bandwidth (collectives not counted)."""
    compute_s, memory_s = flops_per_device / peak_flops, bytes_per_device / hbm_bandwidth
    return {"compute_s": compute_s, "memory_s": memory_s, "bound_s": max(compute_s, memory_s),
            "bound_by": "compute" if compute_s >= memory_s else "memory"}


def save_schedule(steps_per_epoch: list[int], *, policy: str = SNAPSHOT, every_steps: int = 0,
                  keep_epochs: tuple[int, int] = (5, 10), max_steps: int = 0) -> list[tuple[int, str]]:
    """(step, kind) of every save of a run, in the order the loop issues them.

    `max_steps` > 0 cuts the run short (its last step then ends the run, epoch ends past it never
    come). At one step: the full state of an epoch end or of every_steps, then the snapshot, then
    the full state of the run's end unless that step was just saved."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
    total = sum(steps_per_epoch)
    run_steps = min(total, max_steps) if max_steps > 0 else total
    if run_steps < 1:
        return []
    epoch_ends, end = {}, 0
    for epoch, steps in enumerate(steps_per_epoch, start=1):
        end += steps
        epoch_ends[end] = epoch
    candidates = {s for s in epoch_ends if s <= run_steps} | {run_steps}
    if every_steps > 0:
        candidates |= set(range(every_steps, run_steps + 1, every_steps))
    saves = []
    for step in sorted(candidates):
        epoch = epoch_ends.get(step)
        every = every_steps > 0 and step % every_steps == 0
        full = every or (policy == FULL and epoch is not None)
        if full:
            saves.append((step, FULL))
        if policy == SNAPSHOT and epoch is not None and keep_epochs[0] <= epoch <= keep_epochs[1]:
            saves.append((step, SNAPSHOT))
        if step == run_steps and not full:
            saves.append((step, FULL))
    return saves


def simulate_saves(saves: list[Save], step_s: float, run_steps: int) -> dict:
    """The run's timeline with asynchronous saves: each one starts when its step is done and the
    previous save has finished (the loop waits for that), the steps go on while it writes, and
    the run's end waits for the last. Returns compute_s (steps x step_s), stall_s (the loop
    blocked on a save in flight), final_wait_s (the run's end waiting for the last save),
    checkpoint_s (the two together: the writes that do not overlap compute) and end_s."""
    stall, previous_end = 0.0, 0.0
    for save in saves:
        requested = save.step * step_s + stall
        start = max(requested, previous_end)
        stall += start - requested
        previous_end = start + save.seconds
    compute_s = run_steps * step_s
    compute_end = compute_s + stall
    end = max(compute_end, previous_end)
    return {"compute_s": compute_s, "stall_s": stall, "final_wait_s": end - compute_end,
            "checkpoint_s": end - compute_s, "end_s": end}


def estimate_run(*, steps_per_epoch: list[int] | None, step_s: float | None, full_state_bytes: float,
                 snapshot_bytes: float, export_bytes: float, init_bytes: float = 0.0,
                 compile_s: float = 0.0, storage_gbps: float = 10.0, policy: str = SNAPSHOT,
                 every_steps: int = 0, keep_epochs: tuple[int, int] = (5, 10),
                 max_steps: int = 0, unknown_reason: str = "") -> dict:
    """The run's wall clock and its breakdown, in seconds (storage_gbps: GB/s, 1e9 bytes).

    `steps_per_epoch` None (the data could not be read) or `step_s` None (the chip's peak is
    unknown) leave every figure that needs them None, with `unknown_reason`; the per-save
    bytes and write times are given in any case. `bytes_written` is what the run writes to
    storage (its checkpoints and the export), `bytes_written_full_state_policy` the same under
    today's 'full_state' policy."""
    if storage_gbps <= 0:
        raise ValueError("storage_gbps must be > 0")
    rate = storage_gbps * 1e9
    seconds = {FULL: full_state_bytes / rate, SNAPSHOT: snapshot_bytes / rate}
    sizes = {FULL: full_state_bytes, SNAPSHOT: snapshot_bytes}
    result = {
        "policy": policy,
        "storage_gbps": storage_gbps,
        "full_state_bytes": full_state_bytes,
        "full_state_write_s": seconds[FULL],
        "snapshot_bytes": snapshot_bytes,
        "snapshot_write_s": seconds[SNAPSHOT],
        "export_bytes": export_bytes,
        "step_s": step_s,
        "steps_per_epoch": steps_per_epoch,
        "epochs": len(steps_per_epoch) if steps_per_epoch is not None else None,
        "steps": None,
        "unknown": unknown_reason or None,
    }
    breakdown = {"weights_load_s": init_bytes / rate, "compile_s": compile_s, "compute_s": None,
                 "checkpoint_s": None, "export_s": export_bytes / rate}
    result["breakdown"] = breakdown
    keys = ("compute_s", "checkpoint_s", "stall_s", "final_wait_s", "total_s", "saves",
            "bytes_written", "bytes_written_full_state_policy", "checkpoint_s_full_state_policy",
            "total_s_full_state_policy")
    result.update(dict.fromkeys(keys))
    if steps_per_epoch is None or step_s is None:
        if not unknown_reason:
            result["unknown"] = "steps per epoch unknown" if steps_per_epoch is None else "step time unknown"
        if steps_per_epoch is not None:
            result["steps"] = _run_steps(steps_per_epoch, max_steps)
            result.update(_bytes(steps_per_epoch, policy, every_steps, keep_epochs, max_steps, sizes,
                                 export_bytes))
        return result

    run_steps = _run_steps(steps_per_epoch, max_steps)
    fixed = breakdown["weights_load_s"] + compile_s + breakdown["export_s"]
    by_policy = {}
    for name in {policy, FULL}:
        schedule = save_schedule(steps_per_epoch, policy=name, every_steps=every_steps,
                                 keep_epochs=keep_epochs, max_steps=max_steps)
        timeline = simulate_saves([Save(s, k, seconds[k]) for s, k in schedule], step_s, run_steps)
        by_policy[name] = (schedule, timeline)
    schedule, timeline = by_policy[policy]
    breakdown.update(compute_s=timeline["compute_s"], checkpoint_s=timeline["checkpoint_s"])
    result.update(
        steps=run_steps,
        compute_s=timeline["compute_s"],
        checkpoint_s=timeline["checkpoint_s"],
        stall_s=timeline["stall_s"],
        final_wait_s=timeline["final_wait_s"],
        total_s=fixed + timeline["end_s"],
        checkpoint_s_full_state_policy=by_policy[FULL][1]["checkpoint_s"],
        total_s_full_state_policy=fixed + by_policy[FULL][1]["end_s"],
        **_bytes(steps_per_epoch, policy, every_steps, keep_epochs, max_steps, sizes, export_bytes),
    )
    return result


def _run_steps(steps_per_epoch: list[int], max_steps: int) -> int:
    total = sum(steps_per_epoch)
    return min(total, max_steps) if max_steps > 0 else total


def _bytes(steps_per_epoch, policy, every_steps, keep_epochs, max_steps, sizes, export_bytes) -> dict:
    out = {}
    for name, key in ((policy, "bytes_written"), (FULL, "bytes_written_full_state_policy")):
        schedule = save_schedule(steps_per_epoch, policy=name, every_steps=every_steps,
                                 keep_epochs=keep_epochs, max_steps=max_steps)
        out[key] = sum(sizes[kind] for _, kind in schedule) + export_bytes
        if name == policy:
            out["saves"] = {kind: sum(k == kind for _, k in schedule) for kind in (FULL, SNAPSHOT)}
    return out


def estimate_from_report(report: dict, **changes) -> dict:
    """The run estimate of a plan check's report (plan.json), recomputed with `changes` to
    estimate_run's arguments: storage_gbps, steps_per_epoch (say, packing on or off), policy,
    step_s, every_steps, keep_epochs, max_steps, init_bytes, compile_s."""
    inputs = dict(report["run_estimate_inputs"])
    if "mfu" in changes:
        mfu = changes.pop("mfu")
        inputs["step_s"] = inputs["step_s"] * inputs["mfu"] / mfu if inputs["step_s"] else None
        inputs["mfu"] = mfu
    inputs.update(changes)
    inputs.pop("mfu", None)
    return estimate_run(**inputs)


def format_duration(seconds: float | None) -> str:
    """1 h 02 min, 3.4 min, 12.0 s, 250 ms; 'unknown' for None."""
    if seconds is None:
        return "unknown"
    if seconds == 0:
        return "0 s"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest:02d} min"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
