"""Saves and restores to an object store, measured side by side in one
run against a local SeaweedFS (tests/helpers/s3server.py, 127.0.0.1 only):

1. ``fastckpt bench --url``'s table: fastckpt's save and restore of a
   1 GiB GPT-like state against the raw limit (the same bytes as one
   parallel multipart upload / parallel ranged GETs, same client and part
   size), ``torch.save`` plus one upload, and torch DCP through s3fs;
2. four MPI processes saving one checkpoint of the same 1 GiB to the
   bucket, against the raw put of those bytes, in interleaved rounds.

    python3 benchmarks/s3_save_restore.py [SIZE_MiB] [ROUNDS]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastckpt  # noqa: E402
from fastckpt.bench.s3 import run_s3_bench  # noqa: E402
from fastckpt.storage.s3 import default_s3  # noqa: E402
from tests.helpers.s3server import running_server  # noqa: E402

WORKER = r"""
import sys, time
import numpy as np
import fastckpt
from mpi4py import MPI
comm = MPI.COMM_WORLD
url, size = sys.argv[1], int(sys.argv[2])
rows = size // 4096 // comm.size
part = np.random.default_rng(comm.rank).standard_normal((rows, 1024)).astype(np.float32)
state = {"emb": fastckpt.Shard(part, (rows * comm.size, 1024), (rows * comm.rank, 0))}
comm.Barrier()
t = time.perf_counter()
fastckpt.save(state, url, comm=comm)
comm.Barrier()
if comm.rank == 0:
    print("TIME", time.perf_counter() - t, flush=True)
"""


def mpi_save(url: str, size: int, env: dict) -> float:
    mpiexec = shutil.which("mpiexec")
    r = subprocess.run([mpiexec, "-n", "4", "--oversubscribe", sys.executable, "-c", WORKER, url, str(size)],
                       capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return float(r.stdout.split("TIME")[-1])


def main() -> None:
    size = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 1 << 30
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as d, running_server(d) as server:
        env = dict(os.environ, **server.env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        os.environ.update(server.env)
        fastckpt.configure_s3()
        base = f"s3://{server.bucket}/bench"
        run_s3_bench(base, size=size, rounds=rounds)
        if shutil.which("mpiexec") is None:
            print("note: no mpiexec: the 4-process save is not measured")
            return
        flat = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
        storage = default_s3()
        part = storage.part_bytes
        raw, four = [], []
        for r in range(rounds):
            for case in (("raw", "mpi") if r % 2 == 0 else ("mpi", "raw")):
                if case == "raw":
                    t = time.perf_counter()
                    storage.put_stream(f"{base}/raw", (flat[i:i + part] for i in range(0, size, part)), size)
                    raw.append(time.perf_counter() - t)
                else:
                    four.append(mpi_save(f"{base}/mpi-{r}/ckpt", size, env))
        print()
        print(f"4 MPI processes, one checkpoint of {size / 2**30:.2f} GiB, {rounds} interleaved rounds")
        print("| case | min s | median s | GB/s (median) | vs raw |")
        print("|---|---|---|---|---|")
        for name, ts in (("raw put (one process, one upload)", raw), ("fastckpt save, 4 MPI processes", four)):
            print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | "
                  f"{size / statistics.median(ts) / 1e9:.2f} | {statistics.median(raw) / statistics.median(ts):.2f} |")


if __name__ == "__main__":
    main()
