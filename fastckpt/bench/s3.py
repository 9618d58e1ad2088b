"""``fastckpt bench --url s3://bucket/prefix``: save and restore of a
GPT-like state to an object store, side by side in interleaved rounds
with (a) the raw limit -- the same bytes put as one parallel multipart
upload and fetched by parallel ranged GETs into existing memory, by the
same client and part size --, (b) ``torch.save`` to a buffer plus one
upload (and one download plus ``torch.load``), (c) PyTorch's distributed
checkpoint through fsspec/s3fs (``FsspecWriter``/``FsspecReader``), when
torch and s3fs are installed. Min and median of each, the ratios, and a
verdict line."""

from __future__ import annotations

import io
import os
import time
import uuid
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fastckpt.bench.run import figures, gpt_like_state, machine, nbytes, table
from fastckpt.bundle.naming import storage_path
from fastckpt.directory.locate import read_bundle
from fastckpt.errors import InvalidArgumentError
from fastckpt.saver import save
from fastckpt.storage.s3 import default_s3, split_url

__all__ = ["run_s3_bench"]


class _Case:
    def __init__(self, name: str, kind: str, fn: Callable[[], Any]) -> None:
        self.name, self.kind, self.fn = name, kind, fn
        self.times: List[float] = []


def _cases(base: str, state: Dict[str, np.ndarray], out: Callable[[str], None]) -> List[_Case]:
    storage = default_s3()
    total = nbytes(state)
    flat = np.empty(total, np.uint8)  # the raw case's bytes, and its destination on the way back
    at = 0
    for v in state.values():
        flat[at:at + v.nbytes] = v.reshape(-1).view(np.uint8)
        at += v.nbytes
    back = np.empty_like(flat)
    into = {k: np.empty_like(v) for k, v in state.items()}
    raw_url = f"{base}/raw-object"
    part = storage.part_bytes

    def raw_put() -> None:
        storage.put_stream(raw_url, (flat[i:i + part] for i in range(0, total, part)), total)

    def raw_get() -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(storage.parts_in_flight) as pool:
            list(pool.map(lambda i: storage.read_into(raw_url, i, back.data[i:i + part]),
                          range(0, total, part)))

    cases = [_Case("raw put (one multipart upload)", "save", raw_put),
             _Case("fastckpt save", "save", lambda: save(state, f"{base}/fastckpt/ckpt")),
             _Case("raw get (ranged GETs into memory)", "restore", raw_get),
             _Case("fastckpt restore into arrays", "restore",
                   lambda: read_bundle(f"{base}/fastckpt/ckpt", into=into))]
    try:
        import torch
    except ImportError:
        out("note: torch is not installed: torch.save and DCP+s3fs are not compared (pip install torch==2.13.0)")
        return cases
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    torch_url = f"{base}/torch.pt"

    def torch_save() -> None:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        view = buf.getbuffer()
        storage.put_stream(torch_url, (view[i:i + part] for i in range(0, len(view), part)), len(view))

    def torch_load() -> None:
        data = storage.read_bytes(torch_url)
        torch.load(io.BytesIO(data), weights_only=True)

    cases += [_Case("torch.save + upload", "save", torch_save), _Case("download + torch.load", "restore", torch_load)]
    try:
        import s3fs  # noqa: F401
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter  # PyTorch's s3 path
    except ImportError:
        out("note: s3fs is not installed: DCP+s3fs is not compared (pip install s3fs)")
        return cases
    dcp_url = f"{base}/dcp"
    options = {"endpoint_url": os.environ.get("AWS_ENDPOINT_URL")} if os.environ.get("AWS_ENDPOINT_URL") else {}
    dcp_into = {k: torch.empty_like(v) for k, v in tensors.items()}

    def dcp_save() -> None:
        with warnings.catch_warnings():  # ("torch.distributed is ... uninitialized": one process, as meant)
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, storage_writer=FsspecWriter(dcp_url, overwrite=True,
                                                          thread_count=storage.parts_in_flight,
                                                          client_kwargs=options), no_dist=True)

    def dcp_load() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(dcp_into, storage_reader=FsspecReader(dcp_url, client_kwargs=options), no_dist=True)

    cases += [_Case("torch DCP + s3fs save", "save", dcp_save), _Case("torch DCP + s3fs load", "restore", dcp_load)]
    return cases


def run_s3_bench(url: str, size: int = 1 << 30, tensors: int = 250, dtype: str = "float32", rounds: int = 5,
                 out: Callable[[str], None] = print) -> Dict[str, Dict[str, float]]:
    """Time every case ``rounds`` times, interleaved (saves first in each
    round, rotated), and print the table and the verdict; returns per
    case ``min_s``, ``median_s``, ``gb_per_s`` (median) and ``vs_raw``."""
    base_url = storage_path(url, "--url").rstrip("/")
    if not base_url.startswith("s3://"):
        raise InvalidArgumentError(f"--url must be an s3:// URL, got {url!r}")
    split_url(base_url)
    base = f"{base_url}/fastckpt-bench-{uuid.uuid4().hex[:8]}"
    state = gpt_like_state(size, tensors, dtype)
    total = nbytes(state)
    out(f"fastckpt bench --url: {total / 2**30:.2f} GiB in {len(state)} tensors to {base}, {rounds} interleaved "
        f"rounds; parts of {default_s3().part_bytes >> 20} MiB, {default_s3().parts_in_flight} in flight")
    cases = _cases(base, state, out)
    try:
        for r in range(rounds):
            for kind in ("save", "restore"):
                group = [c for c in cases if c.kind == kind]
                k = r % len(group)
                for c in group[k:] + group[:k]:
                    t = time.perf_counter()
                    c.fn()
                    c.times.append(time.perf_counter() - t)
        return _report(cases, total, out)
    finally:
        storage = default_s3()
        for info in storage.list_objects(base + "/"):
            storage.delete_quietly(info.url)


def _report(cases: List[_Case], total: int, out: Callable[[str], None]) -> Dict[str, Dict[str, float]]:
    out(f"machine: {machine()}")
    out("")
    results: Dict[str, Dict[str, Any]] = {}
    rows: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    for kind in ("save", "restore"):
        group = [c for c in cases if c.kind == kind]
        raw = next(b for b in group if b.name.startswith("raw"))
        ours = next(b for b in group if b.name.startswith("fastckpt"))
        rows.append(("saves" if kind == "save" else "restores", None))
        for c in group:
            results[c.name] = figures(c.times, total, raw.times, ours.times)
            rows.append((c.name, results[c.name]))
    table(rows, out)
    out("")
    verdict: List[str] = []
    for kind, mine in (("save", "fastckpt save"), ("restore", "fastckpt restore into arrays")):
        others = [c for c in cases if c.kind == kind and not c.name.startswith(("raw", "fastckpt"))]
        line = f"{kind}: {results[mine]['vs_raw']:.2f}x the raw limit"
        if others:
            best = min(others, key=lambda c: min(c.times))
            line += f", {min(best.times) / results[mine]['min_s']:.2f}x as fast as {best.name}"
        verdict.append(line)
    out("verdict: " + "; ".join(verdict) + " (minima over the rounds; vs raw = raw time / case time)")
    return results
