"""Varints and the bundle's protobuf messages: spec bytes and encoder/decoder
property tests."""

import pytest
from hypothesis import given, strategies as st

import fastckpt
from fastckpt import _core

u64 = st.integers(0, 2**64 - 1)
i63 = st.integers(0, 2**63 - 1)


@given(u64)
def test_varint_roundtrip(v):
    enc = _core.encode_varint(v)
    assert _core.decode_varint(enc) == (v, len(enc))
    assert len(enc) == max(1, (v.bit_length() + 6) // 7)


@pytest.mark.parametrize("bad", [b"", b"\x80", b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02"])
def test_varint_rejects_truncated_and_overlong(bad):
    with pytest.raises(fastckpt.DataLossError):
        _core.decode_varint(bad)


def test_header_bytes_tf_writes():
    assert _core.encode_header() == bytes.fromhex("08011a020801")
    h = _core.decode_header(bytes.fromhex("08011a020801"))
    assert (h["num_shards"], h["endianness"], h["producer"], h["min_consumer"]) == (1, 0, 1, 0)


@given(st.integers(0, 2**31 - 1), st.integers(0, 1), st.integers(0, 2**31 - 1),
       st.integers(0, 2**31 - 1), st.booleans())
def test_header_roundtrip(n, e, prod, minc, bad):
    h = _core.decode_header(_core.encode_header(n, e, prod, minc, bad))
    assert (h["num_shards"], h["endianness"], h["producer"], h["min_consumer"], h["bad_consumer_1"]) == (
        n, e, prod, minc, bad)


def test_entry_bytes_from_spec():
    crc = 0xABF5EB7A
    assert _core.encode_entry(1, (2, 3), 0, 0, 24, crc) == bytes.fromhex("0801120812020802120208032818357aebf5ab")
    # empty [0,3] float at offset 286: no size field, crc = mask(0)
    assert _core.encode_entry(1, (0, 3), 0, 286, 0, 0xA282EAD8) == bytes.fromhex(
        "08011206120012020803209e0235d8ea82a2")
    # a scalar has an empty shape message
    assert _core.encode_entry(2, (), 0, 0, 8, 1)[:4] == bytes.fromhex("08021200")


shapes = st.lists(st.integers(0, 2**40), max_size=6).map(tuple)


@given(st.integers(0, 33), shapes, st.integers(0, 2**31 - 1), i63, i63,
       st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_entry_roundtrip(dtype, shape, shard, offset, size, crc):
    enc = _core.encode_entry(dtype, shape, shard, offset, size, crc)
    assert _core.decode_entry(enc) == (dtype, shape, shard, offset, size, crc, None)


@st.composite
def sliced(draw):
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, 1000)) for _ in range(rank))
    slices = draw(st.lists(st.tuples(*[st.one_of(st.just((0, -1)), st.tuples(st.integers(0, 500),
                                                                            st.integers(0, 500)))
                                        for _ in range(rank)]), min_size=1, max_size=4))
    return shape, slices


@given(sliced())
def test_entry_with_slices_roundtrip(args):
    shape, slices = args
    enc = _core.encode_entry(1, shape, slices=slices)
    dec = _core.decode_entry(enc)
    assert dec[1] == shape and dec[5] is None
    assert [list(s) for s in dec[6]] == [list(s) for s in slices]


def test_full_extent_is_empty_message():
    # one slice, full dim: 3a 02 0a 00
    assert _core.encode_entry(1, (4,), slices=[((0, -1),)]).endswith(bytes.fromhex("3a020a00"))
    # length 0 is emitted (oneof), start 0 is not
    assert _core.encode_entry(1, (4,), slices=[((0, 0),)]).endswith(bytes.fromhex("3a040a021000"))


def test_decoder_skips_unknown_fields():
    known = _core.encode_entry(1, (2,), 0, 0, 8, 5)
    extra = bytes.fromhex("c80601") + bytes.fromhex("d2060161")  # field 105 varint, 106 bytes
    assert _core.decode_entry(known + extra)[:3] == (1, (2,), 0)


@given(st.binary(max_size=64))
def test_decoder_never_crashes_on_garbage(data):
    try:
        _core.decode_entry(data)
    except fastckpt.CheckpointError:
        pass
