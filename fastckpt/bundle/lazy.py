"""``LazyTensor``: a tensor known by dtype and shape whose values are read
only when they are written, so a conversion holds one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np

from fastckpt import _core
from fastckpt.errors import DataLossError

__all__ = ["LazyTensor", "guarded_copy"]


def guarded_copy(arr: np.ndarray, what: str = "") -> np.ndarray:
    """A C-ordered copy of the contiguous array ``arr``, made by the C core
    so that a page of ``arr`` that vanished (it maps a file that was
    truncated meanwhile) is :class:`DataLossError`, never SIGBUS."""
    out = np.empty(arr.shape, arr.dtype)
    if out.nbytes:
        _core.guarded_copy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8), what)
    return out


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

    def copied(self) -> np.ndarray:
        """The values in memory of their own: a mapped array is copied out
        of its file by :func:`guarded_copy`. What code that computes on
        the values (casts, comparisons, other libraries' writers) reads, so
        that a source file truncated meanwhile is :class:`DataLossError`."""
        arr = self.array()
        return guarded_copy(arr, self.what) if self.mapped and arr.flags.c_contiguous else arr

    def array(self) -> np.ndarray:
        """The values, checked to have the promised dtype and shape; a
        view of a mapped file where ``mapped`` (for the C core, whose reads
        of it are guarded; others use :meth:`copied`)."""
        arr = self.load()
        if tuple(arr.shape) != tuple(self.shape) or (self.dtype.kind not in "OSU" and arr.dtype != self.dtype):
            raise DataLossError(f"{self.what or 'tensor'}: read {arr.dtype}{list(arr.shape)}, "
                                f"its header says {self.dtype}{list(self.shape)}")
        return arr
