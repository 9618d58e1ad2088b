"""Recycling saves (recycle=True): the retired checkpoint's data files are
rewritten in place -- of any size and shard count, compressed too -- and
never while a fastckpt reader holds them (same process or another);
concurrent recycling savers; bad input retires nothing; hard links and
symbolic links are never rewritten."""

import os

import numpy as np
import pytest

import fastckpt
from fastckpt.storage.locking import is_leftover
from tests.helpers import crash_child
from tests.helpers.races import resave_beside, result_of

pytestmark = pytest.mark.no_sanitizer  # runs its own processes; slow under ASan


def _state(seed, n=4, size=50_000):
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.standard_normal(size).astype(np.float32) for i in range(n)}


def _inodes(prefix):
    return {f: os.stat(f).st_ino for f in fastckpt.bundle.naming.checkpoint_files(prefix) if ".data-" in f}


def _assert_clean(d):
    names = os.listdir(d)
    assert not [n for n in names if is_leftover(n)], names
    assert not fastckpt.collect_garbage(str(d), dry_run=True).unlisted


@pytest.mark.parametrize("shape", ["same", "larger", "smaller", "more shards", "fewer shards", "zstd", "durable"])
def test_a_recycled_save_rewrites_the_victims_files_in_place(tmp_path, shape):
    shards = {"more shards": (1, 3), "fewer shards": (3, 1)}.get(shape, (2, 2))
    size = {"larger": (20_000, 90_000), "smaller": (90_000, 20_000)}.get(shape, (50_000, 50_000))
    old = fastckpt.Saver(max_to_keep=2, durable=False, num_shards=shards[0])
    for step in (1, 2):
        old.save(_state(step, size=size[0]), str(tmp_path / "m"), global_step=step)
    victim_inodes = set(_inodes(str(tmp_path / "m-1")).values())
    saver = fastckpt.Saver(max_to_keep=2, recycle=True, num_shards=shards[1], durable=shape == "durable",
                           compression="zstd" if shape == "zstd" else None)
    state = _state(3, size=size[1])
    saver.save(state, str(tmp_path / "m"), global_step=3)
    new_inodes = set(_inodes(str(tmp_path / "m-3")).values())
    assert len(new_inodes & victim_inodes) == min(shards), (victim_inodes, new_inodes)
    assert len(new_inodes) == shards[1]
    assert [os.path.basename(p) for p in fastckpt.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths] \
        == ["m-2", "m-3"]
    got = fastckpt.restore(str(tmp_path / "m-3"))
    assert all(np.array_equal(got[k], state[k]) for k in state)
    assert fastckpt.verify_checkpoint(str(tmp_path / "m-3")).ok and fastckpt.verify_checkpoint(str(tmp_path / "m-2")).ok
    sizes = [os.path.getsize(f) for f in fastckpt.bundle.naming.checkpoint_files(str(tmp_path / "m-3")) if ".data-" in f]
    assert sum(sizes) < 4 * size[1] * 4 + 4096  # no bytes of the victim left past the new data
    assert not os.path.exists(tmp_path / "m-1.index")
    _assert_clean(tmp_path)


def test_a_checkpoint_a_reader_holds_is_never_rewritten(tmp_path):
    saver = fastckpt.Saver(max_to_keep=2, durable=False, recycle=True)
    for step in (1, 2):
        saver.save(_state(step), str(tmp_path / "m"), global_step=step)
    reader = fastckpt.load_checkpoint(str(tmp_path / "m-1"))
    views = {k: reader.get_tensor(k, copy=False) for k in reader.tensor_names()}  # mapped, zero-copy
    held = set(_inodes(str(tmp_path / "m-1")).values())
    reader.close()  # the maps (and their shared locks) live on in the views
    saver.save(_state(3), str(tmp_path / "m"), global_step=3)
    assert not set(_inodes(str(tmp_path / "m-3")).values()) & held  # new files: the victim was held
    want = _state(1)
    assert all(np.array_equal(views[k], want[k]) for k in want)  # the held bytes never changed
    assert not os.path.exists(tmp_path / "m-1.index")  # retired all the same
    del views
    free = set(_inodes(str(tmp_path / "m-2")).values())
    saver.save(_state(4), str(tmp_path / "m"), global_step=4)  # m-2 is held by nobody: recycled
    assert set(_inodes(str(tmp_path / "m-4")).values()) == free
    _assert_clean(tmp_path)


def test_bad_input_retires_nothing(tmp_path):
    saver = fastckpt.Saver(max_to_keep=2, durable=False, recycle=True)
    for step in (1, 2):
        saver.save(_state(step), str(tmp_path / "m"), global_step=step)
    for bad in ({"": np.ones(2)}, {"x": np.array([object()])}, {"x": np.ones(2, np.complex256)}):
        with pytest.raises(fastckpt.InvalidArgumentError):
            saver.save(bad, str(tmp_path / "m"), global_step=3)
    st = fastckpt.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["m-1", "m-2"]
    assert fastckpt.verify_checkpoint(str(tmp_path / "m-1")).ok
    _assert_clean(tmp_path)


