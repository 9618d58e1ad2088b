"""One options record for every door of the save path: ``SaveOptions`` is
checked when it is made, and ``save``, ``Saver`` and ``CheckpointManager``
honour it exactly as they honour the keyword arguments it replaces."""

import dataclasses
import os

import numpy as np
import pytest

import fastckpt
from fastckpt import SaveOptions

STATE = {"a": np.arange(1000, dtype=np.float32), "b": np.ones((10, 10), np.int64), "c": np.zeros(3)}


@pytest.mark.parametrize("bad", [dict(num_shards=0), dict(num_shards=1.5), dict(alignment=0), dict(threads=0),
                                 dict(compression="lz4"), dict(compression="zstd", compression_level=99),
                                 dict(recycle="yes")])
def test_bad_options_are_refused_when_made(bad):
    with pytest.raises(fastckpt.InvalidArgumentError):
        SaveOptions(**bad)


def test_options_are_frozen_and_replaced_with_checks():
    opts = SaveOptions(num_shards=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_shards = 3  # type: ignore[misc]
    assert opts.replace(alignment=64).alignment == 64 and opts.alignment == 1
    with pytest.raises(fastckpt.InvalidArgumentError):
        opts.replace(num_shards=-1)


def data_files(directory):
    return sorted(n for n in os.listdir(directory) if ".data-" in n)


def test_save_honours_options(tmp_path):
    prefix = fastckpt.save(STATE, str(tmp_path / "x"), options=SaveOptions(num_shards=2, durable=False))
    assert data_files(tmp_path) == ["x.data-00000-of-00002", "x.data-00001-of-00002"]
    back = fastckpt.restore(prefix)
    assert all(np.array_equal(back[k], v) for k, v in STATE.items())


def test_options_and_keywords_give_the_same_bytes(tmp_path):
    fastckpt.save(STATE, str(tmp_path / "kw"), num_shards=2, alignment=64)
    fastckpt.save(STATE, str(tmp_path / "op"), options=SaveOptions(num_shards=2, alignment=64))
    for suffix in (".index", ".data-00000-of-00002", ".data-00001-of-00002"):
        assert (tmp_path / ("kw" + suffix)).read_bytes() == (tmp_path / ("op" + suffix)).read_bytes()


def test_saver_and_manager_honour_options(tmp_path):
    saver = fastckpt.Saver(options=SaveOptions(num_shards=3))
    saver.save(STATE, str(tmp_path / "s" / "m"), global_step=1)
    assert len(data_files(tmp_path / "s")) == 3
    mgr = fastckpt.CheckpointManager(str(tmp_path / "g"), options=SaveOptions(alignment=4096))
    prefix = mgr.save(STATE, 1)
    with fastckpt.load_checkpoint(prefix) as reader:
        offsets = {key: entry.offset for key, entry in reader.entries() if key.decode() in STATE}
    assert len(offsets) == 3 and all(o % 4096 == 0 for o in offsets.values()) and max(offsets.values()) >= 4096
    assert np.array_equal(fastckpt.restore(prefix)["a"], STATE["a"])


def test_options_with_conflicting_keywords_is_an_error(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError, match="num_shards"):
        fastckpt.save(STATE, str(tmp_path / "x"), num_shards=2, options=SaveOptions())
    with pytest.raises(fastckpt.InvalidArgumentError, match="durable"):
        fastckpt.Saver(durable=False, options=SaveOptions())
    with pytest.raises(fastckpt.InvalidArgumentError, match="SaveOptions"):
        fastckpt.CheckpointManager(str(tmp_path / "g"), options={"durable": False})
    assert not os.path.exists(tmp_path / "x.index")
