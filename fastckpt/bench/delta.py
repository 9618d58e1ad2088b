"""``fastckpt bench --delta``: a fine-tuning loop's saves -- a LoRA-like state
(many large frozen tensors; 5 % of the bytes trainable: adapters and their
two Adam moments, changed every step) saved ``saves`` times into one
directory with ``max_to_keep=3`` -- as full saves, delta saves that find
what is unchanged from the contents, and delta saves told which tensors are
frozen; and, as the worst case, a state whose every tensor changes at every
step, full vs delta. The cases are interleaved, their order rotating every
round; per save: wall time and the bytes passed to write system calls
(``wchar`` of ``/proc/self/io``). The first save of each loop (always full)
is left out; min and median over rounds of each loop's mean."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastckpt.bench.settle import settle
from fastckpt.bench.run import figures, fresh_memory_for_every_case, gpt_like_state, machine, nbytes, table
from fastckpt.manager import CheckpointManager
from fastckpt.saver import save

__all__ = ["run_delta_bench", "lora_like_state", "written_bytes"]

KEEP = 3
TRAINABLE = 0.05


def lora_like_state(size: int, tensors: int) -> Dict[str, np.ndarray]:
    """``size`` bytes: frozen GPT-like tensors under ``base/`` and, under
    ``train/``, adapters and their two moments (5 % of the bytes)."""
    frozen = gpt_like_state(int(size * (1 - TRAINABLE)), tensors)
    state = {f"base/{k}": v for k, v in frozen.items()}
    rng = np.random.default_rng(1)
    per = max(1, int(size * TRAINABLE) // (3 * 16 * 4))
    for i in range(16):
        for kind in ("adapter", "exp_avg", "exp_avg_sq"):
            state[f"train/{kind}/{i}"] = rng.standard_normal(per).astype(np.float32)
    return state


def written_bytes() -> int:
    """Bytes this process has passed to write system calls (``wchar``)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _loop(work: str, state: Dict[str, np.ndarray], saves: int, change: Callable[[int], None],
          **options: Any) -> List[Tuple[float, int]]:
    """(seconds, bytes written) of each save of the loop."""
    d = tempfile.mkdtemp(prefix="loop-", dir=work)
    mgr = CheckpointManager(d, max_to_keep=KEEP, durable=False, **options)
    out = []
    try:
        for step in range(saves):
            change(step)
            settle(sync=False)
            w = written_bytes()
            t = time.perf_counter()
            mgr.save(state, step)
            out.append((time.perf_counter() - t, written_bytes() - w))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


