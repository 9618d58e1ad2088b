"""Converting a checkpoint: ``fastckpt.convert(src, dst, compression=...)``
rewrites a bundle compressed or plain (``compression=None`` gives a
checkpoint stock TensorFlow reads), resharded into ``num_shards`` data
files; partitioned tensors come out whole, the structure record as it was.
The whole state passes through memory once (tensors are read, then written)."""

from __future__ import annotations

from typing import Optional

from .naming import PathLike
from .reader import read_bundle
from .writer import write_bundle

__all__ = ["convert"]


def convert(src: PathLike, dst: PathLike, *, compression: Optional[str] = None, compression_level: int = 1,
            num_shards: int = 1, durable: bool = False, threads: Optional[int] = None) -> str:
    """Read checkpoint ``src`` (a prefix or a directory: its latest; every
    checksum checked) and write it as the bundle ``dst``; returns ``dst``."""
    tensors = read_bundle(src, threads=threads)
    return write_bundle(dst, tensors, num_shards=num_shards, durable=durable, threads=threads,
                        compression=compression, compression_level=compression_level)
