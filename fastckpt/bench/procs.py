"""``fastckpt bench --procs N``: one checkpoint written and read by N
processes (a torch.distributed gloo group on this machine), FSDP-style
(every tensor a PyTorch DTensor sharded by rows), side by side in one run
with the single-process raw write and read of the same bytes and with
``torch.distributed.checkpoint`` (``dcp.save`` / ``dcp.load``) on the same
processes and tensors; and the index merge for simulated jobs of up to
1,024 processes. Rounds are interleaved; medians are quoted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastckpt.saver import save
from fastckpt.restoring import restore_structure
from fastckpt.bench.run import figures, gpt_like_shapes, machine, table
from fastckpt import _core
from fastckpt.bundle.slices import encode_slice_key
from fastckpt.collective import merge_records

__all__ = ["run_procs_bench", "merge_scaling"]

CASES = ["raw write, 1 process", "raw write, N processes (each its part)", "fastckpt save", "dcp.save",
         "raw read, 1 process (into buffers)", "raw read, N processes (each its part)",
         "fastckpt restore (into the DTensors)", "dcp.load (into the DTensors)"]


def _worker(work: str, size: int, tensors: int, dtype: str, rounds: int) -> None:
    """One process of the group; rank 0 prints the timings as JSON."""
    import datetime

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh


    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, n = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (n,))
    torch.set_num_threads(1)
    dt, shapes = gpt_like_shapes(size, tensors, dtype)
    tdt = getattr(torch, dt.name)
    sd: Dict[str, Any] = {}
    for name, shape in shapes:
        chunk = -(-shape[0] // n)  # torch.chunk's split, as FSDP2 shards
        lo, hi = min(shape[0], rank * chunk), min(shape[0], (rank + 1) * chunk)
        local = torch.full((hi - lo,) + tuple(shape[1:]), float(rank + 1), dtype=tdt)
        stride = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
        sd[name] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape),
                                      stride=stride)
    total = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize for _, s in shapes)
    whole = np.full(total, 1, np.uint8) if rank == 0 else None
    mine = np.full(sum(v.to_local().numel() * dt.itemsize for v in sd.values()), 1, np.uint8)
    part = os.path.join(work, f"part-{rank}.bin")
    raw, ours, theirs = (os.path.join(work, x) for x in ("raw.bin", "fastckpt", "dcp"))

    def write(path: str, buf: Any) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def read(path: str, buf: Any) -> None:
        with open(path, "rb", buffering=0) as f:
            view = memoryview(buf)
            while view:
                view = view[f.readinto(view):]

    def raw_write() -> None:
        if rank == 0:
            write(raw, whole)

    def raw_read() -> None:
        if rank == 0:
            read(raw, whole)

    def remove_part() -> None:
        if os.path.exists(part):
            os.unlink(part)
        dist.barrier()

    def remove(path: str) -> Callable[[], None]:
        def go() -> None:
            if rank == 0:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.unlink(path)
            dist.barrier()
        return go

    ops = [(CASES[0], raw_write, remove(raw)),
           (CASES[1], lambda: write(part, mine), remove_part),
           (CASES[2], lambda: save({"model": sd}, os.path.join(ours, "ckpt"), comm=dist, durable=False),
            remove(ours)),
           (CASES[3], lambda: dcp.save({"model": sd}, checkpoint_id=theirs), remove(theirs)),
           (CASES[4], raw_read, None),
           (CASES[5], lambda: read(part, mine), None),
           (CASES[6], lambda: restore_structure(os.path.join(ours, "ckpt"), into={"model": sd}, comm=dist), None),
           (CASES[7], lambda: dcp.load({"model": sd}, checkpoint_id=theirs), None)]
    times: Dict[str, List[float]] = {c: [] for c in CASES}
    for r in range(rounds + 1):  # round 0 warms up (first touches, imports)
        for name, fn, before in ops:
            if before is not None:
                before()
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            dist.barrier()
            if r:
                times[name].append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"bytes": total, "tensors": len(shapes), "times": times}), flush=True)
    dist.destroy_process_group()


def merge_scaling(procs: List[int], per_process: int = 500) -> Dict[int, float]:
    """Seconds rank 0 spends merging the index records of ``p`` simulated
    processes x ``per_process`` row-sharded tensors (records generated, no
    process started; the merge is what rank 0 does in a real save)."""

    out: Dict[int, float] = {}
    for p in procs:
        rows = 4
        records = [[(encode_slice_key(f"layer{t:04d}/w".encode(), [(r * rows, rows), (0, -1)]),
                     _core.encode_entry(1, (rows, 1024), r, t * 16384, 16384, 12345)) for t in range(per_process)]
                   for r in range(p)]
        parts = {f"layer{t:04d}/w": (1, (p * rows, 1024), [((r * rows, rows), (0, -1)) for r in range(p)], 0)
                 for t in range(per_process)}
        t0 = time.perf_counter()
        merge_records(records, parts)
        out[p] = time.perf_counter() - t0
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_procs_bench(procs: int = 4, size: int = 1 << 30, tensors: int = 250, dtype: str = "float32",
                    rounds: int = 3, directory: str | None = None, out: Callable[[str], None] = print
                    ) -> Dict[str, Any]:
    """Start ``procs`` processes, time every case in each of ``rounds``
    interleaved rounds, print the table; returns the medians."""
    work = tempfile.mkdtemp(prefix="fastckpt-procs-", dir=directory)
    port = _port()
    try:
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(procs))
        cmd = [sys.executable, "-m", "fastckpt.bench.procs", work, str(size), str(tensors), dtype, str(rounds)]
        ps = [subprocess.Popen(cmd, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, text=True)
              for r in range(procs)]
        outs = [p.communicate()[0] for p in ps]
        if any(p.returncode for p in ps):
            raise RuntimeError(f"a benchmark process failed (exit codes {[p.returncode for p in ps]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = json.loads(outs[0].strip().splitlines()[-1])
    med = {c: statistics.median(t) for c, t in res["times"].items()}
    total = res["bytes"]
    out(f"fastckpt bench --procs {procs}: {total / 2**30:.2f} GiB global state in {res['tensors']} tensors, "
        f"each a DTensor sharded by rows over {procs} gloo processes; {rounds} interleaved rounds")
    out(f"machine: {machine()}")
    out("")
    rows: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    for c in CASES:
        saving = "save" in c or "write" in c
        if c in (CASES[0], CASES[4]):
            rows.append(("saves" if saving else "restores", None))
        times = res["times"]
        rows.append((c.replace("N processes", f"{procs} processes"),
                     figures(times[c], total, times[CASES[0] if saving else CASES[4]],
                             times[CASES[2] if saving else CASES[6]])))
    table(rows, out)
    out("")
    out("vs raw: the 1-process raw time of the same bytes / the case's time (minima). fastckpt ×: how many times "
        "faster fastckpt is than that row. Restores read from the page cache (files just written).")
    scaling = merge_scaling([128, 256, 512, 1024])
    out("index merge on rank 0, simulated jobs (500 row-sharded tensors per process):")
    out("| processes | records | merge s |")
    out("|-----------|---------|---------|")
    for p, t in scaling.items():
        out(f"| {p:9} | {p * 500:7} | {t:7.3f} |")
    return {"medians_s": med, "bytes": total, "merge_s": scaling}


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
