"""TensorFlow bundles as a conversion source and destination."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from fastckpt.bundle.delta import DELTA_KEY
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, dtype_name, numpy_dtype
from fastckpt.errors import UnsupportedError
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.directory.locate import find_checkpoint, open_checkpoint
from fastckpt.structure.record import STRUCTURE_KEY, read_record, with_structure_record
from fastckpt.bundle.writer import final_files, write_bundle
from fastckpt.formats.source import Source
from fastckpt.storage import fs

__all__ = ["open_bundle", "write_tf", "bundle_tensors"]


def open_bundle(path: str, *, verify: bool = True) -> Source:
    """A bundle (prefix, or a directory: its latest checkpoint) as a
    :class:`Source`. Plain tensors are zero-copy views of the mapped data
    files (checksum checked on first use); compressed, partitioned and
    string tensors are decoded when read."""
    prefix = _prefix_of(path)
    reader = CheckpointReader(prefix, verify=verify)
    try:
        record = read_record(reader)
        tensors = {name: _lazy(reader, name) for name in reader.tensor_names() if name not in (STRUCTURE_KEY, DELTA_KEY)}
        tied = {n: first for n, first in reader.tied_names().items() if n in tensors and first in tensors}
        for name, first in tied.items():
            tensors[name] = tensors[first]
        info = _info(reader, record)
    except BaseException:
        reader.close()
        raise
    return Source("tf", reader.prefix, tensors, tree=record["structure"] if record else None,
                  metadata=record.get("metadata") if record else None, info=info, close=reader.close, tied=tied)


def _prefix_of(path: str) -> str:
    if fs.is_dir(path) and fs.exists(os.path.join(path, "checkpoint")):
        return str(open_checkpoint(path, lambda p: p))
    return find_checkpoint(path)


def _lazy(reader: CheckpointReader, name: str) -> LazyTensor:
    index = reader.index
    entry = index.entry(index.find(name.encode("utf-8", "surrogateescape")))
    if entry.dtype == DT_VARIANT:
        raise UnsupportedError(f"tensor {name!r} is a DT_VARIANT tensor, which fastckpt does not read")
    dtype = numpy_dtype(entry.dtype) if entry.dtype != DT_STRING else np.dtype(object)
    mapped = (entry.dtype != DT_STRING and not entry.slices and not index.compressed and not index.big_endian
              and entry.size > 0 and entry.offset % dtype.itemsize == 0)
    load = (lambda: reader.get_tensor(name, copy=False)) if mapped else (lambda: reader.get_tensor(name))
    return LazyTensor(dtype, tuple(entry.shape), load, mapped=mapped, what=f"{reader.prefix}: tensor {name!r}",
                      stored=entry.size if entry.dtype == DT_STRING else 0)


def _info(reader: CheckpointReader, record: Any) -> Dict[str, Any]:
    sizes = [fs.size(reader.files.path(s)) for s in range(reader.num_shards)]
    return {"data_files": reader.num_shards, "file_bytes": sum(sizes) + fs.size(reader.prefix + ".index"),
            "compression": "zstd" if reader.index.compressed else None,
            "format_version": "TensorFlow bundle V2" + (" (fastckpt zstd extension)" if reader.index.compressed
                                                        else ""),
            "big_endian": bool(reader.index.big_endian),
            "structure_record": record["version"] if record else None,
            "partitioned": sum(1 for _, e in reader.entries() if e.slices),
            "dtypes": {n: dtype_name(reader.index.entry(reader.index.find(k)).dtype) for k, _ in reader.entries()
                       if k[:1] != b"\x00" for n in [k.decode("utf-8", "surrogateescape")]}}


def write_tf(dst: str, source: Source, *, num_shards: int = 1, compression: Optional[str] = None,
             compression_level: int = 1, durable: bool = False, threads: Optional[int] = None) -> List[str]:
    """``source`` as the bundle ``dst``, with its structure record when it
    has one (so ``fastckpt.restore`` gives back the same nesting)."""
    write_bundle(dst, bundle_tensors(source), num_shards=num_shards, durable=durable, threads=threads,
                 compression=compression, compression_level=compression_level)
    return final_files(dst, num_shards)


def bundle_tensors(source: Source) -> Dict[str, Any]:
    """What a bundle of ``source`` holds: its tensors, and the structure
    record of its nesting and metadata when it has them."""
    tensors: Dict[str, Any] = dict(source.tensors)
    metadata = _json_metadata(source)
    if source.tree is not None or metadata is not None:
        tree = source.tree if source.tree is not None else {"dict": [[n, {"leaf": n}] for n in tensors]}
        tensors = dict(with_structure_record(tensors, tree, metadata))
    return tensors


def _json_metadata(source: Source) -> Any:
    return source.metadata if source.format == "tf" else ({"converted_from": source.format, "metadata":
                                                           source.metadata} if source.metadata else None)