def test_linked_files_are_never_rewritten(tmp_path):
    saver = fastckpt.Saver(max_to_keep=1, durable=False, recycle=True)
    saver.save(_state(1), str(tmp_path / "m"), global_step=1)
    backup = tmp_path / "backup.data"
    os.link(tmp_path / "m-1.data-00000-of-00001", backup)  # a user's hard-linked backup
    saver.save(_state(2), str(tmp_path / "m"), global_step=2)
    assert os.stat(backup).st_nlink == 1  # m-1 was deleted, not rewritten
    assert np.array_equal(np.frombuffer(open(backup, "rb").read(), np.float32)[:50_000], _state(1)["t0"])
    os.unlink(backup)
    target = tmp_path / "elsewhere.data"
    os.rename(tmp_path / "m-2.data-00000-of-00001", target)
    os.symlink(target, tmp_path / "m-2.data-00000-of-00001")  # a data file that is a symbolic link
    saver.save(_state(3), str(tmp_path / "m"), global_step=3)
    assert os.path.exists(target) and not os.path.islink(tmp_path / "m-3.data-00000-of-00001")
    got = fastckpt.restore(str(tmp_path / "m-3"))
    assert np.array_equal(got["t0"], _state(3)["t0"])


def test_recycle_must_be_a_bool_and_one_process(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.Saver(recycle="yes")
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.CheckpointManager(tmp_path, recycle=1)
    from tests.helpers.thread_comm import ThreadCommunicator, ThreadGroup
    comm = ThreadCommunicator(ThreadGroup(1), 0)
    with pytest.raises(fastckpt.InvalidArgumentError, match="one-process"):
        fastckpt.Saver(recycle=True, comm=comm)
    with pytest.raises(fastckpt.InvalidArgumentError, match="one-process"):
        fastckpt.CheckpointManager(tmp_path, recycle=True, comm=comm)


def test_a_reader_holding_the_oldest_checkpoint_while_recycling_saves_run(tmp_path, ctx, counts):
    """Another process opens the oldest listed checkpoint -- the very one the
    next save retires and wants to recycle -- reads it through its maps,
    holds it and reads it again, in a loop, while two processes run
    recycling saves: no held checkpoint ever changes or fails."""
    d = tmp_path / "run"
    d.mkdir()
    stop, result = str(tmp_path / "stop"), str(tmp_path / "result")
    resave_beside(ctx, str(d), stop, [(crash_child.hold_oldest_until, (str(d), stop, result)),
                                      (crash_child.restore_latest_until, (str(d), stop, str(tmp_path / "latest")))],
                  recycle=True)
    held, bad, errors = result_of(result)
    assert bad == 0, f"{bad} held checkpoints changed or failed: {errors[:5]}"
    assert held > 5, held
    ok, bad, errors = result_of(tmp_path / "latest")
    assert bad == 0, f"{bad} restores of the latest failed or returned data no save wrote: {errors[:5]}"
    st = fastckpt.get_checkpoint_state(str(d))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["model-23", "model-24", "model-25"]
    _assert_clean(d)
    counts["checkpoints held while recycling saves ran"] = held


def test_a_reader_meeting_a_file_being_rewritten_waits_then_says_so(tmp_path, monkeypatch):
    """A data file whose exclusive lock a recycling save holds: the reader
    waits for it (here 0.1 s instead of 10), then raises NotFoundError."""
    import functools
    import time

    from fastckpt.bundle import files as files_mod
    from fastckpt.storage.locking import claim_exclusive, release_lock
    fastckpt.write_bundle(str(tmp_path / "m"), _state(1))
    fd = claim_exclusive(str(tmp_path / "m.data-00000-of-00001"))
    assert fd is not None
    monkeypatch.setattr(files_mod, "lock_for_reading", functools.partial(files_mod.lock_for_reading, wait=0.1))
    t = time.monotonic()
    with pytest.raises(fastckpt.NotFoundError, match="being rewritten by a save that recycles it"):
        fastckpt.read_bundle(str(tmp_path / "m"))
    assert time.monotonic() - t >= 0.1
    release_lock(fd)
    assert np.array_equal(fastckpt.read_bundle(str(tmp_path / "m"))["t0"], _state(1)["t0"])


def test_the_latest_checkpoint_is_never_recycled(tmp_path):
    """With max_to_keep=1 the checkpoint retention drops is the only one
    until the new save commits: rewriting it would leave no checkpoint at
    all if the save died. It is deleted after the commit instead."""
    saver = fastckpt.Saver(max_to_keep=1, durable=False, recycle=True)
    saver.save(_state(1), str(tmp_path / "m"), global_step=1)
    old = os.stat(tmp_path / "m-1.data-00000-of-00001").st_ino
    held = open(tmp_path / "m-1.data-00000-of-00001", "rb")  # keeps the inode from being reused
    saver.save(_state(2), str(tmp_path / "m"), global_step=2)
    assert os.stat(tmp_path / "m-2.data-00000-of-00001").st_ino != old
    assert np.array_equal(np.frombuffer(held.read(), np.float32)[:50_000], _state(1)["t0"])  # never rewritten
    held.close()
    assert [os.path.basename(p) for p in fastckpt.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths] \
        == ["m-2"]
