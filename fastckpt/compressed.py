"""Reading compressed payloads (fastckpt's zstd extension; the format is in
``csrc/zframe.c``): a frame is restored window by window -- its header and
chunk table first, then at most ``WINDOW`` stored bytes at a time into one
scratch buffer per thread, reused from read to read, each window's chunks
restored on the C threads straight into the caller's array -- so a restore
touches no fresh memory but its output, whatever the tensor's size."""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from . import _core
from .errors import DataLossError
from .files import read_range

__all__ = ["restore_frame", "WINDOW"]

WINDOW = 32 << 20  # stored bytes read at once
_local = threading.local()


def _scratch(n: int) -> np.ndarray:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        buf = _local.buf = np.empty(max(n, WINDOW), np.uint8)
    return buf[:n]


def restore_frame(fd: int, offset: int, size: int, out: np.ndarray, itemsize: int, threads: int,
                  expected: Optional[int], what: str) -> int:
    """Restore the frame of ``size`` bytes at ``offset`` into ``out`` (the
    raw bytes, a C-contiguous uint8 view), checking the CRC32C of what was
    restored against ``expected`` (unmasked; None: unchecked); returns it."""
    raw_len = out.nbytes
    start = read_range(fd, offset, min(size, _core.ZFRAME_HEADER), what)
    n = int.from_bytes(bytes(start[20:24]), "little") if len(start) >= 24 else 0
    if n * 4 > size:
        raise DataLossError(f"{what}: compressed payload is shorter than its chunk table")
    head = bytes(read_range(fd, offset, min(size, _core.ZFRAME_HEADER + 4 * n), what))
    chunk_raw, words, first = _core.zframe_table(head, size, raw_len, itemsize, what)
    table = head[_core.ZFRAME_HEADER:]
    spans = [w & 0x7FFFFFFF for w in words]
    crc: Optional[int] = None
    c, at = 0, offset + first
    while c < n:
        j, stored = c, 0
        while j < n and (j == c or stored + spans[j] <= WINDOW):
            stored += spans[j]
            j += 1
        buf = _scratch(stored)
        _core.io_run([fd], [at], [buf], None, write=False, threads=1, describe=lambda i: what)
        lo, hi = c * chunk_raw, min(j * chunk_raw, raw_len)
        part = _core.zdecompress_chunks(buf, table[4 * c:4 * j], chunk_raw, out[lo:hi], itemsize, threads, what)
        crc = part if crc is None else _core.crc32c_combine(crc, part, hi - lo)
        c, at = j, at + stored
    crc = 0 if crc is None else crc
    if expected is not None and crc != expected:
        raise DataLossError(f"{what}: checksum does not match: stored {_core.mask_crc(expected)} vs. "
                            f"calculated {_core.mask_crc(crc)}")
    return crc
