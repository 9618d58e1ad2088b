"""CheckpointReader, load_checkpoint and list_variables."""

import collections.abc
import os

import numpy as np
import pytest

import fastckpt

TENSORS = {"b": np.arange(3, dtype=np.int64), "a/x": np.ones((2, 2), np.float32),
           "s": np.array([b"q"], dtype=object)}


@pytest.fixture
def prefix(tmp_path):
    return fastckpt.Saver().save(TENSORS, str(tmp_path / "model"), global_step=1)


def test_tf_style_methods(prefix):
    r = fastckpt.load_checkpoint(prefix)
    assert r.has_tensor("a/x") and not r.has_tensor("nope")
    assert r.get_variable_to_shape_map() == {"a/x": [2, 2], "b": [3], "s": [1]}
    assert r.get_variable_to_dtype_map() == {"a/x": np.float32, "b": np.int64, "s": np.dtype(object)}
    assert np.array_equal(r.get_tensor("b"), TENSORS["b"])


def test_mapping_protocol(prefix):
    with fastckpt.load_checkpoint(prefix) as r:
        assert isinstance(r, collections.abc.Mapping)
        assert list(r) == ["a/x", "b", "s"] and len(r) == 3
        assert "b" in r and "zz" not in r and 5 not in r
        assert r.get("zz") is None
        assert np.array_equal(r["a/x"], TENSORS["a/x"])
        assert set(dict(r.items())) == set(TENSORS)
        assert "3 tensors" in repr(r)


def test_missing_key_is_keyerror_and_notfound(prefix):
    r = fastckpt.load_checkpoint(prefix)
    with pytest.raises(KeyError):
        r["missing"]
    with pytest.raises(fastckpt.NotFoundError, match="Key missing not found"):
        r.get_tensor("missing")


def test_load_checkpoint_from_directory(prefix):
    r = fastckpt.load_checkpoint(os.path.dirname(prefix))
    assert r.prefix == prefix


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(fastckpt.NotFoundError, match="no checkpoint at"):
        fastckpt.load_checkpoint(str(tmp_path))
    with pytest.raises(fastckpt.NotFoundError) as e:
        fastckpt.load_checkpoint(str(tmp_path / "nothing"))
    assert isinstance(e.value, FileNotFoundError)


def test_list_variables(prefix):
    assert fastckpt.list_variables(prefix) == [("a/x", [2, 2]), ("b", [3]), ("s", [1])]
    assert fastckpt.list_variables(os.path.dirname(prefix)) == fastckpt.list_variables(prefix)


def test_read_subset_and_close_reopen(prefix):
    r = fastckpt.CheckpointReader(prefix)
    assert list(r.read(["b"])) == ["b"]
    r.close()
    assert np.array_equal(r["b"], TENSORS["b"])  # files reopen on demand
    with pytest.raises(fastckpt.InvalidArgumentError):
        r.read("b")


def test_missing_data_file(prefix):
    os.unlink(prefix + ".data-00000-of-00001")
    r = fastckpt.load_checkpoint(prefix)  # the index alone opens
    with pytest.raises(fastckpt.NotFoundError, match="data-00000-of-00001"):
        r["b"]


def test_pathlike_prefix(prefix):
    import pathlib
    assert sorted(fastckpt.read_bundle(pathlib.Path(prefix))) == ["a/x", "b", "s"]


def test_many_small_tensors_share_one_allocation(tmp_path):
    """Read into new (copied) arrays, small tensors are views of one
    allocation (each aligned to 64 bytes); large ones and a lone tensor own
    theirs. By default every one is a view of one copy-on-write map."""
    import fastckpt
    small = {f"s{i}": np.full(i + 1, i, np.float32) for i in range(50)}
    big = {"big": np.arange(100_000, dtype=np.float64)}
    p = fastckpt.write_bundle(str(tmp_path / "c"), {**small, **big})
    mapped = fastckpt.read_bundle(p)
    assert len({id(mapped[k].base) for k in small}) == 1  # (big, at an offset float64 does not suit, is copied)
    assert type(mapped["s0"].base).__name__ == "CowMap"
    assert all(np.array_equal(mapped[k], v) for k, v in {**small, **big}.items())
    got = fastckpt.read_bundle(p, copy_on_write=False)
    bases = {id(got[k].base) for k in small}
    assert len(bases) == 1 and got["s0"].base is not None
    assert all(got[k].ctypes.data % 64 == 0 and got[k].flags.writeable for k in small)
    assert got["big"].flags.owndata
    for k, v in {**small, **big}.items():
        assert np.array_equal(got[k], v)
    got["s1"][:] = -1  # views do not overlap
    assert got["s0"].tolist() == [0.0] and got["s2"].tolist() == [2.0] * 3
    assert fastckpt.CheckpointReader(p, copy_on_write=False).get_tensor("s3").flags.owndata


