"""What runs (untimed) before every timed case of a benchmark, so no case
pays for what an earlier case left behind: its garbage (a cyclic GC pass),
its dirty pages (``sync``: their write-back would otherwise land in the
next case's time), and its freed heap memory.

The heap: a case that frees many small allocations (TensorFlow's reader
returns 100,000 tensors of 1 KiB as separately allocated arrays) leaves them
in glibc malloc's "unsorted" list, and the next allocations that miss the
per-thread caches sort at most 10,000 of those chunks each: measured here,
the first ~15 such allocations after freeing TensorFlow's 100,000 tensors
took 1.5 ms each (``_int_malloc`` in a profile) — 25 ms that the *next*
case, whichever it is, paid inside its timing. :func:`settle_heap` makes
those allocations itself until one is fast again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from typing import Any, Optional

__all__ = ["settle", "settle_heap"]

_LIBC: Any = None  # None: not looked up yet; False: no glibc here
_PROBE = (1 << 20) + 17  # larger than any freed chunk of a small tensor: it never fits early, every sort step runs


def _libc() -> Optional[Any]:
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        lib: Any = False
        try:
            if name:
                lib = ctypes.CDLL(name)
                lib.malloc.restype = ctypes.c_void_p
                lib.malloc.argtypes = [ctypes.c_size_t]
                lib.free.restype = None
                lib.free.argtypes = [ctypes.c_void_p]
                lib.gnu_get_libc_version  # glibc only: other allocators have no such list  # noqa: B018
        except (OSError, AttributeError):
            lib = False
        _LIBC = lib
    return _LIBC or None


def settle_heap(fast_s: float = 50e-6, most: int = 2000) -> int:
    """Allocate and free one 1 MiB block until an allocation takes less
    than ``fast_s`` (at most ``most`` times); returns how many it took (0
    without glibc)."""
    lib = _libc()
    if lib is None:
        return 0
    for k in range(1, most + 1):
        t = time.perf_counter()
        p = lib.malloc(_PROBE)
        took = time.perf_counter() - t
        lib.free(p)
        if took < fast_s:
            return k
    return most


def settle(sync: bool = True) -> None:
    """Before a timed case: a full GC pass, the heap settled
    (:func:`settle_heap`) and, with ``sync``, dirty pages written back."""
    gc.collect()
    settle_heap()
    if sync:
        os.sync()
