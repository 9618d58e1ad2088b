"""One process of a multi-process test: ``python -m tests.helpers.dist_worker
ENGINE SCENARIO DIR [ARGS...]`` under ``mpiexec`` (ENGINE mpi) or started
by the test with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set (ENGINE gloo).
Prints one JSON line per process; exits non-zero on a failure."""

import json
import os
import signal
import sys

import ml_dtypes
import numpy as np

import fastckpt
from fastckpt import Shard

V, D = 12, 10  # the global shapes below are small multiples of 1..4 processes


def global_state(step=0):
    """The global tensors every scenario shards (deterministic)."""
    rng = np.random.default_rng(step)
    return {
        "emb": rng.standard_normal((V, D)).astype(np.float32),
        "proj": rng.standard_normal((D, V)).astype(ml_dtypes.bfloat16),
        "grid": np.arange(V * D, dtype=np.int64).reshape(V, D) + step,
        "bias": rng.standard_normal(D),
        "vocab": np.array([f"w{i}".encode() for i in range(5)], dtype=object),
    }


def split(n, parts, i):
    """Start and length of part ``i`` of ``n`` cut into ``parts``."""
    base, extra = divmod(n, parts)
    start = i * base + min(i, extra)
    return start, base + (1 if i < extra else 0)


def local_state(g, rank, size, mode="rows"):
    """This process's part: emb by rows, proj by columns, grid in 2-D (or all
    by rows with mode='rows-only'), bias and vocab replicated."""
    r0, rn = split(V, size, rank)
    c0, cn = split(V, size, rank)
    out = {"emb": Shard(g["emb"][r0:r0 + rn].copy(), (V, D), (r0, 0)),
           "bias": g["bias"].copy(), "vocab": g["vocab"].copy(), "step": 7, "tag": "run"}
    if mode == "rows-only":
        out["proj"] = Shard(g["proj"][split(D, size, rank)[0]:sum(split(D, size, rank))].copy(), (D, V),
                            (split(D, size, rank)[0], 0))
        out["grid"] = Shard(g["grid"][r0:r0 + rn].copy(), (V, D), (r0, 0))
    else:
        out["proj"] = Shard(g["proj"][:, c0:c0 + cn].copy(), (D, V), (0, c0))
        a = 2 if size % 2 == 0 else 1
        b = size // a
        i, j = divmod(rank, b)
        gr0, grn = split(V, a, i)
        gc0, gcn = split(D, b, j)
        out["grid"] = Shard(g["grid"][gr0:gr0 + grn, gc0:gc0 + gcn].copy(), (V, D), (gr0, gc0))
    return {"model": out}


def communicator(engine):
    if engine == "mpi":
        from mpi4py import MPI
        return MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    import datetime
    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(os.environ.get("FC_TIMEOUT", "60"))))
    return dist, dist.get_rank(), dist.get_world_size()


def check_restored(prefix, g, rank, size, mode, verify=True):
    """Restore onto this process's slicing (which may differ from the one
    saved) and compare with the global tensors."""
    want = local_state(g, rank, size, mode)
    into = {"model": {k: (Shard(np.zeros_like(v.local), v.global_shape, v.offset) if isinstance(v, Shard)
                          else np.zeros_like(v) if isinstance(v, np.ndarray) else v)
                      for k, v in want["model"].items()}}
    back = fastckpt.restore(prefix, into=into)
    for k, v in want["model"].items():
        got = back["model"][k]
        if isinstance(v, Shard):
            assert got is into["model"][k], k
            assert got.local.tobytes() == v.local.tobytes(), (k, rank)
        elif isinstance(v, np.ndarray):
            assert got.tolist() == v.tolist(), k
        else:
            assert got == v, k
    with fastckpt.load_checkpoint(prefix, verify=verify) as r:
        for k in ("emb", "proj", "grid"):
            s = r.get_slice(f"model/{k}")
            assert s[1:3].tobytes() == g[k][1:3].tobytes(), k
            assert r.read_region(f"model/{k}", (0, 1), (3, 2), verify=False).tobytes() == g[k][0:3, 1:3].tobytes()


def arm_kill(point, rank):
    """SIGKILL one process at ``point`` of the next save: rank 1 before it
    starts or after writing its data file, or rank 0 as it begins the commit
    (the merged index written, the state file not yet touched)."""
    import fastckpt.collective as collective
    import fastckpt.directory.commit as commit

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "before" and rank == 1:
        die()
    if point == "write" and rank == 1:
        real = collective.write_part

        def write_then_die(*a, **k):
            real(*a, **k)
            die()
        collective.write_part = write_then_die
    if point == "commit" and rank == 0:
        commit.commit_checkpoint = die
    if point == "gathered" and rank == 1:  # its index records are with rank 0: rank 0 commits
        collective._hear_outcome = die


