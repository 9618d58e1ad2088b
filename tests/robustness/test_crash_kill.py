"""Kill test: a process saving in a loop is SIGKILL-ed at random moments.
After every kill the directory's latest checkpoint restores bit-exactly to
a state that was fully saved, no committed checkpoint is lost, and the next
save cleans up whatever the killed one left behind."""

import os
import random
import re
import time

import pytest

import fastckpt
from tests.helpers import crash_child
from tests.helpers.roundtrip import assert_bit_equal

KILLS = int(os.environ.get("FASTCKPT_KILLS", "120"))

pytestmark = pytest.mark.no_sanitizer  # runs its own processes and preloads; slow under ASan


def step_of(prefix):
    """The step of a checkpoint; a staged bundle that a killed save left
    listed (its commit pending) counts as the step it was committed as."""
    m = None if os.path.basename(prefix).startswith(".fcsave-") else re.search(r"-(\d+)$", prefix)
    if m is None:  # a staged name's 16 hex digits can all be decimal: never read them as a step
        final = dict(fastckpt.get_checkpoint_state(os.path.dirname(prefix)).pending)[prefix]
        m = re.search(r"-(\d+)$", final)
    return int(m.group(1))


def logged_steps(log_path):
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [int(x) for x in f.read().split()]


def check_directory(d, committed):
    latest = fastckpt.latest_checkpoint(str(d))
    if not committed:
        return latest
    assert latest is not None, "a committed checkpoint was lost"
    assert step_of(latest) >= max(committed), f"latest {latest} is older than committed step {max(committed)}"
    got = fastckpt.Saver().restore(latest)
    want = crash_child.state_for(step_of(latest))
    for k, v in want.items():
        assert_bit_equal(got[k], v)
    st = fastckpt.get_checkpoint_state(str(d))
    for p in st.all_model_checkpoint_paths:  # everything the state file names is complete
        assert fastckpt.verify_checkpoint(p).ok, p
    return latest


def test_sigkill_at_random_moments(tmp_path, ctx, counts):
    d = tmp_path / "run"
    d.mkdir()
    log = str(tmp_path / "committed.log")
    rng = random.Random(1234)
    step, survived, mid_save = 0, 0, 0
    for i in range(KILLS):
        p = ctx.Process(target=crash_child.save_forever, args=(str(d), step, log, i % 2 == 0))
        p.start()
        time.sleep(rng.uniform(0.0, 0.06))
        p.kill()
        p.join()
        assert p.exitcode == -9, p.exitcode
        leftovers = [n for n in os.listdir(d) if fastckpt.storage.locking.is_leftover(n)]
        mid_save += bool(leftovers)
        latest = check_directory(d, logged_steps(log))
        survived += 1
        step = step_of(latest) + 1 if latest else step
    # one more save cleans every leftover of the killed ones
    fastckpt.Saver(max_to_keep=3).save(crash_child.state_for(step), str(d / "model"), global_step=step)
    assert not [n for n in os.listdir(d) if fastckpt.storage.locking.is_leftover(n)]
    assert check_directory(d, logged_steps(log) + [step]) == str(d / f"model-{step}")
    counts["kills survived"] = survived
    counts["kills that left a save half-written"] = mid_save
    assert survived >= 100
    assert step > 20, "the child should have committed many checkpoints"


def test_concurrent_savers_never_corrupt_the_state(tmp_path, ctx, counts):
    d = tmp_path / "shared"
    d.mkdir()
    procs = [ctx.Process(target=crash_child.save_n, args=(str(d), f"p{k}", 15)) for k in range(3)]
    for p in procs:
        p.start()
    polls = 0
    while any(p.is_alive() for p in procs):
        st = fastckpt.get_checkpoint_state(str(d))  # never raises: always a whole file
        if st is not None:
            polls += 1
            latest = st.model_checkpoint_path
            if not fastckpt.directory.state.checkpoint_exists(latest):
                # only acceptable if a newer state replaced it meanwhile, or while the directory's first
                # save is being committed (the state names its final prefix, pending, before its index
                # exists: there is no earlier checkpoint to name)
                again = fastckpt.get_checkpoint_state(str(d))
                assert again.model_checkpoint_path != latest or any(
                    os.path.normpath(final) == os.path.normpath(latest) for _, final in again.pending)
        time.sleep(0.001)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    st = fastckpt.get_checkpoint_state(str(d))
    assert len(st.all_model_checkpoint_paths) == 4
    assert all(fastckpt.verify_checkpoint(p).ok for p in st.all_model_checkpoint_paths)
    assert not [n for n in os.listdir(d) if fastckpt.storage.locking.is_leftover(n)]
    counts["concurrent state-file polls"] = polls


def test_temp_file_removed_before_it_was_locked_is_recreated(tmp_path, monkeypatch):
    """If a cleaner deletes a brand-new temporary before its writer holds the
    lock, the writer notices (no links left) and creates another one."""
    from fastckpt.storage import locking as locking
    names = iter([str(tmp_path / "a.tmp0"), str(tmp_path / "b.tmp0")])
    real_flock = locking.fcntl.flock
    calls = {"n": 0}

    def flock_after_cleaner(fd, op):
        calls["n"] += 1
        if calls["n"] == 1:
            os.unlink(str(tmp_path / "a.tmp0"))  # the cleaner got there first
        return real_flock(fd, op)
    monkeypatch.setattr(locking.fcntl, "flock", flock_after_cleaner)
    path, fd = locking.create_locked_temp(lambda: next(names))
    try:
        assert path == str(tmp_path / "b.tmp0") and os.path.exists(path)
        assert os.listdir(tmp_path) == ["b.tmp0"]
    finally:
        os.close(fd)