def run_delta_bench(size: int = 1 << 30, tensors: int = 250, saves: int = 8, rounds: int = 3,
                    directory: Optional[str] = None, out: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the delta benchmark, print the table and a verdict; returns the figures."""
    state = lora_like_state(size, tensors)
    total = nbytes(state)
    trainable = [k for k in state if k.startswith("train/")]

    def step_trainable(step: int) -> None:
        for k in trainable:
            state[k] += np.float32(0.5)

    def step_all(step: int) -> None:
        for v in state.values():
            v += np.float32(0.5)
    cases: Dict[str, Callable[[], List[Tuple[float, int]]]] = {}
    work = tempfile.mkdtemp(prefix="fastckpt-delta-", dir=directory)
    cases["fine-tuning: full saves"] = lambda: _loop(work, state, saves, step_trainable)
    cases["fine-tuning: delta=True"] = lambda: _loop(work, state, saves, step_trainable, delta=True)
    cases["fine-tuning: delta=True, frozen=['base']"] = lambda: _loop(work, state, saves, step_trainable, delta=True,
                                                                      frozen=["base"])
    cases["all change: full saves"] = lambda: _loop(work, state, saves, step_all)
    cases["all change: delta=True"] = lambda: _loop(work, state, saves, step_all, delta=True)
    note = fresh_memory_for_every_case()
    out(f"fastckpt bench --delta: {total / 2**30:.2f} GiB state ({TRAINABLE:.0%} trainable), {saves} saves per loop, "
        f"max_to_keep={KEEP}, {rounds} interleaved rounds; needs about {2 * total / 2**30:.1f} GiB of memory and "
        f"{2 * total / 2**30:.1f} GiB of disk")
    out(f"machine: {machine()}")
    per_round: Dict[str, List[float]] = {n: [] for n in cases}
    wrote: Dict[str, List[float]] = {n: [] for n in cases}
    names = list(cases)
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                got = cases[name]()[1:]  # the first save of a loop is a full one in every case
                per_round[name].append(statistics.mean(t for t, _ in got))
                wrote[name].append(statistics.mean(b for _, b in got))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results: Dict[str, Any] = {}
    for name in names:
        group_full = "fine-tuning: full saves" if name.startswith("fine") else "all change: full saves"
        results[name] = figures(per_round[name], total, per_round[group_full], None,
                                written_bytes=statistics.median(wrote[name]))
    _report(results, total, out)
    verdict = _verdict(results)
    out(verdict)
    if note:
        out(f"  note: {note}")
    results["verdict"] = verdict
    tied = tied_sizes(directory)
    if tied is not None:
        results["tied"] = tied
        out(f"note: tied weights (Embedding(20000, 512) tied to the LM head, state_dict()): fastckpt "
            f"{tied['fastckpt'] / 1e6:.1f} MB on disk, torch.save {tied['torch.save'] / 1e6:.1f} MB")
    return results


def tied_sizes(directory: Optional[str] = None) -> Optional[Dict[str, int]]:
    """Bytes on disk of a tied model's state dict saved by fastckpt and by
    ``torch.save`` (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    model = torch.nn.Sequential(torch.nn.Embedding(20000, 512), torch.nn.Linear(512, 20000, bias=False))
    model[1].weight = model[0].weight
    work = tempfile.mkdtemp(prefix="fastckpt-tied-", dir=directory)
    try:
        save(model.state_dict(), os.path.join(work, "m"))
        torch.save(model.state_dict(), os.path.join(work, "m.pt"))
        ours = sum(os.path.getsize(os.path.join(work, n)) for n in os.listdir(work) if n.startswith("m."))
        return {"fastckpt": ours - os.path.getsize(os.path.join(work, "m.pt")),
                "torch.save": os.path.getsize(os.path.join(work, "m.pt"))}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(results: Dict[str, Dict[str, Any]], total: int, out: Callable[[str], None]) -> None:
    out("")
    rows: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    for name, row in results.items():
        if name.endswith("full saves"):
            rows.append((name.split(":")[0] + " (a loop's mean per save, saves 2..N)", None))
        rows.append((f"{name.split(': ', 1)[1]}: {row['written_bytes'] / 2**20:.1f} MiB written", row))
    table(rows, out)
    out("")
    out("vs raw: here the full save's time / the case's (minima): how many times faster than a full save; "
        "GB/s: the state's size / the time.")


def _verdict(results: Dict[str, Dict[str, float]]) -> str:
    full, content = results["fine-tuning: full saves"], results["fine-tuning: delta=True"]
    hinted = results["fine-tuning: delta=True, frozen=['base']"]
    all_full, all_delta = results["all change: full saves"], results["all change: delta=True"]

    def ratio(a: Dict[str, float], b: Dict[str, float], key: str) -> float:
        return a[key] / b[key] if b[key] else float("inf")
    return (f"verdict: fine-tuning saves wrote {ratio(full, content, 'written_bytes'):.0f}x fewer bytes with "
            f"delta=True and were {ratio(full, content, 'min_s'):.1f}x faster (min; median "
            f"{ratio(full, content, 'median_s'):.1f}x), {ratio(full, hinted, 'min_s'):.1f}x with frozen= "
            f"(median {ratio(full, hinted, 'median_s'):.1f}x); when every tensor changes, delta saves took "
            f"{ratio(all_delta, all_full, 'min_s'):.2f}x the time of full saves (min; median "
            f"{ratio(all_delta, all_full, 'median_s'):.2f}x)")