def main():
    engine, scenario, directory = sys.argv[1:4]
    comm, rank, size = communicator(engine)
    prefix = os.path.join(directory, "ckpt")
    g = global_state()
    result = {"rank": rank, "size": size}
    if scenario == "save":  # save with the default slicing
        mode = sys.argv[4] if len(sys.argv) > 4 else "mixed"
        fastckpt.save(local_state(g, rank, size, mode), prefix, comm=comm)
        check_restored(prefix, g, rank, size, mode)
    elif scenario == "restore":  # restore onto this world size and another slicing
        mode = sys.argv[4]
        check_restored(prefix, g, rank, size, mode)
        fastckpt.restore(prefix, into=local_state(g, rank, size, mode), comm=comm)
    elif scenario in ("raise", "kill"):  # step 1 commits; step 2 fails on rank 1
        mgr = fastckpt.CheckpointManager(directory, comm=comm, timeout=float(os.environ.get("FC_TIMEOUT", "60")))
        mgr.save(local_state(g, rank, size), 1)
        g2 = global_state(2)
        state = local_state(g2, rank, size)
        if scenario == "kill":
            arm_kill(os.environ.get("FC_KILL", "before"), rank)
        elif rank == 1:
            state["model"]["bad"] = object()  # this process's state cannot be saved
        try:
            mgr.save(state, 2)
        except fastckpt.CheckpointError as e:
            result["error"] = f"{type(e).__name__}: {e}"
        else:
            result["error"] = None
    elif scenario == "disagree":  # step 1 commits; at step 2 rank 1 saves another structure
        mgr = fastckpt.CheckpointManager(directory, comm=comm, timeout=float(os.environ.get("FC_TIMEOUT", "60")))
        mgr.save(local_state(g, rank, size), 1)
        state = local_state(global_state(2), rank, size)
        how = os.environ["FC_DISAGREE"]
        extra = np.ones(3, np.float32)
        if how == "length":
            state["model"]["more"] = [extra] if rank != 1 else [extra, extra]
        elif how == "kind":
            state["model"]["more"] = {"x": extra} if rank != 1 else [extra]
        elif how == "value-tensor":
            state["model"]["more"] = 3 if rank != 1 else extra
        elif how == "key-type":
            state["model"]["more"] = {1: extra} if rank != 1 else {"1": extra}
        try:
            mgr.save(state, 2)
            result["error"] = None
        except fastckpt.CheckpointError as e:
            result["error"] = f"{type(e).__name__}: {e}"
    elif scenario == "late":  # rank 3 arrives 12 s late at a save with timeout=5; then all save again
        import time
        mgr = fastckpt.CheckpointManager(directory, comm=comm, timeout=5)
        if rank == size - 1:
            time.sleep(12)
        began = time.monotonic()
        try:
            mgr.save(local_state(g, rank, size), 1)
            result["error"] = None
        except fastckpt.CheckpointError as e:
            result["error"] = f"{type(e).__name__}: {e}"
        result["waited"] = time.monotonic() - began
        if rank != size - 1:
            time.sleep(10)  # until the late one has given up too
        mgr.save(local_state(global_state(2), rank, size), 2)  # works again
        result["second"] = os.path.basename(mgr.latest_checkpoint)
    elif scenario == "dtensor":  # FSDP2-style DTensor state dicts, saved and restored resharded
        import torch
        from torch.distributed.tensor import Replicate, Shard as DShard, distribute_tensor, init_device_mesh
        mesh = init_device_mesh("cpu", (size,))
        full = {k: torch.from_numpy(g[k].astype(np.float32)) for k in ("emb", "grid", "bias")}
        placements = {"emb": [DShard(0)], "grid": [DShard(1)], "bias": [Replicate()]}
        sd = {k: distribute_tensor(v, mesh, placements[k]) for k, v in full.items()}
        fastckpt.save({"model": sd}, prefix, comm=comm)
        other = {"emb": [DShard(1)], "grid": [DShard(0)], "bias": [Replicate()]}  # another sharding
        into = {k: distribute_tensor(torch.zeros_like(v), mesh, other[k]) for k, v in full.items()}
        back = fastckpt.restore(prefix, into={"model": into})
        for k, v in full.items():
            assert back["model"][k] is into[k]
            assert torch.equal(into[k].full_tensor(), v), k
        # fastckpt's offset of a 1-D Shard(dim) placement is PyTorch's, uneven and empty parts included
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        from fastckpt.bundle.frameworks import one_dim_shard_offset
        for rows in range(0, 11):
            for dim in (0, 1, -1):
                t = distribute_tensor(torch.zeros(rows, 3), mesh, [DShard(dim)])
                want = tuple(compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)[1])
                assert one_dim_shard_offset(t, t.to_local()) == want, (rows, dim)
    elif scenario == "async":
        mgr = fastckpt.CheckpointManager(directory, comm=comm, max_to_keep=2)
        for step in range(1, 4):
            state = local_state(global_state(step), rank, size)
            mgr.save(state, step, blocking=False)
            for part in state["model"].values():  # the caller may change its arrays at once
                if isinstance(part, Shard):
                    part.local[...] = 0
        mgr.wait()
        result["checkpoints"] = [os.path.basename(p) for p in mgr.checkpoints]
        check_restored(mgr.latest_checkpoint, global_state(3), rank, size, "mixed")
    print(json.dumps(result), flush=True)
    if scenario == "kill":
        os._exit(0)  # a peer is gone: skip the backends' shutdown, which would wait for it
    if engine == "gloo":  # a group left alive at exit can abort the interpreter (gloo's threads)
        comm.barrier()
        comm.destroy_process_group()


if __name__ == "__main__":
    main()
