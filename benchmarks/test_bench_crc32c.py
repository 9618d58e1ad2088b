"""CRC32C throughput: hardware (3 interleaved streams) vs the portable
table, from cache (256 KiB) and from memory (256 MiB)."""

import os

import pytest

from fastckpt import _core

CACHE = os.urandom(256 << 10)


@pytest.mark.parametrize("impl", ["hardware", "portable"])
def test_crc32c_from_cache(benchmark, impl):
    benchmark.group = "crc32c 256 KiB (from cache)"
    fn = _core.crc32c if impl == "hardware" else _core.crc32c_portable
    benchmark(fn, CACHE)
    gbps = len(CACHE) / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GB/s"] = round(gbps, 2)
    if impl == "hardware" and _core.hw_crc_available():
        assert gbps >= 8, f"target: >= 8 GB/s on one core from cache, got {gbps:.1f}"


@pytest.mark.parametrize("threads", [1, 2])
def test_crc32c_from_memory(benchmark, threads):
    big = os.urandom(256 << 20)
    benchmark.group = "crc32c 256 MiB (from memory)"
    benchmark(_core.crc32c_parallel, big, threads)
    benchmark.extra_info["GB/s"] = round(len(big) / benchmark.stats.stats.median / 1e9, 2)
