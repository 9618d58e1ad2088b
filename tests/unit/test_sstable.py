"""The .index SSTable: spec bytes, block cutting, property round trips and
rejection of damaged tables."""

import pytest
from hypothesis import given, strategies as st

import fastckpt
from fastckpt import _core

MAGIC_TAIL = bytes.fromhex("57fb808b247547db")


def test_header_only_table():
    t = _core.build_table([(b"", bytes.fromhex("08011a020801"))])
    assert t.endswith(MAGIC_TAIL)
    # empty metaindex block and its trailer, as in the spec
    assert bytes.fromhex("0000000001000000" "00c0f2a1b0") in t
    assert _core.iterate_table(t) == [(b"", bytes.fromhex("08011a020801"))]


def test_short_successor_index_key():
    # last key "u64" -> index key "v" (spec §2.7)
    t = _core.build_table([(b"", b"h"), (b"u64", bytes(200))])
    # index block entry: shared 0, unshared 1, value 3 bytes, key "v", handle (0, size)
    assert b"\x00\x01\x03v\x00" in t


def test_big_entries_flush_early_and_blocks_split():
    items = [(b"", b"h")] + [(b"k%05d" % i, bytes(1000)) for i in range(600)] + [(b"zz", bytes(600_000))]
    t = _core.build_table(items)
    assert _core.iterate_table(t) == items


@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=3000)), max_size=300,
                unique_by=lambda kv: kv[0]))
def test_roundtrip(items):
    items.sort()
    assert _core.iterate_table(_core.build_table(items)) == items


def test_builder_rejects_unsorted_keys():
    with pytest.raises(fastckpt.InvalidArgumentError):
        _core.build_table([(b"b", b""), (b"a", b"")])
    with pytest.raises(fastckpt.InvalidArgumentError):
        _core.build_table([(b"a", b""), (b"a", b"")])


@pytest.mark.parametrize("n", [0, 1, 47])
def test_too_short(n):
    with pytest.raises(fastckpt.DataLossError, match="too short"):
        _core.iterate_table(bytes(n))


def test_bad_magic():
    t = bytearray(_core.build_table([(b"", b"h")]))
    t[-1] ^= 1
    with pytest.raises(fastckpt.DataLossError, match="magic"):
        _core.iterate_table(bytes(t))


def test_every_byte_flip_is_detected_or_harmless():
    items = [(b"", b"hdr")] + [(b"key%03d" % i, b"v" * i) for i in range(40)]
    t = _core.build_table(items)
    for i in range(len(t)):
        for bit in (0x01, 0x80):
            bad = bytearray(t)
            bad[i] ^= bit
            try:
                got = _core.iterate_table(bytes(bad))
            except fastckpt.CheckpointError:
                continue
            assert got == items, f"flip at {i} changed the entries silently"


@given(st.binary(min_size=48, max_size=400))
def test_garbage_never_crashes(data):
    data = data[:-8] + MAGIC_TAIL
    try:
        _core.iterate_table(data)
    except fastckpt.CheckpointError:
        pass
