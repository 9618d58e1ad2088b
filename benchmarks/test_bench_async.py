"""Async save: the caller is blocked about as long as a plain memory copy of
the state (target <= 1.5x), and training steps run while the write proceeds.
`fastckpt bench --async` prints the same figures for the README."""

import os

from fastckpt.bench.run import parse_size, run_async_bench


def test_async_save_blocks_like_a_memory_copy(benchmark, tmp_path):
    size = parse_size(os.environ.get("FASTCKPT_BENCH_SIZE", "256MiB"))
    result = benchmark.pedantic(lambda: run_async_bench(size=size, rounds=5, directory=str(tmp_path),
                                                        out=lambda line: None), rounds=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in result.items()})
    assert result["blocked_vs_copy"] <= 1.5, result
    assert result["training_overlap"] > 0.2, result
