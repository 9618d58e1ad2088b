"""Zero-copy views from the memory-mapped reader."""

import numpy as np
import pytest

import fastckpt
from tests.helpers.roundtrip import flip_byte


def is_view(a):
    return not a.flags.owndata and not a.flags.writeable


def test_aligned_tensors_are_zero_copy_read_only_views(tmp_path):
    tensors = {"i8": np.arange(3, dtype=np.int8), "f32": np.arange(10, dtype=np.float32),
               "f64": np.ones((2, 3)), "c": np.array([1 + 1j], np.complex128)}
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), tensors, alignment=64)
    with fastckpt.load_checkpoint(prefix) as r:
        for k, v in tensors.items():
            got = r[k]
            assert is_view(got), k
            assert np.array_equal(got, v) and got.dtype == v.dtype
            with pytest.raises(ValueError):
                got[...] = 0
        assert is_view(r.get_tensor("f32", copy=False))
        copy = r.get_tensor("f32")  # a copy-on-write map: writing it leaves the reader's view alone
        assert copy.flags.writeable
        copy[:] = -1
        assert np.array_equal(r["f32"], tensors["f32"])
        assert r.read(["f32"])["f32"][3] == 3


def test_misaligned_tensor_falls_back_to_a_copy(tmp_path):
    tensors = {"a": np.arange(3, dtype=np.int8), "b": np.arange(4, dtype=np.float32)}  # b at offset 3
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), tensors)
    r = fastckpt.load_checkpoint(prefix)
    assert np.array_equal(r["b"], tensors["b"]) and r["b"].flags.owndata


def test_strings_and_empty_tensors(tmp_path):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), {"s": np.array([b"x"], dtype=object),
                                                          "e": np.zeros((0, 4), np.float32)})
    r = fastckpt.load_checkpoint(prefix)
    assert r["s"].tolist() == [b"x"]
    assert r["e"].shape == (0, 4) and not r["e"].flags.writeable


def test_view_checks_crc_once(tmp_path):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), {"x": np.arange(1000, dtype=np.float32)})
    flip_byte(prefix + ".data-00000-of-00001", 40, 0xFF)
    with pytest.raises(fastckpt.DataLossError, match="tensor 'x': checksum does not match"):
        fastckpt.load_checkpoint(prefix)["x"]
    assert is_view(fastckpt.CheckpointReader(prefix, verify=False)["x"])


def test_views_survive_close_and_a_new_save_to_the_same_prefix(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"x": np.full(1000, 1.0)}, alignment=64)
    r = fastckpt.load_checkpoint(p)
    view = r["x"]
    r.close()
    fastckpt.write_bundle(p, {"x": np.full(1000, 2.0)}, alignment=64)
    assert (view == 1.0).all()  # the old file's mapping is intact
    assert (fastckpt.load_checkpoint(p)["x"] == 2.0).all()


def test_tensorflow_reads_aligned_bundles(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tensors = {"a": np.arange(3, dtype=np.int8), "b": np.arange(5, dtype=np.float64)}
    p = fastckpt.write_bundle(str(tmp_path / "c"), tensors, alignment=4096)
    r = tf.train.load_checkpoint(p)
    for k, v in tensors.items():
        assert np.array_equal(r.get_tensor(k), v)
