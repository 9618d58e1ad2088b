"""Bundles fastckpt does not write itself but must read or reject clearly:
big-endian bundles, DT_VARIANT tensors, newer format versions, entries
without checksums."""


import numpy as np
import pytest

import fastckpt
from fastckpt import _core


def write_raw(prefix, payloads, entries, endianness=0, header=None):
    """A bundle from raw payload bytes and (key, dtype, shape, crc) entries."""
    data, offsets = b"", []
    for p in payloads:
        offsets.append(len(data))
        data += p
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(data)
    order = sorted(range(len(entries)), key=lambda i: entries[i][0])
    if header is None:
        table = _core.build_index(1, [entries[i][0] for i in order], [entries[i][1] for i in order],
                                  [entries[i][2] for i in order], [0] * len(order),
                                  [offsets[i] for i in order], [len(payloads[i]) for i in order],
                                  [entries[i][3] for i in order], endianness)
    else:
        items = [(b"", header)] + [(entries[i][0], _core.encode_entry(entries[i][1], entries[i][2], 0, offsets[i],
                                                                       len(payloads[i]), entries[i][3]))
                                   for i in order]
        table = _core.build_table(items)
    with open(prefix + ".index", "wb") as f:
        f.write(table)
    return prefix


def test_big_endian_bundle_is_swapped(tmp_path):
    x = np.arange(6, dtype=np.float32) - 2.5
    c = np.array([1 + 2j], np.complex64)
    px, pc = x.astype(">f4").tobytes(), c.astype(">c8").tobytes()
    prefix = write_raw(str(tmp_path / "be"), [px, pc],
                       [(b"x", 1, (6,), _core.mask_crc(_core.crc32c(px))),
                        (b"c", 8, (1,), _core.mask_crc(_core.crc32c(pc)))], endianness=1)
    got = fastckpt.read_bundle(prefix)
    assert np.array_equal(got["x"], x) and got["x"].dtype == np.float32
    assert np.array_equal(got["c"], c)


def test_variant_tensor_is_unsupported_not_a_crash(tmp_path):
    prefix = write_raw(str(tmp_path / "v"), [b"\x00" * 8], [(b"it", 21, (), _core.mask_crc(_core.crc32c(b"\x00" * 8)))])
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.get_variable_to_shape_map() == {"it": []}
        with pytest.raises(fastckpt.UnsupportedError, match="VARIANT"):
            r["it"]


def test_newer_min_consumer_is_refused(tmp_path):
    header = _core.encode_header(1, 0, 2, 2)
    prefix = write_raw(str(tmp_path / "n"), [b"\x00" * 4], [(b"x", 1, (1,), 0)], header=header)
    with pytest.raises(fastckpt.InvalidArgumentError, match="min consumer version 2"):
        fastckpt.read_bundle(prefix)


def test_bad_consumer_is_refused(tmp_path):
    header = _core.encode_header(1, 0, 1, 0, bad_consumer_1=True)
    prefix = write_raw(str(tmp_path / "n"), [b"\x00" * 4], [(b"x", 1, (1,), 0)], header=header)
    with pytest.raises(fastckpt.InvalidArgumentError, match="disallows"):
        fastckpt.read_bundle(prefix)


def test_negative_producer_is_refused(tmp_path):
    header = _core.encode_header(1, 0, -1, 0)
    prefix = write_raw(str(tmp_path / "n"), [b"\x00" * 4], [(b"x", 1, (1,), 0)], header=header)
    with pytest.raises(fastckpt.InvalidArgumentError, match="producer version -1"):
        fastckpt.read_bundle(prefix)


def test_missing_header_entry_is_data_loss(tmp_path):
    prefix = str(tmp_path / "h")
    with open(prefix + ".index", "wb") as f:
        f.write(_core.build_table([(b"x", _core.encode_entry(1, (1,), 0, 0, 4, 0))]))
    with pytest.raises(fastckpt.DataLossError, match="header"):
        fastckpt.read_bundle(prefix)


def test_entry_without_checksum(tmp_path):
    prefix = write_raw(str(tmp_path / "n"), [b"\x00" * 4], [(b"x", 1, (1,), None)])
    with pytest.raises(fastckpt.DataLossError, match="no checksum"):
        fastckpt.read_bundle(prefix)
    assert fastckpt.read_bundle(prefix, verify=False)["x"].tolist() == [0.0]


def write_one_entry(prefix, entry, data=None):
    """A bundle whose index holds the header and one hand-made entry "x"."""
    if data is not None:
        open(prefix + ".data-00000-of-00001", "wb").write(data)
    with open(prefix + ".index", "wb") as f:
        f.write(_core.build_table([(b"", _core.encode_header()), (b"x", entry)]))
    return prefix


def test_wrong_size_for_shape_is_data_loss(tmp_path):
    prefix = write_one_entry(str(tmp_path / "s"), _core.encode_entry(1, (4,), 0, 0, 12, 0), b"\x00" * 12)
    with pytest.raises(fastckpt.DataLossError, match="stored size 12; expected size 16"):
        fastckpt.load_checkpoint(prefix)


def test_shard_id_out_of_range_is_data_loss(tmp_path):
    prefix = write_one_entry(str(tmp_path / "s"), _core.encode_entry(1, (1,), 3, 0, 4, 0))
    with pytest.raises(fastckpt.DataLossError, match="shard id 3"):
        fastckpt.load_checkpoint(prefix)


def test_huge_claimed_size_fails_before_allocating(tmp_path):
    n = 2**40  # 4 TiB of float32
    prefix = write_one_entry(str(tmp_path / "s"), _core.encode_entry(1, (n,), 0, 0, 4 * n, 0), b"\x00" * 16)
    with pytest.raises(fastckpt.DataLossError, match="truncated"):
        fastckpt.read_bundle(prefix)
    with fastckpt.load_checkpoint(prefix) as r:
        assert r.get_variable_to_shape_map() == {"x": [n]}  # listing is fine, reading is refused
        with pytest.raises(fastckpt.DataLossError, match="truncated"):
            r["x"]
