"""Many processes, one checkpoint: 4 gloo processes save and restore an
FSDP-style DTensor state beside dcp.save/dcp.load and the raw limits (in one
run, interleaved), and the index merge for simulated jobs of up to 1,024
processes. `fastckpt bench --procs 4` prints the same table for the README."""

import os

import pytest

from fastckpt.bench.run import parse_size
from fastckpt.bench.procs import merge_scaling, run_procs_bench


def test_four_processes_against_dcp_and_raw(benchmark, tmp_path):
    pytest.importorskip("torch.distributed.checkpoint")
    size = parse_size(os.environ.get("FASTCKPT_BENCH_SIZE", "256MiB"))
    result = benchmark.pedantic(lambda: run_procs_bench(4, size, 250, rounds=3, directory=str(tmp_path),
                                                        out=lambda line: None), rounds=1)
    med = result["medians_s"]
    benchmark.extra_info.update({k: round(v, 4) for k, v in med.items()})
    assert med["fastckpt save"] < med["dcp.save"], med
    assert med["fastckpt restore (into the DTensors)"] < med["dcp.load (into the DTensors)"], med


def test_index_merge_of_1024_processes_by_500_tensors(benchmark):
    seconds = benchmark.pedantic(lambda: merge_scaling([1024]), rounds=1)[1024]
    assert seconds <= 1.0, seconds
