"""CheckpointManager: interval, retention, restore_or_initialize, async save
(repeated saves, errors in the background, interpreter exit), and TF interop."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastckpt


def state(v=0.0):
    return {"params": {"w": np.full((4, 3), v), "b": np.full(3, v, np.float32)}, "step": np.zeros((), np.int64)}


def test_interval_skips_and_first_save_always_happens(tmp_path):
    mgr = fastckpt.CheckpointManager(tmp_path, checkpoint_interval=10)
    saved = [s for s in (0, 5, 10, 10, 25) if mgr.save(state(s), s) is not None]
    assert saved == [0, 10, 25]
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-0", "ckpt-10", "ckpt-25"]
    assert mgr.latest_checkpoint.endswith("ckpt-25")
    assert mgr.save(state(), 26, force=True) is not None


def test_retention_and_properties(tmp_path):
    mgr = fastckpt.CheckpointManager(tmp_path / "d", max_to_keep=2, checkpoint_name="model")
    assert mgr.latest_checkpoint is None and mgr.checkpoints == [] and mgr.directory == str(tmp_path / "d")
    for s in range(4):
        mgr.save(state(s), s)
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["model-2", "model-3"]
    assert "2 checkpoints" in repr(mgr)


def test_restore_or_initialize(tmp_path):
    fresh = state(7.0)
    mgr = fastckpt.CheckpointManager(tmp_path)
    assert mgr.restore_or_initialize(fresh) is None
    assert (fresh["params"]["w"] == 7.0).all()  # untouched
    mgr.save(state(3.0), 120)
    target = state(0.0)
    w = target["params"]["w"]
    again = fastckpt.CheckpointManager(tmp_path)
    restored = again.restore_or_initialize(target)
    assert again.restored_step == 120 and again.restored_checkpoint == str(tmp_path / "ckpt-120")
    assert target["params"]["w"] is w and (w == 3.0).all() and restored["params"]["w"] is w
    assert mgr.restored_step is None


def test_restore_a_chosen_step_and_list_the_steps(tmp_path):
    """``mgr.steps`` lists the kept steps; ``mgr.restore(step=N)`` restores
    that one (default: the latest), into new arrays or ``into=``; a step
    not kept is NotFoundError naming the steps there are; the interval
    counts from the step restored."""
    mgr = fastckpt.CheckpointManager(tmp_path, max_to_keep=3, checkpoint_interval=10)
    assert mgr.steps == []
    with pytest.raises(fastckpt.NotFoundError, match="no checkpoint in"):
        mgr.restore()
    for s in (0, 10, 20, 30):
        mgr.save(state(float(s)), s)
    assert mgr.steps == [10, 20, 30]
    assert mgr.restore()["params"]["w"][0, 0] == 30.0 and mgr.restored_step == 30
    got = mgr.restore(step=np.int64(20))
    assert got["params"]["w"][0, 0] == 20.0 and mgr.restored_step == 20
    assert mgr.restored_checkpoint == str(tmp_path / "ckpt-20")
    assert mgr.save(state(), 25) is None and mgr.save(state(), 30, force=True) is not None  # from 20, not 30
    into = state(-1.0)
    w = into["params"]["w"]
    mgr.restore(10, into=into)
    assert into["params"]["w"] is w and (w == 10.0).all()
    with pytest.raises(fastckpt.NotFoundError, match="no checkpoint of step 0 .*steps kept: 10, 20, 30"):
        mgr.restore(step=0)
    for bad in ("20", 2.0, True):
        with pytest.raises(fastckpt.InvalidArgumentError, match="step must be an int"):
            mgr.restore(step=bad)


def test_a_background_save_in_flight_is_waited_for_by_restore(tmp_path):
    mgr = fastckpt.CheckpointManager(tmp_path)
    future = mgr.save(state(4.0), 4, blocking=False)
    assert mgr.restore(step=4)["params"]["w"][0, 0] == 4.0 and future.done()


def test_async_saves_snapshot_and_wait(tmp_path):
    mgr = fastckpt.CheckpointManager(tmp_path, max_to_keep=3)
    s = state(1.0)
    futures = []
    for step in range(1, 6):
        s["params"]["w"][...] = step
        futures.append(mgr.save(s, step, blocking=False))
        s["params"]["w"][...] = -1  # changing the state right away must not affect the save
    assert mgr.wait().endswith("ckpt-5")
    assert all(f.done() and f.exception() is None for f in futures)
    for step in (3, 4, 5):
        got = fastckpt.restore(str(tmp_path / f"ckpt-{step}"))
        assert (got["params"]["w"] == step).all()
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-3", "ckpt-4", "ckpt-5"]


def test_background_error_surfaces_on_wait_and_next_save(tmp_path, monkeypatch):
    mgr = fastckpt.CheckpointManager(tmp_path)
    mgr.save(state(1.0), 1)
    boom = fastckpt.CheckpointIOError(28, "injected: No space left on device")

    def failing(*a, **k):
        raise boom
    monkeypatch.setattr(fastckpt.directory.commit, "stage_bundle", failing)
    fut = mgr.save(state(2.0), 2, blocking=False)
    with pytest.raises(fastckpt.CheckpointIOError, match="injected"):
        mgr.wait()
    assert fut.exception() is boom
    fut3 = mgr.save(state(3.0), 3, blocking=False)
    assert fut3.exception(timeout=60) is boom  # finished (failed) before the patch goes
    monkeypatch.undo()
    with pytest.raises(fastckpt.CheckpointIOError):
        mgr.save(state(4.0), 4)  # the next save reports the previous failure
    assert mgr.save(state(5.0), 5).endswith("ckpt-5")
    assert fastckpt.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")


def test_interpreter_exit_waits_for_the_save_in_flight(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np, fastckpt
        mgr = fastckpt.CheckpointManager({str(tmp_path)!r})
        mgr.save({{"big": np.ones(50_000_000, np.float32)}}, 7, blocking=False)
        # exits right away, with the 200 MB save in flight
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    latest = fastckpt.latest_checkpoint(str(tmp_path))
    assert latest is not None and latest.endswith("ckpt-7")
    assert fastckpt.verify_checkpoint(latest).ok


def test_training_runs_while_saving(tmp_path):
    """The caller gets control back after the snapshot; the write proceeds
    with the GIL released, so another thread makes progress meanwhile."""
    mgr = fastckpt.CheckpointManager(tmp_path, durable=True)
    big = {"w": np.ones(40_000_000, np.float32)}
    fut = mgr.save(big, 1, blocking=False)
    steps = 0
    a = np.ones((200, 200))
    while not fut.done():
        a = np.tanh(a @ a.T / 200.0)  # a "training step"
        steps += 1
    mgr.wait()
    assert steps > 0


def test_bad_arguments(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.CheckpointManager(tmp_path, checkpoint_interval=0)
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.CheckpointManager(tmp_path, max_to_keep=0)
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.CheckpointManager(tmp_path, checkpoint_name="a/b")
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.CheckpointManager(tmp_path).save(state(), 1.5)


def test_tensorflow_manager_lists_and_trims_ours_and_the_other_way_round(tmp_path):
    tf = pytest.importorskip("tensorflow")
    ours = fastckpt.CheckpointManager(tmp_path / "a", max_to_keep=5)
    for s in (1, 2, 3):
        ours.save({"v": np.full(2, s, np.float32)}, s)
    theirs = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(np.zeros(2, np.float32))),
                                        str(tmp_path / "a"), max_to_keep=2)
    assert [os.path.basename(p) for p in theirs.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    theirs.save(checkpoint_number=4)
    assert [os.path.basename(p) for p in theirs.checkpoints] == ["ckpt-3", "ckpt-4"]
    assert not os.path.exists(str(tmp_path / "a" / "ckpt-1.index"))
    # the other way round: a TF manager's directory, adopted and trimmed by ours
    v = tf.Variable(np.arange(3, dtype=np.float32))
    tfm = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path / "b"), max_to_keep=5)
    for _ in range(3):
        tfm.save()
    mine = fastckpt.CheckpointManager(tmp_path / "b", max_to_keep=2)
    assert [os.path.basename(p) for p in mine.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    into = {"v/.ATTRIBUTES/VARIABLE_VALUE": np.zeros(3, np.float32)}
    restored = mine.restore_or_initialize(into)  # a TensorFlow 2 checkpoint comes back as its object tree
    assert sorted(restored) == ["save_counter", "v"] and restored["save_counter"] == 3
    assert mine.restored_step == 3
    assert into["v/.ATTRIBUTES/VARIABLE_VALUE"].tolist() == [0.0, 1.0, 2.0]
    mine.save({"v/.ATTRIBUTES/VARIABLE_VALUE": np.ones(3, np.float32)}, 4)
    assert [os.path.basename(p) for p in mine.checkpoints] == ["ckpt-3", "ckpt-4"]
    assert not os.path.exists(str(tmp_path / "b" / "ckpt-1.index"))


def test_a_pending_staged_bundle_with_an_all_digit_name_has_its_final_step(tmp_path):
    """A staged name is 16 hex digits; when they happen to be all decimal
    (1 save in 1,800) the name must still not be read as a step: the
    pending record says which step the staged bundle is (a random-kill test
    once restored one and expected step 1234567890123456)."""
    staged = str(tmp_path / ".fcsave-1234567890123456")
    fastckpt.write_bundle(staged, {"w": np.full(3, 7.0)})
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: ".fcsave-1234567890123456"\n'
        'all_model_checkpoint_paths: ".fcsave-1234567890123456"\n'
        '# fastckpt-pending: ".fcsave-1234567890123456" "ckpt-7"\n')
    mgr = fastckpt.CheckpointManager(tmp_path)
    w = np.zeros(3)
    assert mgr.restore_or_initialize({"w": w})["w"] is w and w.tolist() == [7.0] * 3
    assert mgr.restored_step == 7
    assert mgr.save({"w": w}, 8) is not None  # recovery finishes the pending commit first
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-7", "ckpt-8"]
