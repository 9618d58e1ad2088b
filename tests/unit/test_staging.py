"""The bounded staging pool for arrays that need converting, and writes
that never touch bytes between items."""

import os

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import fastckpt
from fastckpt import _core
from fastckpt.bundle.writer import c_order_chunks
from tests.helpers.roundtrip import assert_bit_equal


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)), st.integers(4, 200),
       st.sampled_from(["c", "f", "big", "strided"]))
def test_chunks_concatenate_to_c_order_bytes(arr, max_bytes, layout):
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "big":
        arr = arr.astype(">f4")
    elif layout == "strided" and arr.ndim:
        arr = arr[::-1]
    chunks = list(c_order_chunks(arr, max_bytes))
    assert b"".join(c.tobytes() for c in chunks) == np.ascontiguousarray(arr, dtype="<f4").tobytes()
    assert all(c.nbytes <= max_bytes for c in chunks)  # max_bytes >= one element
    assert all(c.flags.c_contiguous and c.dtype == np.dtype("<f4") for c in chunks)


@pytest.mark.parametrize("staging", [1, 100, 4096, 64 << 20])
def test_staged_tensors_roundtrip_with_small_pools(tmp_path, staging):
    base = np.arange(30_000, dtype=np.float64).reshape(100, 300)
    tensors = {"fortran": np.asfortranarray(base), "strided": base[::3, ::7], "big": base.astype(">f8"),
               "direct": base, "s": np.array([b"between"], dtype=object), "bigscalar": np.array(1.5, ">f4"),
               "empty_big": np.zeros((0, 3), ">i4")}
    prefix = str(tmp_path / "c")
    fastckpt.write_bundle(prefix, tensors, staging_bytes=staging, threads=2)
    got = fastckpt.read_bundle(prefix)
    for k, v in tensors.items():
        assert_bit_equal(got[k], v)


def test_staged_checkpoint_is_byte_identical_to_contiguous_one(tmp_path):
    base = np.arange(5000, dtype=np.int32).reshape(50, 100)
    a = fastckpt.write_bundle(str(tmp_path / "a"), {"x": np.asfortranarray(base)}, staging_bytes=64)
    b = fastckpt.write_bundle(str(tmp_path / "b"), {"x": base})
    for ext in (".index", ".data-00000-of-00001"):
        assert open(a + ext, "rb").read() == open(b + ext, "rb").read()


def test_bad_staging_bytes(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError):
        fastckpt.write_bundle(str(tmp_path / "c"), {"x": [1]}, staging_bytes=0)


def test_writes_leave_gaps_untouched(tmp_path):
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(b"K" * 100)
    fd = os.open(path, os.O_WRONLY)
    try:
        _core.io_run([fd, fd], [0, 50], [b"a" * 10, b"b" * 10], write=True)
    finally:
        os.close(fd)
    assert open(path, "rb").read() == b"a" * 10 + b"K" * 40 + b"b" * 10 + b"K" * 40


def test_fast_and_general_paths_agree(tmp_path):
    """A plain dict of arrays takes the C fast path; an OrderedDict the
    general one. Same bytes either way, and both readers agree."""
    import collections
    rng = np.random.default_rng(5)
    tensors = {f"t/{i:03d}": rng.standard_normal((i % 5, 3)).astype(np.float32) for i in range(50)}
    tensors["z_scalar"] = np.array(3, np.int64)
    tensors["a_first"] = np.arange(4, dtype=np.uint16)  # out of order: the fast path sorts
    for shards, align in ((1, 1), (3, 64)):
        a = fastckpt.write_bundle(str(tmp_path / f"fast{shards}"), tensors, num_shards=shards, alignment=align)
        b = fastckpt.write_bundle(str(tmp_path / f"gen{shards}"), collections.OrderedDict(tensors),
                                  num_shards=shards, alignment=align)
        for ext in [".index"] + [f".data-{s:05d}-of-{shards:05d}" for s in range(shards)]:
            assert open(a + ext, "rb").read() == open(b + ext, "rb").read(), ext
        fast = fastckpt.read_bundle(a)
        general = fastckpt.read_bundle(a, into={k: np.empty_like(v) for k, v in tensors.items()})
        for k, v in tensors.items():
            assert_bit_equal(fast[k], v)
            assert_bit_equal(general[k], v)


def test_fast_path_duplicate_utf8_is_rejected(tmp_path):
    # distinct str keys never collide in UTF-8, but a str/bytes pair does: general path
    with pytest.raises(fastckpt.InvalidArgumentError, match="duplicate"):
        fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.zeros(1), b"a": np.zeros(1)})


def test_fast_read_falls_back_for_surrogates_and_missing(tmp_path):
    p = fastckpt.write_bundle(str(tmp_path / "c"), {"x\udcff": np.zeros(2), "y": np.ones(2)})
    assert fastckpt.read_bundle(p, ["x\udcff"])["x\udcff"].tolist() == [0.0, 0.0]
    with pytest.raises(fastckpt.TensorNotFoundError):
        fastckpt.read_bundle(p, ["y", "nope"])
