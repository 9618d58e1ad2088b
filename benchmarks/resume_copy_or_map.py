"""Resuming PyTorch training from a restore that copies vs one that maps
(copy-on-write): a 0.5 GiB MLP with Adam is restored, loaded into a new
model and optimizer (``load_state_dict``), and trained one step; interleaved
rounds, min and median of the restore alone and of restore + first step.

    python3 benchmarks/resume_copy_or_map.py [rounds]
"""

import shutil
import statistics
import sys
import tempfile
import time

import torch

import fastckpt


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)])


def main(rounds: int = 5) -> dict:
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="fastckpt-resume-")
    try:
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(8, 4096)
        model(x).sum().backward()
        opt.step()
        fastckpt.CheckpointManager(work, max_to_keep=1).save(
            {"model": model.state_dict(), "optim": opt.state_dict()}, step=1)

        def resume(cow: bool) -> tuple:
            m = _model()
            o = torch.optim.Adam(m.parameters(), lr=1e-4)
            t0 = time.perf_counter()
            st = fastckpt.restore(work, copy_on_write=cow)
            m.load_state_dict(st["model"])
            o.load_state_dict(st["optim"])
            t1 = time.perf_counter()
            o.zero_grad()
            m(x).sum().backward()
            o.step()
            return t1 - t0, time.perf_counter() - t0

        res: dict = {"copied": [], "mapped": []}
        for r in range(rounds):
            for cow in ((True, False) if r % 2 else (False, True)):
                res["mapped" if cow else "copied"].append(resume(cow))
        out = {}
        for k, v in res.items():
            a, b = [t[0] for t in v], [t[1] for t in v]
            out[k] = {"restore_min_s": min(a), "restore_median_s": statistics.median(a),
                      "with_step_min_s": min(b), "with_step_median_s": statistics.median(b)}
            print(f"{k:7s} restore min {min(a):.3f} median {statistics.median(a):.3f} | "
                  f"restore + first step min {min(b):.3f} median {statistics.median(b):.3f}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
