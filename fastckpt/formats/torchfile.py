"""PyTorch ``.pt``/``.pth``/``.bin`` files (needs torch). Read with
``torch.load(weights_only=True)`` -- torch's restricted unpickler, which
builds only tensors and plain containers, never arbitrary objects -- and
memory-mapped (shared, read-only use) when the file is a zip archive, so
tensors are views of the page cache. Written with ``torch.save`` from
tensors that share the source's memory (mapped views are not copied)."""

from __future__ import annotations

import errno
import mmap
import warnings
import zipfile
import zlib
from typing import Any, Callable, Dict, List

import numpy as np

from fastckpt.errors import CheckpointIOError, DataLossError, InvalidArgumentError
from fastckpt.bundle.frameworks import ML_TO_TORCH, to_numpy
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.structure.tree import flatten, unflatten
from fastckpt.formats.source import Source, open_input
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY
from fastckpt.formats.files import replace_all
from fastckpt.storage import fs

__all__ = ["open_torch", "write_torch"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError("PyTorch files need torch: pip install torch") from None
    return torch


def _load(path: str, zipped: bool) -> Any:
    torch = _torch()
    try:
        if not zipped:  # torch's legacy format cannot be mapped
            return torch.load(path, map_location="cpu", weights_only=True)
        try:
            with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a read-only file cannot be mapped shared: privately then
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        if isinstance(e, InvalidArgumentError):
            raise
        if isinstance(e, OSError):
            raise CheckpointIOError(e.errno or errno.EIO, f"reading {path}: {e.strerror or e}", path) from e
        raise DataLossError(f"{path} is not a PyTorch weights file torch loads with weights_only=True: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _is_zip(path: str) -> bool:
    """Whether the regular file ``path`` is torch's zip format (a FIFO or a
    device is refused here, before torch opens it)."""
    with open_input(path) as fh:
        return fh.read(4) == b"PK\x03\x04"


def open_torch(path: str) -> Source:
    """The tensors of a PyTorch file as a :class:`Source`: a flat state
    dict as it is, any other nesting (``{"model": ..., "optimizer": ...}``)
    flattened to ``/``-joined names with its structure kept."""
    torch = _torch()
    zipped = _is_zip(path)
    obj = _load(path, zipped)
    if isinstance(obj, torch.Tensor):
        obj = {"tensor": obj}
    flat = isinstance(obj, dict) and all(type(k) is str and isinstance(v, torch.Tensor) for k, v in obj.items())
    if flat:
        leaves: Dict[str, Any] = {k: to_numpy(v) for k, v in obj.items()}
        tree = None
    else:
        leaves, tree = flatten(obj)
    check = _crc_check(path) if zipped else (lambda: None)
    tensors: Dict[str, LazyTensor] = {}
    tied: Dict[str, str] = {}
    first: Dict[Any, str] = {}
    for n, a in leaves.items():  # torch stores tied weights once: one storage, one view, two names
        same = (a.__array_interface__["data"][0], a.dtype.str, a.shape, a.strides) \
            if isinstance(a, np.ndarray) and a.nbytes else None
        if same is not None and same in first:
            tied[n] = first[same]
            tensors[n] = tensors[first[same]]
            continue
        if same is not None:
            first[same] = n
        tensors[n] = _lazy(path, n, a, zipped, check)
    info = {"data_files": 1, "file_bytes": fs.size(path), "compression": None,
            "format_version": "PyTorch zip" if zipped else "PyTorch legacy",
            "dtypes": {n: str(t.dtype) for n, t in tensors.items()}}
    return Source("torch", path, tensors, tree=tree, info=info, tied=tied)


def _crc_check(path: str) -> Callable[[], None]:
    """A check, run once before the first value is read, of every zip
    record's CRC-32 (torch's mapped load checks none): one sequential pass
    over the file."""
    done: List[bool] = []

    def check() -> None:
        if done:
            return
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as member:
                        while member.read(1 << 20):
                            pass
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise DataLossError(f"{path}: damaged: {e}") from None
        done.append(True)
    return check


def _lazy(path: str, name: str, arr: np.ndarray, zipped: bool, check: Callable[[], None]) -> LazyTensor:
    """A tensor torch loaded: a view of the mapped file (zip format, its
    records' CRC-32s checked before the first value is read) or, from the
    legacy format (no checksums), already in memory."""
    def load() -> np.ndarray:
        check()
        return arr
    return LazyTensor(arr.dtype, tuple(arr.shape), load, mapped=zipped and arr.flags.c_contiguous,
                      what=f"{path}: tensor {name!r}")


def _as_torch(arr: np.ndarray) -> Any:
    """A torch tensor sharing ``arr``'s memory (read-only maps too: torch
    only warns, and nothing writes to it)."""
    torch = _torch()
    shape = arr.shape  # (ascontiguousarray makes a 0-d array 1-d)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else None)
    via = ML_TO_TORCH.get(arr.dtype.name)
    if arr.dtype.kind == "V" and via is None:
        raise InvalidArgumentError(f"PyTorch has no dtype {arr.dtype}")
    target = getattr(torch, via) if via else None
    if target is None:
        try:
            target = torch.from_numpy(np.zeros(0, arr.dtype)).dtype
        except TypeError:
            raise InvalidArgumentError(f"PyTorch has no dtype {arr.dtype}") from None
    if arr.size == 0:
        return torch.zeros(shape, dtype=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "The given buffer is not writable"
        raw = torch.frombuffer(arr.reshape(-1).view(np.uint8), dtype=torch.uint8)
    return raw.view(target).reshape(shape)


def write_torch(dst: str, source: Source, *, durable: bool = False) -> List[str]:
    """``source`` as a PyTorch file: a flat state dict, or the nesting it
    came in (tensor leaves as torch tensors, other values as they were)."""
    _torch()
    strings = [n for n, t in source.tensors.items() if t.dtype.kind in "OSU" and n != OBJECT_GRAPH_KEY]
    if strings:
        raise InvalidArgumentError(f"PyTorch has no string tensors: {', '.join(strings[:5])}")
    made: Dict[int, Any] = {}  # tied names (one LazyTensor): one torch tensor, stored once by torch.save
    given = {n: made[id(t)] if id(t) in made else made.setdefault(id(t), _as_torch(t.array()))
             for n, t in source.tensors.items() if n != OBJECT_GRAPH_KEY}
    obj = dict(given) if source.tree is None else unflatten(source.tree, {}, None, given)
    def write(fh: Any) -> None:
        try:
            _torch().save(obj, fh)
        except RuntimeError as e:  # torch's writer reports a failed write so; the OSError is its context
            cause = e.__context__ if isinstance(e.__context__, OSError) else None
            raise CheckpointIOError(cause.errno if cause else errno.EIO,
                                    f"writing {dst}: {cause.strerror if cause else e}", dst) from e
    return replace_all([(dst, write)], durable)

