"""The C parallel I/O engine: batching of neighbours, gaps, splitting of
large items, CRC per item, and errors that name the item."""

import os

import numpy as np
import pytest

import fastckpt
from fastckpt import _core


def _write(path, chunks, offsets, threads, piece=0):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        crcs = _core.io_run([fd] * len(chunks), offsets, chunks, write=True, threads=threads,
                            describe=lambda i: f"c{i}", piece=piece)
    finally:
        os.close(fd)
    return crcs


@pytest.mark.parametrize("threads", [1, 2, 7])
@pytest.mark.parametrize("piece", [4096, 1 << 20])
def test_mixed_sizes_with_gaps(tmp_path, threads, piece):
    rng = np.random.default_rng(threads)
    sizes = [0, 1, 100, 4095, 4096, 70_000, 3 << 20, 5, 0, 9999]
    chunks = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    offsets, pos = [], 0
    for n in sizes:
        offsets.append(pos)
        pos += n + (pos % 7) * 3  # irregular gaps
    crcs = _write(str(tmp_path / "f"), chunks, offsets, threads, piece)
    assert crcs == [_core.crc32c(c) for c in chunks]
    fd = os.open(str(tmp_path / "f"), os.O_RDONLY)
    try:
        outs = [np.zeros(n, np.uint8) for n in sizes]
        _core.io_run([fd] * len(outs), offsets, outs, crcs, write=False, threads=threads, piece=piece)
    finally:
        os.close(fd)
    for a, b in zip(outs, chunks):
        assert np.array_equal(a, b)


def test_read_checksum_failure_names_the_item(tmp_path):
    data = [np.arange(100, dtype=np.uint8), np.arange(50, dtype=np.uint8)]
    crcs = _write(str(tmp_path / "f"), data, [0, 100], 2)
    fd = os.open(str(tmp_path / "f"), os.O_RDONLY)
    try:
        with pytest.raises(fastckpt.DataLossError, match="second: checksum does not match"):
            _core.io_run([fd, fd], [0, 100], [np.zeros(100, np.uint8), np.zeros(50, np.uint8)],
                         [crcs[0], crcs[1] ^ 1], write=False, threads=2, describe=["first", "second"].__getitem__)
    finally:
        os.close(fd)


def test_short_file_is_data_loss(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    fd = os.open(str(tmp_path / "f"), os.O_RDONLY)
    try:
        with pytest.raises(fastckpt.DataLossError, match="t: data file is truncated"):
            _core.io_run([fd], [0], [bytearray(20)], [None], write=False, describe=lambda i: "t")
    finally:
        os.close(fd)


def test_bad_fd_is_oserror_with_errno(tmp_path):
    import errno
    with pytest.raises(fastckpt.CheckpointIOError) as e:
        _core.io_run([987654], [0], [b"abc"], write=True, describe=lambda i: "x")
    assert e.value.errno == errno.EBADF


def test_read_only_buffer_cannot_be_read_into(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    fd = os.open(str(tmp_path / "f"), os.O_RDONLY)
    try:
        with pytest.raises(BufferError):
            _core.io_run([fd], [0], [b"xyz"], [None], write=False)
    finally:
        os.close(fd)