def test_one_read_plan_for_mixed_tensors(tmp_path):
    """Plain tensors are read by the C planner, the rest (strings, partitioned,
    ill-fitting into= arrays) by the general path -- in one read, in order."""
    import fastckpt
    state = {"a": np.arange(3.0), "s": np.array([b"x", b"yz"], dtype=object), "b": np.arange(4, dtype=np.int8)}
    p = fastckpt.write_bundle(str(tmp_path / "c"), state)
    got = fastckpt.read_bundle(p)
    assert list(got) == ["a", "b", "s"]  # index order, the string in its place
    assert got["s"].tolist() == [b"x", b"yz"] and got["b"].tolist() == [0, 1, 2, 3]
    into = {"a": np.empty(3), "b": np.empty(4, np.int8)[::-1]}  # b: not contiguous -> general path
    fastckpt.read_bundle(p, into=into)
    assert into["a"].tolist() == [0.0, 1.0, 2.0] and into["b"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("copy_on_write", [True, False])
def test_many_tensors_come_back_in_the_requested_order_with_strings_among_them(tmp_path, copy_on_write):
    """Reads of many tensors make the arrays while other threads read and
    check the bytes: the result still holds every name in the order asked
    for, string tensors (read by the general path) in their places, and
    the values right."""
    import fastckpt
    rng = np.random.default_rng(5)
    state = {f"t{i:04d}": rng.standard_normal(i % 7 + 1).astype(np.float32) for i in range(700)}
    state.update({f"t{i:04d}s": np.array([b"x" * i], dtype=object) for i in range(0, 700, 50)})
    p = fastckpt.write_bundle(str(tmp_path / "c"), state)
    got = fastckpt.read_bundle(p, copy_on_write=copy_on_write)
    assert list(got) == sorted(state)
    wanted = list(rng.permutation(sorted(state)))
    got = fastckpt.read_bundle(p, wanted, copy_on_write=copy_on_write)
    assert list(got) == wanted
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].tolist() == v.tolist(), k


@pytest.mark.parametrize("copy_on_write", [True, False])
def test_a_damaged_tensor_among_many_is_named(tmp_path, copy_on_write):
    """One flipped byte among 1,000 tensors read at once: DataLossError
    naming that tensor and its file (the reads run beside the making of
    the arrays, and their failure still surfaces)."""
    import fastckpt
    state = {f"t{i:04d}": np.full(64, i, np.float32) for i in range(1000)}
    p = fastckpt.write_bundle(str(tmp_path / "c"), state)
    data = p + ".data-00000-of-00001"
    with open(data, "rb") as f:
        offset = f.read().index(state["t0617"].tobytes())
    with open(data, "r+b") as f:
        f.seek(offset + 10)
        byte = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(fastckpt.DataLossError, match=r"data-00000-of-00001.*t0617"):
        fastckpt.read_bundle(p, copy_on_write=copy_on_write)
    assert fastckpt.read_bundle(p, verify=False, copy_on_write=copy_on_write)["t0001"].tolist() == [1.0] * 64


def test_into_is_untouched_when_any_tensor_fails(tmp_path):
    """The general path checks its tensors before the C planner reads any."""
    import fastckpt
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.arange(3.0), "b": np.arange(4.0)})
    into = {"a": np.full(3, -1.0), "b": np.empty(5)}  # b has the wrong shape
    with pytest.raises(fastckpt.InvalidArgumentError, match="shape"):
        fastckpt.read_bundle(p, into=into)
    assert into["a"].tolist() == [-1.0] * 3


def test_one_path_convention_everywhere(tmp_path):
    """A directory means its latest checkpoint, or without a state file the
    only checkpoint in it; several -> an error listing them; none -> one
    wording."""
    import re
    import subprocess
    import sys
    import fastckpt
    one = tmp_path / "one"
    p = fastckpt.write_bundle(str(one / "model"), {"w": np.arange(3.0)})
    readers = {
        "restore": lambda d: fastckpt.restore(d)["w"],
        "Saver.restore": lambda d: fastckpt.Saver().restore(d)["w"],
        "read_bundle": lambda d: fastckpt.read_bundle(d)["w"],
        "load_checkpoint": lambda d: fastckpt.load_checkpoint(d).get_tensor("w"),
        "list_variables": lambda d: np.arange(3.0) if fastckpt.list_variables(d) == [("w", [3])] else None,
        "verify": lambda d: np.arange(3.0) if [r.ok for r in fastckpt.verify_path(d)] == [True] else None,
    }
    for name, read in readers.items():
        assert np.array_equal(read(str(one)), np.arange(3.0)), name
    assert subprocess.run([sys.executable, "-m", "fastckpt", "ls", str(one)], capture_output=True).returncode == 0
    fastckpt.write_bundle(str(one / "other"), {"w": np.arange(2.0)})
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory, error, pattern in ((one, fastckpt.InvalidArgumentError, "2 checkpoints .*model, .*other"),
                                      (empty, fastckpt.NotFoundError, "no checkpoint at")):
        assert re.search(pattern, fastckpt.verify_path(str(directory))[0].problems[0])
        for name, read in readers.items():
            if name != "verify":
                with pytest.raises(error, match=pattern):
                    read(str(directory))
    with pytest.raises(fastckpt.NotFoundError, match="no checkpoint at"):
        fastckpt.restore(p + "-missing")


def test_missing_name_suggests_close_ones_and_bytes_names_work(prefix):
    import fastckpt
    r = fastckpt.load_checkpoint(prefix)
    with pytest.raises(fastckpt.TensorNotFoundError, match=r"did you mean 'a/x'"):
        r.get_tensor("a/y")
    assert r.has_tensor(b"a/x") and b"a/x" in r
    assert np.array_equal(r.get_tensor(b"a/x"), r.get_tensor("a/x"))
    assert np.array_equal(r[b"a/x"], r["a/x"])
