"""Reading compressed payloads (fastckpt's zstd extension; the format is in
``csrc/zframe.c``): a frame is restored window by window -- its header and
chunk table first, then at most ``WINDOW`` stored bytes at a time into one
scratch buffer per thread, reused from read to read, each window's chunks
restored on the C threads straight into the caller's array -- so a restore
touches no fresh memory but its output, whatever the tensor's size."""

from __future__ import annotations

import threading
from typing import Iterator, Optional, Tuple

import numpy as np

from fastckpt import _core
from fastckpt.errors import DataLossError
from fastckpt.bundle.files import Handle, pread_into, read_range

__all__ = ["restore_frame", "verify_frame", "check_claim", "WINDOW"]

WINDOW = 32 << 20  # stored bytes read at once
MAX_RATIO = 32768  # zstd stores a block of at most 128 KiB in at least 4 bytes


def check_claim(size: int, raw_len: int, what: str) -> None:
    """:class:`DataLossError` unless a frame of ``size`` stored bytes can
    hold ``raw_len`` raw bytes: checked before the tensor is allocated, so
    a tiny entry claiming a huge shape costs nothing."""
    if raw_len > max(0, size - _core.ZFRAME_HEADER) * MAX_RATIO:
        raise DataLossError(f"{what}: a compressed payload of {size} bytes cannot hold the {raw_len} bytes "
                            "its shape claims")
_local = threading.local()


def _scratch(n: int, name: str = "buf") -> np.ndarray:
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < n:
        buf = np.empty(max(n, WINDOW), np.uint8)
        setattr(_local, name, buf)
    return buf[:n]


Window = Tuple[np.ndarray, bytes, int, int, int]


def _windows(fd: Handle, offset: int, size: int, raw_len: int, itemsize: int, what: str,
             raw_window: Optional[int] = None) -> Iterator[Window]:
    """The frame's chunks, read a window at a time into the reused scratch:
    (stored bytes, their length words, chunk size, raw start, raw end). A
    window holds at most :data:`WINDOW` stored bytes (and ``raw_window``
    raw ones); the scratch is reused for the next window."""
    check_claim(size, raw_len, what)
    start = read_range(fd, offset, min(size, _core.ZFRAME_HEADER), what)
    n = int.from_bytes(bytes(start[20:24]), "little") if len(start) >= 24 else 0
    if n * 4 > size:
        raise DataLossError(f"{what}: compressed payload is shorter than its chunk table")
    head = bytes(read_range(fd, offset, min(size, _core.ZFRAME_HEADER + 4 * n), what))
    chunk_raw, words, first = _core.zframe_table(head, size, raw_len, itemsize, what)
    table = head[_core.ZFRAME_HEADER:]
    spans = [w & 0x7FFFFFFF for w in words]
    c, at = 0, offset + first
    while c < n:
        j, stored = c, 0
        while j < n and (j == c or (stored + spans[j] <= WINDOW
                                    and (raw_window is None or (j + 1 - c) * chunk_raw <= raw_window))):
            stored += spans[j]
            j += 1
        buf = _scratch(stored)
        if pread_into(fd, buf.data, at) != len(buf):
            raise DataLossError(f"{what}: the file ends before the compressed frame's end (truncated?)")
        yield buf, table[4 * c:4 * j], chunk_raw, c * chunk_raw, min(j * chunk_raw, raw_len)
        c, at = j, at + stored


def _checked(crc: Optional[int], expected: Optional[int], what: str) -> int:
    crc = 0 if crc is None else crc
    if expected is not None and crc != expected:
        raise DataLossError(f"{what}: checksum does not match: stored {_core.mask_crc(expected)} vs. "
                            f"calculated {_core.mask_crc(crc)}")
    return crc


def restore_frame(fd: Handle, offset: int, size: int, out: np.ndarray, itemsize: int, threads: int,
                  expected: Optional[int], what: str) -> int:
    """Restore the frame of ``size`` bytes at ``offset`` into ``out`` (the
    raw bytes, a C-contiguous uint8 view), checking the CRC32C of what was
    restored against ``expected`` (unmasked; None: unchecked); returns it."""
    crc: Optional[int] = None
    for buf, words, chunk_raw, lo, hi in _windows(fd, offset, size, out.nbytes, itemsize, what):
        part = _core.zdecompress_chunks(buf, words, chunk_raw, out[lo:hi], itemsize, threads, what)
        crc = part if crc is None else _core.crc32c_combine(crc, part, hi - lo)
    return _checked(crc, expected, what)


def verify_frame(fd: Handle, offset: int, size: int, count: int, itemsize: int, threads: int,
                 expected: Optional[int], what: str) -> int:
    """Check the frame of ``count`` elements of ``itemsize`` bytes as
    :func:`restore_frame` does, into a reused raw scratch of at most
    :data:`WINDOW` bytes: memory stays constant, whatever the tensor's size."""
    crc: Optional[int] = None
    raw_len = count * itemsize
    if not raw_len:  # an empty tensor is stored as nothing
        return _checked(crc, expected, what)
    for buf, words, chunk_raw, lo, hi in _windows(fd, offset, size, raw_len, itemsize, what, raw_window=WINDOW):
        part = _core.zdecompress_chunks(buf, words, chunk_raw, _scratch(hi - lo, "raw"), itemsize, threads, what)
        crc = part if crc is None else _core.crc32c_combine(crc, part, hi - lo)
    return _checked(crc, expected, what)
