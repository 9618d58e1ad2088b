"""Every public function gives a clear fastckpt error for bad input, and
bad input never leaves files behind or damages an existing checkpoint."""

import errno
import os

import numpy as np
import pytest

import fastckpt


def test_error_hierarchy():
    assert issubclass(fastckpt.NotFoundError, FileNotFoundError)
    assert issubclass(fastckpt.TensorNotFoundError, KeyError)
    assert issubclass(fastckpt.DataLossError, ValueError)
    assert issubclass(fastckpt.InvalidArgumentError, ValueError)
    assert issubclass(fastckpt.CheckpointIOError, OSError)
    assert issubclass(fastckpt.UnsupportedError, NotImplementedError)
    for cls in (fastckpt.NotFoundError, fastckpt.DataLossError, fastckpt.InvalidArgumentError,
                fastckpt.CheckpointIOError, fastckpt.UnsupportedError, fastckpt.TensorNotFoundError):
        assert issubclass(cls, fastckpt.CheckpointError)


@pytest.mark.parametrize("tensors,match", [
    ({"": np.zeros(1)}, "empty tensor name"),
    ({"\x00x": np.zeros(1)}, "NUL"),
    ({3: np.zeros(1)}, "must be str"),
    ({"d": np.zeros(2, "datetime64[s]")}, "no TensorFlow equivalent"),
    ({"o": np.array([1, 2], dtype=object)}, "bytes or str"),
    ({"v": np.zeros(1, dtype=[("a", "i4")])}, "no TensorFlow equivalent"),
    ({"a": np.zeros(1), b"a": np.zeros(1)}, "duplicate"),
    ([("a", np.zeros(1))], "mapping"),
])
def test_bad_tensors(tmp_path, tensors, match):
    with pytest.raises(fastckpt.InvalidArgumentError, match=match):
        fastckpt.write_bundle(str(tmp_path / "c"), tensors)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [dict(num_shards=0), dict(num_shards=1.0), dict(alignment=0),
                                    dict(alignment=True), dict(threads=0)])
def test_bad_write_options(tmp_path, kwargs):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(str(tmp_path / "c"), {"a": [1]}, **kwargs)


@pytest.mark.parametrize("prefix", ["", "dir/"])
def test_bad_prefix(tmp_path, prefix):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(prefix, {"a": [1]})


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.arange(3)})
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(p, {"a": np.arange(3), "bad": np.array([object()], dtype=object)})
    assert np.array_equal(fastckpt.read_bundle(p)["a"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["c.data-00000-of-00001", "c.index"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_error_is_oserror_with_errno(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(fastckpt.CheckpointIOError) as e:
            fastckpt.write_bundle(str(d / "c"), {"a": [1]})
        assert e.value.errno == errno.EACCES
    finally:
        d.chmod(0o700)


def test_write_into_a_file_as_directory_is_oserror(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        fastckpt.write_bundle(str(tmp_path / "f" / "c"), {"a": [1]})
    assert e.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_read_bad_names(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a": [1]})
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.read_bundle(p, [3])
    with pytest.raises(fastckpt.TensorNotFoundError):
        fastckpt.read_bundle(p, ["\x00hidden"])


def test_index_is_a_directory(tmp_path):
    (tmp_path / "c.index").mkdir()
    with pytest.raises(fastckpt.NotFoundError):
        fastckpt.read_bundle(str(tmp_path / "c"))
