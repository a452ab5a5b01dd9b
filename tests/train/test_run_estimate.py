"""The plan check's run-time model (`lima_jax.train.run_estimate`) on hand-made numbers: the
save schedule of both checkpoint policies, and the timeline of asynchronous saves (overlap with
compute, queueing behind a save in flight, the run's end waiting for the last)."""

import pytest

from lima_jax.train.run_estimate import (
    FULL,
    SNAPSHOT,
    Save,
    estimate_from_report,
    estimate_run,
    format_duration,
    roofline_step_seconds,
    save_schedule,
    simulate_saves,
    step_seconds_at_mfu,
)


def test_save_schedule_of_both_policies():
    epochs = [10] * 6  # epoch ends at 10, 20, ..., 60
    assert save_schedule(epochs, policy=FULL, keep_epochs=(2, 3)) == [
        (10, FULL), (20, FULL), (30, FULL), (40, FULL), (50, FULL), (60, FULL)]
    # Snapshots at the kept epochs' ends, the full state only at the run's end.
    assert save_schedule(epochs, policy=SNAPSHOT, keep_epochs=(2, 3)) == [
        (20, SNAPSHOT), (30, SNAPSHOT), (60, FULL)]
    # every_steps adds full states; a snapshot epoch that is also the last has both, snapshot first.
    assert save_schedule(epochs, policy=SNAPSHOT, keep_epochs=(5, 6), every_steps=25) == [
        (25, FULL), (50, FULL), (50, SNAPSHOT), (60, SNAPSHOT), (60, FULL)]
    assert save_schedule(epochs, policy=FULL, every_steps=25)[:3] == [(10, FULL), (20, FULL), (25, FULL)]
    # max_steps cuts the run: no epoch end past it, the full state at its last step.
    assert save_schedule(epochs, policy=SNAPSHOT, keep_epochs=(2, 3), max_steps=25) == [
        (20, SNAPSHOT), (25, FULL)]
    assert save_schedule(epochs, policy=FULL, max_steps=25) == [(10, FULL), (20, FULL), (25, FULL)]
    with pytest.raises(ValueError, match="policy"):
        save_schedule(epochs, policy="every_epoch")


def test_a_save_shorter_than_the_steps_until_the_next_overlaps_compute():
    # 100 steps of 1 s; a 5 s save after step 50: written while steps 51-55 run.
    timeline = simulate_saves([Save(50, FULL, 5.0)], step_s=1.0, run_steps=100)
    assert timeline == {"compute_s": 100.0, "stall_s": 0.0, "final_wait_s": 0.0,
                        "checkpoint_s": 0.0, "end_s": 100.0}


def test_a_save_waits_for_the_one_in_flight_and_the_end_waits_for_the_last():
    # Saves after steps 10 and 12 (1 s steps), 5 s each: the second starts at 15 (the loop
    # blocks 3 s), ends at 20; the one after step 20 (t = 23) needs 7 s: the end waits 7 - 0 s.
    saves = [Save(10, FULL, 5.0), Save(12, SNAPSHOT, 5.0), Save(20, FULL, 7.0)]
    timeline = simulate_saves(saves, step_s=1.0, run_steps=20)
    assert timeline["stall_s"] == pytest.approx(3.0)
    assert timeline["final_wait_s"] == pytest.approx(7.0)
    assert timeline["checkpoint_s"] == pytest.approx(10.0)
    assert timeline["end_s"] == pytest.approx(30.0)
    # Nothing saved: the run is its steps.
    assert simulate_saves([], 2.0, 10)["end_s"] == 20.0


