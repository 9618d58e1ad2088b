"""Child processes for the kill and concurrency tests (spawned through a
forkserver, so they must live in an importable module)."""

import os

import numpy as np


def state_for(step: int) -> dict:
    """The deterministic state saved at ``step``."""
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((64, 33)).astype(np.float32),
            "b": np.full(17, step, np.int64),
            "big": rng.standard_normal(40_000).astype(np.float32),  # 160 KB: several I/O pieces
            "names": np.array([f"step-{step}".encode()], dtype=object)}


def save_forever(directory: str, first_step: int, log_path: str, durable: bool) -> None:
    """Save steps first_step, first_step+1, ... and append each step to the
    log after its save returned (fsync'd: the log outlives SIGKILL)."""
    import fastckpt

    saver = fastckpt.Saver(max_to_keep=3, durable=durable)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    step = first_step
    while True:
        saver.save(state_for(step), os.path.join(directory, "model"), global_step=step)
        os.write(fd, f"{step}\n".encode())
        step += 1


def save_n(directory: str, name: str, n: int) -> None:
    """Save n checkpoints named name-0..n-1 into a shared directory."""
    import fastckpt

    saver = fastckpt.Saver(max_to_keep=4, durable=False)
    for i in range(n):
        saver.save(state_for(i), os.path.join(directory, name), global_step=i)
