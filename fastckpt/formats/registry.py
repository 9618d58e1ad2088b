"""Opening any supported checkpoint as a :class:`~fastckpt.formats.source.Source`
and writing one in any format: the dispatch over the four formats."""

from __future__ import annotations

from typing import List, Optional

from fastckpt.bundle.naming import PathLike
from fastckpt.storage.fsutil import io_error
from fastckpt.errors import CheckpointError, InvalidArgumentError, NotFoundError
from fastckpt.formats.bundle import open_bundle, write_tf
from fastckpt.formats.npz import open_npz, write_npz
from fastckpt.formats.safetensors import open_safetensors, write_safetensors
from fastckpt.formats.source import Source, check_format, check_reachable, checked_path, detect_format
from fastckpt.formats.torchfile import open_torch, write_torch
from fastckpt.storage import fs

__all__ = ["open_source", "write_as"]


def open_source(path: PathLike, fmt: Optional[str] = None, *, verify: bool = True) -> Source:
    """Open the checkpoint at ``path`` (in format ``fmt``, or detected)."""
    p = checked_path(path)
    fmt = check_format(fmt) if fmt else detect_format(p)
    check_reachable(p, fmt)
    if fmt != "tf" and not _exists(p, fmt):
        raise NotFoundError(f"no {fmt} checkpoint at {p}: it does not exist")
    try:
        return _open(p, fmt, verify)
    except CheckpointError:
        raise
    except OSError as e:  # the system refused a read (EIO, EACCES...)
        raise io_error(e, f"reading {p}") from e


def _open(p: str, fmt: str, verify: bool) -> Source:
    if fmt == "tf":
        return open_bundle(p, verify=verify)
    if fmt == "safetensors":
        return open_safetensors(p)
    if fmt == "npz":
        return open_npz(p)
    return open_torch(p)


def _exists(path: str, fmt: str) -> bool:
    """``path`` exists -- or, for safetensors, names shards through their index."""
    shards = fmt == "safetensors" and path.endswith(".safetensors") and \
        fs.present(path[:-len(".safetensors")] + ".safetensors.index.json")
    return fs.present(path) or shards


def write_as(fmt: str, dst: str, source: Source, *, num_shards: int = 1, compression: Optional[str] = None,
             compression_level: int = 1, durable: bool = False, threads: Optional[int] = None) -> List[str]:
    """Write ``source``'s tensors to ``dst`` in format ``fmt``; returns the
    files written. Every writer writes under private names and renames
    into place last, so ``dst`` is never half written."""
    fmt = check_format(fmt)
    check_reachable(dst, fmt)
    if type(num_shards) is not int or not 1 <= num_shards <= 99999:
        raise InvalidArgumentError(f"num_shards must be an int in 1..99999, got {num_shards!r}")
    if compression is not None and fmt != "tf":
        raise InvalidArgumentError(f"compression is a TensorFlow-bundle option; {fmt} files are written plain")
    if num_shards != 1 and fmt not in ("tf", "safetensors"):
        raise InvalidArgumentError(f"{fmt} checkpoints are one file: --num-shards must be 1")
    if fmt == "tf":
        return write_tf(dst, source, num_shards=num_shards, compression=compression,
                        compression_level=compression_level, durable=durable, threads=threads)
    if fmt == "safetensors":
        return write_safetensors(dst, source, num_shards=num_shards, durable=durable)
    if fmt == "npz":
        return write_npz(dst, source, durable=durable)
    return write_torch(dst, source, durable=durable)
