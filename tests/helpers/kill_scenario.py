"""Child process of the systematic kill test (run as
``python -m tests.helpers.kill_scenario`` from the repository root, under
the LD_PRELOAD kill shim). In a directory that already holds steps 1 and 2 it
runs the attacked sequence -- a new step with a retention delete, a
re-saved step, a background save, a re-save through the manager -- and
logs each save to ``log`` (not counted) after it returned. With
``recycle``, the two saves that retire a checkpoint rewrite its files; with
``zstd``, every save is compressed (the C core's pwrite calls); with
``delta``, every save is a delta save (the constant ``frozen`` tensor is
shared through hard links from checkpoint to checkpoint, while retention
deletes the checkpoints that first wrote it)."""

import ctypes
import os
import sys

import numpy as np

import fastckpt
from tests.helpers.crash_child import state_for

RESAVED = 1000  # the re-saved contents of step s are state_for(s + RESAVED)


def contents(step: int, resaved: bool) -> dict:
    """The state saved as ``step`` (first save, or its re-save): a tensor
    that never changes (what a delta save shares), and the step's own."""
    frozen = np.random.default_rng(7).standard_normal(60_000).astype(np.float32)  # 240 KB
    return {"frozen": frozen, **state_for(step + (RESAVED if resaved else 0))}


def main(directory: str, target: int, log: str, durable: bool, recycle: bool = False, zstd: bool = False,
         delta: bool = False) -> None:
    shim = ctypes.CDLL(None)
    compression = "zstd" if zstd else None
    saver = fastckpt.Saver(max_to_keep=2, durable=durable, recycle=recycle, compression=compression, delta=delta)
    prefix = os.path.join(directory, "model")

    def done(step: int, resaved: bool) -> None:
        shim.killshim_pause(1)
        with open(log, "a") as f:
            f.write(f"{step} {int(resaved)}\n")
        shim.killshim_pause(0)

    def inode(step: int) -> int:
        files = sorted(n for n in os.listdir(directory) if n.startswith(f"model-{step}.data-"))
        return os.stat(os.path.join(directory, files[-1])).st_ino  # (a delta save's own file is its last)

    victims = (inode(1), inode(2))
    recycled = 0
    shim.killshim_arm(ctypes.c_long(target))
    saver.save(contents(3, False), prefix, global_step=3)        # new step; retention deletes step 1
    shim.killshim_pause(1)
    recycled += inode(3) == victims[0]
    shim.killshim_pause(0)
    done(3, False)
    saver.save(contents(3, True), prefix, global_step=3)         # re-save of the latest step
    done(3, True)
    mgr = fastckpt.CheckpointManager(directory, max_to_keep=2, checkpoint_name="model", durable=durable,
                                     recycle=recycle, compression=compression, delta=delta)
    mgr.save(contents(4, False), 4, blocking=False)              # background save; deletes step 2
    mgr.wait()
    shim.killshim_pause(1)
    recycled += inode(4) == victims[1]
    shim.killshim_pause(0)
    done(4, False)
    mgr.save(contents(4, True), 4, force=True)                   # re-save through the manager
    done(4, True)
    shim.killshim_pause(1)
    print("recycled", recycled)
    print(shim.killshim_count())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "durable", "recycle" in sys.argv[5:],
         "zstd" in sys.argv[5:], "delta" in sys.argv[5:])
