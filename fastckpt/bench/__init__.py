"""``fastckpt bench``: the benchmark, loaded by that command only
(:mod:`fastckpt.bench.run`; ``--loop``, ``--procs`` and ``--compression``
in :mod:`~fastckpt.bench.loop`, :mod:`~fastckpt.bench.procs` and
:mod:`~fastckpt.bench.zstd`)."""

from fastckpt.bench.run import gpt_like_state, parse_size, run_async_bench, run_bench, uniform_state

__all__ = ["gpt_like_state", "parse_size", "run_async_bench", "run_bench", "uniform_state"]
