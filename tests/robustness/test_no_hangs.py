"""No input and no fork hangs a save, a restore or verify. Each attack runs
in a child process with a deadline, so a regression fails instead of
hanging the suite."""

import multiprocessing
import os
import select
import threading
import time

import numpy as np
import pytest

import fastckpt
from fastckpt import _core

SMALL = {"w": np.arange(1000, dtype=np.float32)}


def run_with_deadline(target, *args, deadline=60):
    """Run ``target(*args)`` in a forked process; it must finish in time."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def wrapper():
        try:
            q.put(("ok", target(*args)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            q.put(("error", f"{type(e).__name__}: {e}"))
    p = ctx.Process(target=wrapper)
    p.start()
    p.join(deadline)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{target.__name__} hung (> {deadline} s)")
    return q.get(timeout=5)


def save_into(d):
    fastckpt.Saver(max_to_keep=2).save(SMALL, os.path.join(d, "m"), global_step=9)
    return sorted(os.listdir(d))


@pytest.mark.parametrize("name", ["m-9.index.tempstate1", "m-1.data-00000-of-00001.tempstate7",
                                  ".fcsave-0123456789abcdef.index", "checkpoint.tmp" + "0" * 32])
def test_fifo_named_like_a_leftover_does_not_block_saves(tmp_path, name):
    os.mkfifo(tmp_path / name)
    kind, result = run_with_deadline(save_into, str(tmp_path))
    assert kind == "ok", result
    assert name in result  # not ours to delete: left alone


@pytest.mark.parametrize("which", ["checkpoint", "m-1.index", "m-1.data-00000-of-00001"])
def test_fifo_in_place_of_a_checkpoint_file_is_an_error_not_a_hang(tmp_path, which):
    fastckpt.Saver().save(SMALL, str(tmp_path / "m"), global_step=1)
    os.unlink(tmp_path / which)
    os.mkfifo(tmp_path / which)

    def restore_latest(d):
        try:
            fastckpt.load_checkpoint(d).read()
            return "restored"
        except fastckpt.CheckpointError as e:
            return type(e).__name__

    def verify(d):
        return [r.ok for r in fastckpt.verify_path(d)]
    assert run_with_deadline(restore_latest, str(tmp_path)) in (("ok", "DataLossError"), ("ok", "NotFoundError"))
    assert run_with_deadline(verify, str(tmp_path)) == ("ok", [False])
    if which == "checkpoint":
        kind, result = run_with_deadline(lambda d: fastckpt.get_checkpoint_state(d), str(tmp_path))
        assert kind == "error" and "DataLossError" in result and "not a regular file" in result


def test_verify_of_an_index_claiming_two_billion_shards(tmp_path):
    prefix = str(tmp_path / "s")
    data = np.arange(4, dtype=np.float32).tobytes()
    with open(prefix + ".data-00000-of-2147483647", "wb") as f:
        f.write(data)
    entry = _core.encode_entry(1, (4,), 0, 0, 16, _core.mask_crc(_core.crc32c(data)))
    with open(prefix + ".index", "wb") as f:
        f.write(_core.build_table([(b"", _core.encode_header(2**31 - 1)), (b"x", entry)]))
    assert os.path.getsize(prefix + ".index") < 200

    def verify(p):
        t = time.monotonic()
        report = fastckpt.verify_checkpoint(p)
        return report.ok, len(report.problems), report.problems[0], time.monotonic() - t

    kind, (ok, nproblems, first, seconds) = run_with_deadline(verify, prefix, deadline=30)
    assert not ok and nproblems == 1 and "2147483646 of 2147483647 data file(s) missing" in first
    assert seconds < 5

    def read(p):
        return fastckpt.read_bundle(p)["x"].tolist()
    assert run_with_deadline(read, prefix) == ("ok", [0.0, 1.0, 2.0, 3.0])


def test_fork_during_a_background_save(tmp_path, monkeypatch):
    """A child forked while a background save holds the directory lock: its
    own save neither waits for the parent's (absent) thread nor keeps the
    parent's lock; the parent's next save is not blocked by the child."""
    d = tmp_path / "run"
    mgr = fastckpt.CheckpointManager(d, max_to_keep=3)
    mgr.save(SMALL, 1)
    parent = os.getpid()
    inside, release = threading.Event(), threading.Event()
    real = fastckpt.directory.commit.install_bundle

    def slow_install(*a, **k):
        if os.getpid() == parent:
            inside.set()
            release.wait(60)
        return real(*a, **k)
    monkeypatch.setattr(fastckpt.directory.commit, "install_bundle", slow_install)
    fut = mgr.save(SMALL, 2, blocking=False)
    assert inside.wait(30)  # the background save holds the directory lock now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(r)
            got = mgr.save({"w": SMALL["w"] + 1}, 3)
            os.write(w, got.encode() + b"\n")
            time.sleep(15)  # stays alive: the parent must not wait for it
        finally:
            os._exit(0)
    os.close(w)
    release.set()
    assert fut.result(timeout=30).endswith("ckpt-2")
    t = time.monotonic()
    ready, _, _ = select.select([r], [], [], 30)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's save hung")
    with os.fdopen(r) as f:
        child_saved = f.readline().strip()  # the child's save completes
    assert child_saved.endswith("ckpt-3"), child_saved
    mgr.save(SMALL, 4)  # not blocked by the sleeping child
    assert time.monotonic() - t < 10
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert fastckpt.latest_checkpoint(str(d)).endswith("ckpt-4")
