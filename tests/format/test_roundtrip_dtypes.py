"""Write/read round trips over every dtype and every kind of input array."""

import ml_dtypes
import numpy as np
import pytest

import fastckpt
from tests.helpers.roundtrip import assert_bit_equal, check_roundtrip

FIXED = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e5m2,
         ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e4m3b11fnuz,
         ml_dtypes.float8_e5m2fnuz, ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2,
         ml_dtypes.float4_e2m1fn, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
         np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    if dt.kind in "iu":  # every bit pattern
        return rng.integers(0, 256, (*shape, dt.itemsize), dtype=np.uint8).view(dt).reshape(shape)
    if dt.name in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(dt)
        return rng.integers(int(info.min), int(info.max) + 1, shape).astype(dt)
    return (rng.standard_normal(shape) * 3).astype(dt)


@pytest.mark.parametrize("dtype", FIXED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (4, 5, 6)], ids=str)
def test_every_dtype_and_shape(tmp_path, dtype, shape):
    check_roundtrip(tmp_path, {"t": sample(dtype, shape)})


def test_all_dtypes_in_one_bundle(tmp_path):
    tensors = {np.dtype(d).name: sample(d, (3, 2), i) for i, d in enumerate(FIXED)}
    check_roundtrip(tmp_path, tensors)


def test_special_float_values_survive(tmp_path):
    x = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, np.finfo(np.float32).max], np.float32)
    check_roundtrip(tmp_path, {"x": x})


@pytest.mark.parametrize("strings", [
    np.array([b"hello", b"", b"x" * 200]),
    np.array(["héllo", "", "wörld"]),
    np.array([b"\x00lead", "text", b"\xff"], dtype=object),
    np.array(b"scalar", dtype=object),
    np.array([], dtype=object),
    np.array([[b"a", b"bb"], [b"ccc", b""]], dtype=object),
], ids=["bytes", "unicode", "object-mixed", "scalar", "empty", "2d"])
def test_string_tensors(tmp_path, strings):
    check_roundtrip(tmp_path, {"s": strings})


def test_long_strings(tmp_path):
    check_roundtrip(tmp_path, {"s": np.array([b"y" * 300_000, b"z" * 70_000], dtype=object)})


def test_non_contiguous_fortran_and_big_endian_inputs(tmp_path):
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    tensors = {
        "strided": base[::2, ::3],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "big_endian": base.astype(">f8"),
        "big_int": np.arange(5, dtype=">i4"),
        "big_complex": np.array([1 + 2j, 3 - 4j], dtype=">c16"),
        "negative_stride": base[::-1],
    }
    prefix = check_roundtrip(tmp_path, tensors)
    # the stored bytes are little-endian: a raw look at the data file
    got = fastckpt.read_bundle(prefix, ["big_int"])["big_int"]
    assert got.dtype == np.dtype("<i4")


def test_python_scalars_and_lists(tmp_path):
    got = fastckpt.read_bundle(fastckpt.write_bundle(str(tmp_path / "p"), {"f": 1.5, "i": 3, "l": [[1, 2], [3, 4]], "b": True}))
    assert got["f"].dtype == np.float64 and got["f"] == 1.5
    assert got["i"].dtype == np.int64 and got["l"].tolist() == [[1, 2], [3, 4]]
    assert got["b"].dtype == np.bool_ and bool(got["b"])


@pytest.mark.parametrize("name", ["plain", "with/slash/path", "ünïcödé/名前", "sp ace", "x" * 5000,
                                  "_CHECKPOINTABLE_OBJECT_GRAPH", "a\nb", "[bracket]*?"])
def test_any_utf8_name(tmp_path, name):
    check_roundtrip(tmp_path, {name: np.arange(3)})


def test_many_tensors_multi_block_index(tmp_path):
    tensors = {f"layer_{i:05d}/w": np.full(2, i, np.int32) for i in range(5000)}
    check_roundtrip(tmp_path, tensors)


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
@pytest.mark.parametrize("num_shards", [1, 2, 5])
def test_alignment_and_shards(tmp_path, alignment, num_shards):
    tensors = {f"t{i}": sample(np.float32, (i * 7 + 1,), i) for i in range(9)}
    tensors["empty"] = np.zeros((0,), np.float32)
    tensors["s"] = np.array([b"abc"], dtype=object)
    prefix = check_roundtrip(tmp_path, tensors, alignment=alignment, num_shards=num_shards)
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.num_shards == num_shards


def test_into_fills_in_place(tmp_path):
    src = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.array([b"x", b"yz"], dtype=object)}
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), src)
    dst = {"a": np.zeros((3, 4), np.float32), "s": np.empty(2, dtype=object)}
    a_id = id(dst["a"])
    out = fastckpt.read_bundle(prefix, into=dst)
    assert out is dst and id(dst["a"]) == a_id
    assert_bit_equal(dst["a"], src["a"])
    assert dst["s"].tolist() == [b"x", b"yz"]


def test_into_non_contiguous_and_big_endian_targets(tmp_path):
    src = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), src)
    big = np.zeros((6, 8), np.float32)
    dst = {"a": big[::2, ::2]}
    fastckpt.read_bundle(prefix, into=dst)
    assert np.array_equal(big[::2, ::2], src["a"])
    dst2 = {"a": np.zeros((3, 4), ">f4")}
    fastckpt.read_bundle(prefix, into=dst2)
    assert np.array_equal(dst2["a"], src["a"])


def test_into_mismatches_are_clear_errors(tmp_path):
    prefix = fastckpt.write_bundle(str(tmp_path / "c"), {"a": np.zeros((3, 4), np.float32)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="shape"):
        fastckpt.read_bundle(prefix, into={"a": np.zeros((4, 3), np.float32)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="dtype"):
        fastckpt.read_bundle(prefix, into={"a": np.zeros((3, 4), np.float64)})
    ro = np.zeros((3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(fastckpt.InvalidArgumentError, match="read-only"):
        fastckpt.read_bundle(prefix, into={"a": ro})
    with pytest.raises(fastckpt.TensorNotFoundError):
        fastckpt.read_bundle(prefix, into={"missing": np.zeros(1)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="numpy array"):
        fastckpt.read_bundle(prefix, into={"a": [0.0] * 12})


def test_threads_option_gives_same_bytes(tmp_path):
    tensors = {f"t{i}": sample(np.float32, (300_000,), i) for i in range(6)}
    a = fastckpt.write_bundle(str(tmp_path / "one"), tensors, threads=1)
    b = fastckpt.write_bundle(str(tmp_path / "four"), tensors, threads=4)
    for ext in (".index", ".data-00000-of-00001"):
        assert open(a + ext, "rb").read() == open(b + ext, "rb").read()
    got = fastckpt.read_bundle(b, threads=3)
    for k, v in tensors.items():
        assert_bit_equal(got[k], v)
