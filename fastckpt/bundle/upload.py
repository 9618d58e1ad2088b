"""Writing a bundle's data to an object store: each data object of a write
plan (the same plan as a local save, made in C) streamed from the arrays'
own memory into a parallel multipart upload
(:meth:`fastckpt.storage.s3.S3Storage.put_stream`: memory bounded by the
parts in flight, never a serialised copy of the state), the CRC32C of each
tensor computed as its bytes go by (in C, without the GIL, while the parts
upload)."""

from __future__ import annotations

from typing import Any, Iterator, List, Mapping

import numpy as np

from fastckpt import _core
from fastckpt.bundle.chunks import STAGING_BYTES, c_order_chunks
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.storage import local

__all__ = ["upload_data", "upload_compressed", "CRC_PIECE"]

CRC_PIECE = 8 << 20  # a ready payload is checksummed (and handed to the upload) in pieces of this size
_ZEROS = bytes(1 << 20)


def _shard_items(plan: "_core.WritePlan", num_shards: int) -> List[List[int]]:
    """The plan's tensors of each shard, in offset order."""
    shards: List[List[int]] = [[] for _ in range(num_shards)]
    for i in range(len(plan)):
        shards[plan.shard(i)].append(i)
    for items in shards:
        items.sort(key=plan.offset)
    return shards


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        yield _ZEROS[:min(n, len(_ZEROS))]
        n -= min(n, len(_ZEROS))


def _pieces(plan: "_core.WritePlan", items: List[int], sources: Mapping[int, Any], total: int) -> Iterator[Any]:
    """The ``total`` bytes of one data file in order (alignment padding as
    zeros, also after the last tensor, as a local file has it), each
    tensor's CRC32C computed as its pieces go by and set in the plan."""
    at = 0
    for i in items:
        yield from _zeros(plan.offset(i) - at)
        crc = 0
        if plan.is_ready(i):
            payload = plan.payload(i)
            for start in range(0, payload.nbytes, CRC_PIECE):
                piece = payload[start:start + CRC_PIECE]
                crc = _core.crc32c(piece, crc)
                yield piece
        else:
            source = sources[i]
            if isinstance(source, LazyTensor):
                source = source.array()
            for chunk in c_order_chunks(source, STAGING_BYTES) if source.nbytes else ():
                crc = _core.crc32c(chunk, crc)
                yield chunk
            source = None
        plan.set_crc(i, crc)
        at = plan.offset(i) + plan.size(i)
    yield from _zeros(total - at)


def upload_data(storage: Any, plan: "_core.WritePlan", urls: List[str]) -> None:
    """Stream every shard of ``plan`` into the object ``urls[shard]`` (the
    plan's CRCs are set as the bytes go; its index can be made afterwards)."""
    sources = dict(plan.staged)
    for shard, items in enumerate(_shard_items(plan, len(urls))):
        total = int(plan.shard_sizes[shard])
        storage.put_stream(urls[shard], _pieces(plan, items, sources, total), total)


def upload_compressed(storage: Any, plan: "_core.WritePlan", urls: List[str], level: int, chunk: int,
                      threads: int) -> None:
    """Compress every payload (byte planes + zstd, on the C threads) into an
    unlinked temporary file per shard (local disk, not memory: the sizes
    are known only once compressed), then stream each file into its
    object. Sets the plan's offsets, sizes and CRCs."""
    for i, source in plan.staged:
        if isinstance(source, LazyTensor):
            source = source.array()
        plan.set_ready(i, np.ascontiguousarray(source, dtype=source.dtype.newbyteorder("<")))
    fds: List[int] = []
    try:
        for _ in urls:
            fds.append(local.temp_fd())
        plan.write_compressed(fds, level, chunk, threads, urls)
        for fd, url, size in zip(fds, urls, plan.shard_sizes):
            mapped = local.map_read(fd, int(size)) if size else None
            try:
                view = memoryview(mapped) if mapped is not None else memoryview(b"")
                storage.put_stream(url, (view[at:at + CRC_PIECE] for at in range(0, int(size), CRC_PIECE)), int(size))
                view.release()
            finally:
                if mapped is not None:
                    mapped.close()
    finally:
        for fd in fds:
            local.close(fd)
