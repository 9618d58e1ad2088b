"""Property tests: random dtypes, shapes, names, layouts -> write -> read is
the identity; the string payload codec against its decoder."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import fastckpt
from fastckpt import _core
from tests.helpers.roundtrip import assert_bit_equal

DTYPES = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, np.int8,
          np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.complex64,
          np.complex128]

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: not s.startswith("\x00"))


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    arr = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape) if raw else np.zeros(shape, dtype)
    if dtype == np.bool_:
        arr = arr.view(np.uint8) % 2 == 1
    layout = draw(st.sampled_from(["c", "f", "big", "strided"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "big" and dtype.kind in "fiuc" and dtype.itemsize > 1 and dtype.name != "bfloat16":
        arr = arr.astype(dtype.newbyteorder(">"))
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=0)[::2]
    return arr


strings = st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=10)), max_size=6).map(
    lambda xs: np.array(xs + [b""], dtype=object)[:-1] if xs else np.array([], dtype=object))


@given(st.dictionaries(names, st.one_of(arrays(), strings), min_size=1, max_size=8),
       st.integers(1, 3), st.sampled_from([1, 8, 512]))
def test_write_read_identity(tmp_path_factory, tensors, num_shards, alignment):
    prefix = str(tmp_path_factory.mktemp("p") / "c")
    fastckpt.write_bundle(prefix, tensors, num_shards=num_shards, alignment=alignment)
    got = fastckpt.read_bundle(prefix)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert_bit_equal(got[k], v)


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_string_codec_roundtrip(items):
    payload, crc = _core.encode_strings(items)
    assert _core.decode_strings(payload, len(items), _core.mask_crc(crc)) == items


@given(st.lists(st.binary(max_size=30), min_size=1, max_size=8), st.data())
def test_string_codec_detects_any_flip(items, data):
    payload, crc = _core.encode_strings(items)
    if not payload:
        return
    i = data.draw(st.integers(0, len(payload) - 1))
    bad = bytearray(payload)
    bad[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(fastckpt.DataLossError):
        _core.decode_strings(bytes(bad), len(items), _core.mask_crc(crc))


def test_string_payload_bytes_from_spec():
    payload, crc = _core.encode_strings([b"hello", b"", b"x" * 200])
    assert payload[:7].hex(" ") == "05 00 c8 01 01 8c aa" and payload[7:9] == bytes.fromhex("2b68")
