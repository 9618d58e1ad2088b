"""A small PyTorch model trained with Adam, a learning-rate schedule and
dropout, checkpointed in the background with fastckpt. Kill it at any time,
run it again with the same arguments, and it continues from the last saved
step with the same loss curve, bit for bit: the checkpoint holds the model,
the optimizer's state, the scheduler, the random generator that draws the
data and the dropout masks, and the step.

    python examples/resume_torch.py --dir /tmp/run --steps 600 --every 20
"""

import argparse
import json

import torch

import fastckpt


def make(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    return model, opt, sched


def train_step(model, opt, sched, teacher):
    x = torch.randn(32, 16)  # drawn from the global generator, which the checkpoint keeps
    y = x @ teacher + 0.1 * torch.randn(32, 1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default=None, help="append 'step loss' lines here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    model, opt, sched = make(args.seed)
    teacher = torch.randn(16, 1, generator=torch.Generator().manual_seed(args.seed))
    mgr = fastckpt.CheckpointManager(args.dir, max_to_keep=3)
    restored = mgr.restore_or_initialize({"model": model.state_dict(), "optim": opt.state_dict()})
    start = 0
    if restored is not None:  # the model was filled in place; the rest comes back as saved
        opt.load_state_dict(restored["optim"])
        sched.load_state_dict(restored["sched"])
        torch.set_rng_state(restored["rng"])
        start = restored["step"]
        print(f"resumed from step {mgr.restored_step}", flush=True)
    log = open(args.log, "a") if args.log else None
    model.train()
    for step in range(start, args.steps):
        loss = train_step(model, opt, sched, teacher)
        if log:
            log.write(f"{step} {loss!r}\n")
            log.flush()
        done = step + 1
        if done % args.every == 0 or done == args.steps:
            state = {"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                     "rng": torch.get_rng_state(), "step": done}
            mgr.save(state, done, blocking=False, force=done == args.steps)
    mgr.wait()
    digest = float(sum(p.detach().double().sum() for p in model.parameters()))
    print(json.dumps({"step": args.steps, "params_digest": digest}))


if __name__ == "__main__":
    main()
