"""A small numpy model trained with SGD + momentum, checkpointed in the
background every N steps. Kill it at any time, run it again with the same
arguments, and it continues from the last saved step with the same loss
curve (every step's data depends only on --seed and the step).

    python examples/resume_training.py --dir /tmp/run --steps 300 --every 25
"""

import argparse
import json
import sys

import numpy as np

import fastckpt


def batch(seed: int, step: int, n: int = 64, d: int = 16):
    """The training batch of ``step``: a fixed linear teacher plus noise."""
    teacher = np.random.default_rng(seed).standard_normal((d, 1))
    rng = np.random.default_rng([seed, step])
    x = rng.standard_normal((n, d))
    return x, x @ teacher + 0.1 * rng.standard_normal((n, 1))


def init_state(seed: int, d: int = 16, h: int = 32):
    rng = np.random.default_rng(seed + 1)
    params = {"w1": rng.standard_normal((d, h)) * 0.1, "b1": np.zeros(h),
              "w2": rng.standard_normal((h, 1)) * 0.1, "b2": np.zeros(1)}
    return {"params": params, "momentum": {k: np.zeros_like(v) for k, v in params.items()},
            "step": np.zeros((), np.int64)}


def train_step(state, x, y, lr=0.01, beta=0.9):
    p, m = state["params"], state["momentum"]
    hid = np.tanh(x @ p["w1"] + p["b1"])
    err = hid @ p["w2"] + p["b2"] - y
    loss = float(np.mean(err ** 2))
    g_out = 2 * err / len(x)
    grads = {"w2": hid.T @ g_out, "b2": g_out.sum(0)}
    g_hid = (g_out @ p["w2"].T) * (1 - hid ** 2)
    grads.update(w1=x.T @ g_hid, b1=g_hid.sum(0))
    for k in p:  # in place: the arrays the manager restores into stay the same objects
        m[k] *= beta
        m[k] += grads[k]
        p[k] -= lr * m[k]
    state["step"][...] += 1
    return loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default=None, help="append 'step loss' lines here")
    args = ap.parse_args(argv)

    state = init_state(args.seed)
    mgr = fastckpt.CheckpointManager(args.dir, max_to_keep=3, checkpoint_interval=args.every)
    restored = mgr.restore_or_initialize(state)  # fills state's arrays in place
    start = int(state["step"])
    if restored is not None:
        print(f"resumed from step {mgr.restored_step}", flush=True)
    log = open(args.log, "a") if args.log else None
    for step in range(start, args.steps):
        x, y = batch(args.seed, step)
        loss = train_step(state, x, y)
        if log:
            log.write(f"{step} {loss!r}\n")
            log.flush()
        done = step + 1
        if done % args.every == 0 or done == args.steps:
            mgr.save(state, done, blocking=False, metadata={"loss": loss}, force=done == args.steps)
    mgr.wait()
    final = {k: v.tolist() for k, v in state["params"].items()}
    print(json.dumps({"step": int(state["step"]), "params_digest": float(sum(np.sum(v) for v in state["params"].values()))}))
    return final


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
