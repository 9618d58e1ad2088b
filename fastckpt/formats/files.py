"""Writing the single-file formats safely: each file is written under a
private locked name in its directory (``.fclink-<hex>``, which ``fastckpt
gc`` removes once its writer is gone) and renamed into place when
complete, so no reader ever sees half a file."""

from __future__ import annotations

import os
import secrets
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from fastckpt import _core
from fastckpt.storage.fsutil import default_threads, ensure_directory, fsync_dir, io_error
from fastckpt.storage.locking import create_locked_temp, release_lock
from fastckpt.bundle.writer import STAGING_BYTES, c_order_chunks
from fastckpt.storage import fs, local

__all__ = ["replace_all", "chunks_of", "write_at"]


def chunks_of(arr: np.ndarray, max_bytes: int = STAGING_BYTES) -> Iterator[memoryview]:
    """The bytes of ``arr`` in C order, little-endian, in pieces of at most
    ``max_bytes`` (views where the array already is so)."""
    if arr.size == 0:
        return
    for piece in c_order_chunks(arr, max_bytes):
        yield memoryview(piece.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def write_at(fd: int, start: int, tensors: Sequence[Any], staging_bytes: int = STAGING_BYTES,
             threads: Optional[int] = None) -> None:
    """Write the LazyTensors' bytes back to back from ``start`` with the C
    engine's parallel pwrites: mapped tensors from their maps, the others
    read one at a time and let go once written (so at most one decoded
    tensor and the pool's worth of pieces are held)."""
    batch: List[Tuple[int, np.ndarray]] = []
    held = 0
    nthreads = threads or default_threads()

    def flush() -> None:
        nonlocal held
        _core.io_run([fd] * len(batch), [at for at, _ in batch], [piece for _, piece in batch], write=True,
                     threads=nthreads)
        batch.clear()
        held = 0

    at = start
    for t in tensors:
        if not t.mapped and batch and held + t.nbytes > staging_bytes:
            flush()
        arr = t.array()
        for piece in (c_order_chunks(arr, staging_bytes) if arr.size else ()):
            batch.append((at, piece.reshape(-1).view(np.uint8)))
            at += piece.nbytes
            if not t.mapped:
                held += piece.nbytes
                if held >= staging_bytes:
                    flush()
        arr = piece = None  # type: ignore[assignment]
    if batch:
        flush()


def _temp(path: str) -> Tuple[str, int]:
    directory = os.path.dirname(path) or "."
    ensure_directory(os.path.dirname(path))
    return create_locked_temp(lambda: os.path.join(directory, ".fclink-" + secrets.token_hex(8)))


def replace_all(files: Sequence[Tuple[str, Callable[[Any], Any]]], durable: bool) -> List[str]:
    """Write every ``(path, write(fileobj))`` under a private name, then
    rename them into place in order (put an index last). On failure no
    private file is left."""
    done: List[Tuple[str, str, int]] = []
    path = files[0][0] if files else ""
    try:
        for path, write in files:
            tmp, fd = _temp(path)
            done.append((tmp, path, fd))
            with local.open_binary(local.dup(fd), "wb") as fh:
                write(fh)
                fh.flush()
                if durable:
                    local.fsync(fh.fileno())
        for tmp, path, _ in done:
            fs.replace(tmp, path)
        path = ""
        if durable:
            for d in {os.path.dirname(p) or "." for _, p, _ in done}:
                fsync_dir(d)
    except OSError as e:
        raise io_error(e, f"writing {path or files[0][0]}") from e
    finally:
        for tmp, _, fd in done:
            fs.delete_quietly(tmp)
            release_lock(fd)
    return [p for p, _ in files]
