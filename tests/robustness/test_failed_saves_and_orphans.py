"""A failed save removes what it wrote and leaves the state file as it was;
leftovers of killed saves are finished or removed by the next save (never a
live save's files); ``fastckpt gc`` does and reports the same."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import fastckpt
from fastckpt.storage.locking import create_locked_temp, is_leftover, release_lock
from tests.helpers.roundtrip import assert_bit_equal

SMALL = {"w": np.arange(32_768, dtype=np.float32)}  # 128 KiB


def files(d):
    return sorted(n for n in os.listdir(d) if n != "checkpoint.lock")


def fill_leaving(d, pages):
    """A filler file that leaves exactly ``pages`` free pages."""
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    with open(d / "filler", "wb") as f:
        f.write(b"\0" * (free - pages * st.f_frsize))


def test_disk_full_at_the_state_file_write_recovers(small_tmpfs):
    d = small_tmpfs / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    first = saver.save(SMALL, str(d / "m"), global_step=1)
    before, state_before = files(d), (d / "checkpoint").read_text()
    fill_leaving(small_tmpfs, 33)  # the new bundle (32 + 1 pages) fits, the state file does not
    for _ in range(3):  # every retry fails the same way and adds nothing
        with pytest.raises(fastckpt.CheckpointIOError) as e:
            saver.save(SMALL, str(d / "m"), global_step=2)
        assert e.value.errno == errno.ENOSPC
        assert files(d) == before, "a failed save left files behind"
        assert (d / "checkpoint").read_text() == state_before
    os.unlink(small_tmpfs / "filler")  # space freed: saving works again
    saver.save({"w": SMALL["w"] + 1}, str(d / "m"), global_step=2)
    assert fastckpt.latest_checkpoint(str(d)) == str(d / "m-2")
    assert_bit_equal(fastckpt.restore(first)["w"], SMALL["w"])


@pytest.mark.parametrize("which", [1, 2])
def test_state_write_failure_at_either_commit_write_rolls_back(tmp_path, monkeypatch, which):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(SMALL, str(d / "m"), global_step=1)
    before, state_before = files(d), (d / "checkpoint").read_text()
    real = fastckpt.directory.listing.update_checkpoint_state
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == which:
            raise fastckpt.CheckpointIOError(errno.ENOSPC, "injected: no space", "checkpoint")
        return real(*a, **k)
    monkeypatch.setattr(fastckpt.directory.listing, "update_checkpoint_state", failing)
    with pytest.raises(fastckpt.CheckpointIOError, match="injected"):
        saver.save(SMALL, str(d / "m"), global_step=2)
    assert files(d) == before
    assert (d / "checkpoint").read_text() == state_before


def test_failed_resave_keeps_the_old_contents(tmp_path, monkeypatch):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(SMALL, str(d / "m"), global_step=1)
    real = fastckpt.directory.listing.update_checkpoint_state
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise fastckpt.CheckpointIOError(errno.EIO, "injected", "checkpoint")
        return real(*a, **k)
    monkeypatch.setattr(fastckpt.directory.listing, "update_checkpoint_state", failing)
    with pytest.raises(fastckpt.CheckpointIOError):
        saver.save({"w": SMALL["w"] * 2}, str(d / "m"), global_step=1)
    assert_bit_equal(fastckpt.restore(fastckpt.latest_checkpoint(str(d)))["w"], SMALL["w"])


def dead_writers_files(d):
    """Files a killed save would leave: a staged bundle (unlocked) and a
    TensorFlow-style temporary."""
    fastckpt.write_bundle(str(d / ".fcsave-00112233445566aa"), SMALL)
    (d / "m-9.index.tempstate123").write_bytes(b"partial")
    (d / ".fclink-0011223344556677").write_bytes(b"partial")


def test_next_save_removes_dead_writers_files_but_not_a_live_save(tmp_path):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(SMALL, str(d / "m"), global_step=1)
    dead_writers_files(d)
    live, fd = create_locked_temp(lambda: str(d / ".fcsave-ffeeddccbbaa9988.data-00000-of-00001"))
    try:
        saver.save(SMALL, str(d / "m"), global_step=2)
        assert [n for n in os.listdir(d) if is_leftover(n)] == [os.path.basename(live)]
    finally:
        release_lock(fd)
    saver.save(SMALL, str(d / "m"), global_step=3)
    assert not [n for n in os.listdir(d) if is_leftover(n)]


def test_gc_reports_and_cleans(tmp_path):
    d = tmp_path / "run"
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(SMALL, str(d / "m"), global_step=1)
    fastckpt.write_bundle(str(d / "mine"), SMALL)  # the user's own, unlisted: reported, kept
    dead_writers_files(d)
    dry = fastckpt.collect_garbage(str(d), dry_run=True)
    assert len(dry.leftovers) == 4 and not dry.removed and dry.unlisted == [str(d / "mine")]
    cli = subprocess.run([sys.executable, "-m", "fastckpt.cli", "gc", str(d)], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "removed 4" in cli.stdout and "mine" in cli.stdout
    assert not [n for n in os.listdir(d) if is_leftover(n)]
    assert os.path.exists(d / "mine.index")
    again = subprocess.run([sys.executable, "-m", "fastckpt.cli", "gc", str(d), "--dry-run"],
                           capture_output=True, text=True)
    assert "removed 0" in again.stdout or "nothing to remove" in again.stdout


def test_gc_on_a_missing_directory_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastckpt.cli", "gc", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope" in r.stderr
