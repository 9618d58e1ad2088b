"""Disk full (a real tmpfs that fills mid-save) and injected I/O errors:
an OSError that is a fastckpt error and carries errno, no partial files,
the previous checkpoint and the state file untouched."""

import errno
import os

import numpy as np
import pytest

import fastckpt
from tests.helpers.roundtrip import assert_bit_equal

SMALL = {"w": np.arange(32_768, dtype=np.float32)}             # 128 KiB
LARGE = {"w": np.arange(2_000_000, dtype=np.float32)}          # 8 MB


def entries(d):
    return sorted(n for n in os.listdir(d) if n != "checkpoint.lock")


def test_disk_fills_mid_save(small_tmpfs):
    saver = fastckpt.Saver(max_to_keep=2)
    first = saver.save(SMALL, str(small_tmpfs / "m"), global_step=1)
    before = entries(small_tmpfs)
    state_before = (small_tmpfs / "checkpoint").read_text()
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        saver.save(LARGE, str(small_tmpfs / "m"), global_step=2)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert entries(small_tmpfs) == before, "partial files were left behind"
    assert (small_tmpfs / "checkpoint").read_text() == state_before
    assert fastckpt.latest_checkpoint(str(small_tmpfs)) == first
    assert_bit_equal(fastckpt.Saver().restore(first)["w"], SMALL["w"])
    # and saving works again once there is room
    saver.save(SMALL, str(small_tmpfs / "m"), global_step=3)
    assert fastckpt.latest_checkpoint(str(small_tmpfs)).endswith("m-3")


@pytest.mark.parametrize("where", ["fsync", "replace", "replace-index", "open", "ftruncate"])
@pytest.mark.parametrize("err", [errno.EIO, errno.EACCES, errno.ENOSPC])
def test_injected_errors_leave_previous_checkpoint(tmp_path, monkeypatch, where, err):
    saver = fastckpt.Saver(max_to_keep=2, durable=True)
    first = saver.save(SMALL, str(tmp_path / "m"), global_step=1)
    before = entries(tmp_path)
    state_before = (tmp_path / "checkpoint").read_text()
    name = where.split("-")[0]
    real = getattr(os, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if where == "open":
            fail = calls["n"] == 2  # the data file is created, the index temp is not
        elif where == "replace-index":
            fail = str(args[1]).endswith(".index")  # data renamed into place, index not
        else:
            fail = True
        if fail:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)
    monkeypatch.setattr(fastckpt.bundle.writer.os, name, failing)
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        saver.save(LARGE, str(tmp_path / "m"), global_step=2)
    monkeypatch.undo()
    assert e.value.errno == err
    assert entries(tmp_path) == before
    assert (tmp_path / "checkpoint").read_text() == state_before
    assert_bit_equal(fastckpt.Saver().restore(first)["w"], SMALL["w"])


def test_state_file_write_failure_keeps_old_state(tmp_path, monkeypatch):
    saver = fastckpt.Saver(max_to_keep=2)
    saver.save(SMALL, str(tmp_path / "m"), global_step=1)
    state_before = (tmp_path / "checkpoint").read_text()
    real = os.replace

    def failing(src, dst):
        if os.path.basename(str(dst)) == "checkpoint":
            raise OSError(errno.EIO, "injected")
        return real(src, dst)
    monkeypatch.setattr(fastckpt.directory.state.os, "replace", failing)
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        saver.save(SMALL, str(tmp_path / "m"), global_step=2)
    monkeypatch.undo()
    assert e.value.errno == errno.EIO
    assert (tmp_path / "checkpoint").read_text() == state_before
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    assert fastckpt.latest_checkpoint(str(tmp_path)).endswith("m-1")
