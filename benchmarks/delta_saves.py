"""Delta saves against full saves, side by side in one run (issue 22): a
LoRA-like 1 GiB state (5 % of the bytes change per step), 8 saves per loop
into a directory with max_to_keep=3 -- full saves, delta saves by content,
delta saves told what is frozen -- and the worst case where every tensor
changes; min and median over interleaved rounds, bytes passed to write
system calls per save, and a tied model's size beside torch.save's.

    python benchmarks/delta_saves.py [size_mib] [rounds] [saves]

The same as ``fastckpt bench --delta``; docs/performance.md quotes it."""
import sys

from fastckpt.bench.delta import run_delta_bench

size = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 1 << 30
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
saves = int(sys.argv[3]) if len(sys.argv) > 3 else 8
run_delta_bench(size=size, rounds=rounds, saves=saves)