def test_the_run_estimate_under_both_policies():
    # 3 epochs of 10 steps of 2 s; full state 100 GB (10 s at 10 GB/s), snapshot 20 GB (2 s).
    common = dict(steps_per_epoch=[10, 10, 10], step_s=2.0, full_state_bytes=100e9, snapshot_bytes=20e9,
                  export_bytes=20e9, init_bytes=50e9, compile_s=30.0, storage_gbps=10.0,
                  keep_epochs=(1, 2))
    snapshot = estimate_run(policy=SNAPSHOT, **common)
    # Snapshots after steps 10 and 20 overlap the steps; the full state at the end is waited for.
    assert snapshot["saves"] == {FULL: 1, SNAPSHOT: 2}
    assert snapshot["compute_s"] == 60.0 and snapshot["checkpoint_s"] == pytest.approx(10.0)
    assert snapshot["breakdown"] == pytest.approx({"weights_load_s": 5.0, "compile_s": 30.0,
                                                   "compute_s": 60.0, "checkpoint_s": 10.0,
                                                   "export_s": 2.0})
    assert snapshot["total_s"] == pytest.approx(5 + 30 + 60 + 10 + 2)
    assert snapshot["bytes_written"] == pytest.approx(100e9 + 2 * 20e9 + 20e9)
    # Today's policy: a full state after every epoch, each 10 s, 20 s of steps apart: only
    # the last is waited for.
    assert snapshot["bytes_written_full_state_policy"] == pytest.approx(3 * 100e9 + 20e9)
    assert snapshot["checkpoint_s_full_state_policy"] == pytest.approx(10.0)
    full = estimate_run(policy=FULL, **common)
    assert full["saves"] == {FULL: 3, SNAPSHOT: 0}
    assert full["bytes_written"] == snapshot["bytes_written_full_state_policy"]
    assert full["total_s"] == snapshot["total_s_full_state_policy"] == pytest.approx(107.0)
    # Slow storage: 40 s a full state, longer than an epoch's 20 s of steps: the loop blocks.
    slow = estimate_run(policy=FULL, **dict(common, storage_gbps=2.5))
    # Requested at 20 s (written 20-60), at 40 s (the loop blocks until 60, written 60-100), at
    # 60 + 20 = 80 s (blocks until 100, written 100-140); the steps end at 100, the run at 140.
    assert slow["stall_s"] == pytest.approx(40.0)
    assert slow["final_wait_s"] == pytest.approx(40.0)
    assert slow["checkpoint_s"] == pytest.approx(80.0)


def test_unknown_steps_or_step_time_leave_the_totals_unknown_with_the_reason():
    unknown = estimate_run(steps_per_epoch=None, step_s=2.0, full_state_bytes=100e9, snapshot_bytes=20e9,
                           export_bytes=20e9, unknown_reason="steps per epoch unknown: no data.path")
    assert unknown["total_s"] is None and unknown["compute_s"] is None and unknown["bytes_written"] is None
    assert unknown["unknown"] == "steps per epoch unknown: no data.path"
    assert unknown["full_state_write_s"] == pytest.approx(10.0)  # per save, known anyway
    no_peak = estimate_run(steps_per_epoch=[5, 5], step_s=None, full_state_bytes=1e9, snapshot_bytes=1e9,
                           export_bytes=1e9)
    assert no_peak["total_s"] is None and no_peak["steps"] == 10 and no_peak["bytes_written"] == 2e9  # end + export
    assert no_peak["unknown"] == "step time unknown"


def test_step_times_and_recomputing_from_a_report():
    assert step_seconds_at_mfu(1e15, chips=4, peak_flops=250e12, mfu=0.5) == pytest.approx(2.0)
    bound = roofline_step_seconds(2e12, 1e12, peak_flops=1e12, hbm_bandwidth=1e12)
    assert bound["bound_s"] == 2.0 and bound["bound_by"] == "compute"
    assert roofline_step_seconds(1e12, 3e12, 1e12, 1e12)["bound_by"] == "memory"
    inputs = dict(steps_per_epoch=[10], step_s=2.0, full_state_bytes=10e9, snapshot_bytes=1e9,
                  export_bytes=1e9, storage_gbps=10.0, mfu=0.5)
    report = {"run_estimate_inputs": inputs}
    assert estimate_from_report(report)["compute_s"] == 20.0
    faster = estimate_from_report(report, mfu=0.4, storage_gbps=1.0, steps_per_epoch=[5])
    assert faster["compute_s"] == pytest.approx(5 * 2.5) and faster["full_state_write_s"] == 10.0
    assert format_duration(None) == "unknown" and format_duration(7325) == "2 h 02 min"
    assert format_duration(300) == "5.0 min" and format_duration(0.25) == "250 ms"
