"""``LazyTensor``: a tensor known by dtype and shape whose values are read
only when they are written, so a conversion holds one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np

from .errors import DataLossError

__all__ = ["LazyTensor"]


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of ``dtype`` and ``shape`` whose array ``load()`` returns on
    demand. ``mapped`` says the array is a view of a memory-mapped file (it
    costs page cache, which the kernel reclaims, not memory of the
    process); otherwise it is decoded into fresh memory. ``stored`` is a
    string tensor's size where it is stored (its ``nbytes``)."""

    dtype: np.dtype
    shape: Tuple[int, ...]
    load: Callable[[], np.ndarray]
    mapped: bool = False
    what: str = ""
    stored: int = 0

    @property
    def nbytes(self) -> int:
        """The size of the array in bytes (for strings, their stored size)."""
        if self.dtype.kind in "OSU":
            return self.stored
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def array(self) -> np.ndarray:
        """The values, checked to have the promised dtype and shape."""
        arr = self.load()
        if tuple(arr.shape) != tuple(self.shape) or (self.dtype.kind not in "OSU" and arr.dtype != self.dtype):
            raise DataLossError(f"{self.what or 'tensor'}: read {arr.dtype}{list(arr.shape)}, "
                                f"its header says {self.dtype}{list(self.shape)}")
        return arr
