"""Arrays as C-order little-endian pieces of bounded size: how a source
that must be converted (non-contiguous, big-endian) reaches a file or an
upload without a whole converted copy."""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["STAGING_BYTES", "c_order_chunks"]

STAGING_BYTES = 64 << 20


def c_order_chunks(arr: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    """C-contiguous little-endian pieces of ``arr`` of at most ``max_bytes``
    (or one row's worth) whose bytes, in order, are ``arr`` in C order."""
    le = arr.dtype.newbyteorder("<")
    if arr.nbytes <= max_bytes or arr.ndim == 0:
        yield np.ascontiguousarray(arr, dtype=le)
        return
    row = arr.nbytes // arr.shape[0]
    if row <= max_bytes:
        step = max(1, max_bytes // max(row, 1))
        for i in range(0, arr.shape[0], step):
            yield np.ascontiguousarray(arr[i:i + step], dtype=le)
    else:
        for i in range(arr.shape[0]):
            yield from c_order_chunks(arr[i], max_bytes)
