"""safetensors files, read and written here (no dependency): an 8-byte
little-endian header length, a JSON header (``{name: {dtype, shape,
data_offsets}}`` and an optional ``__metadata__`` of strings), then the
raw little-endian C-order bytes. Sharded checkpoints follow Hugging Face's
convention: ``model-00001-of-00002.safetensors`` ... beside
``model.safetensors.index.json`` (``{"metadata": {"total_size": N},
"weight_map": {name: file}}``)."""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fastckpt.errors import DataLossError, InvalidArgumentError
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.formats.source import open_input, Source, tensors_only
from fastckpt.formats.files import replace_all, write_at
from fastckpt.storage import fs, local

__all__ = ["open_safetensors", "write_safetensors", "SAFETENSORS_DTYPES"]

_TABLES: List[Dict[Any, Any]] = []


def _tables() -> Tuple[Dict[str, np.dtype], Dict[np.dtype, str]]:
    """safetensors' dtype names -> numpy dtypes, and back (built on first
    use: bfloat16 and float8 come from ml_dtypes, a second to import)."""
    if not _TABLES:
        import ml_dtypes
        names: Dict[str, np.dtype] = {
            "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
            "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "I32": np.dtype(np.int32),
            "U32": np.dtype(np.uint32), "I64": np.dtype(np.int64), "U64": np.dtype(np.uint64),
            "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype(np.float32),
            "F64": np.dtype(np.float64), "C64": np.dtype(np.complex64),
            "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
            "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
        }
        _TABLES.extend([names, {dt: name for name, dt in names.items()}])
    return _TABLES[0], _TABLES[1]


def __getattr__(name: str) -> Any:
    if name == "SAFETENSORS_DTYPES":  # (public since 0.3; built when first asked for)
        return _tables()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_HEADER = 100 << 20  # what the safetensors library itself accepts


def open_safetensors(path: str) -> Source:
    """A safetensors file, a sharded set (its ``.index.json``, a directory
    holding one, or the ``.safetensors`` name the shards were cut from), or
    a directory of one file, as a :class:`Source` of mapped views."""
    files, weight_map = _files_of(path)
    tensors: Dict[str, LazyTensor] = {}
    maps: List[Optional[mmap.mmap]] = []
    metadata: Dict[str, Any] = {}
    try:
        for f in files:
            m, header, base = _map(f)
            maps.append(m)
            metadata.update(header.pop("__metadata__", None) or {})
            for name, desc in header.items():
                if name in tensors:
                    raise DataLossError(f"{f}: tensor {name!r} is also in another shard")
                if weight_map is not None and weight_map.get(name) != os.path.basename(f):
                    raise DataLossError(f"{f}: tensor {name!r} is not where the index's weight_map puts it")
                tensors[name] = _lazy(f, m, base, name, desc)
            _check_layout(f, header, len(m) - base if m is not None else 0)
        if weight_map is not None and set(weight_map) - set(tensors):
            missing = sorted(set(weight_map) - set(tensors))
            raise DataLossError(f"{path}: the index names {len(missing)} tensor(s) no shard holds: {missing[:5]}")
    except BaseException:
        _close(maps)
        raise
    tied = {k: v for k, v in metadata.items() if k not in tensors and isinstance(v, str) and v in tensors}
    for name, first in tied.items():  # safetensors' convention: a tied name written once, named in the metadata
        tensors[name] = tensors[first]
    info = {"data_files": len(files), "file_bytes": sum(fs.size(f) for f in files), "compression": None,
            "format_version": "safetensors", "dtypes": {n: _tables()[1].get(t.dtype, str(t.dtype))
                                                         for n, t in tensors.items()}}
    return Source("safetensors", path, tensors, metadata=metadata or None, info=info, close=lambda: _close(maps),
                  tied=tied)


def _close(maps: List[Any]) -> None:
    for m in maps:
        if m is not None:
            try:
                m.close()
            except BufferError:  # views handed out keep it; it closes with the last one
                pass


def _files_of(path: str) -> Tuple[List[str], Optional[Dict[str, str]]]:
    index = None
    if fs.is_dir(path):
        found = sorted(n for n in fs.listdir(path) if n.endswith(".safetensors.index.json"))
        singles = sorted(n for n in fs.listdir(path) if n.endswith(".safetensors"))
        if len(found) == 1:
            index = os.path.join(path, found[0])
        elif len(singles) == 1 and not found:
            return [os.path.join(path, singles[0])], None
        else:
            raise InvalidArgumentError(f"{path} holds {len(found)} safetensors indexes and {len(singles)} files: "
                                       "name the one to read")
    elif path.endswith(".index.json"):
        index = path
    elif not fs.present(path) and fs.present(path[:-len(".safetensors")] + ".safetensors.index.json"):
        index = path[:-len(".safetensors")] + ".safetensors.index.json"
    if index is None:
        return [path], None
    try:
        with open_input(index) as fh:
            doc = _json(fh.read(MAX_HEADER + 1))
        weight_map = doc["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and isinstance(k, str)
                                                       for k, v in weight_map.items()):
            raise TypeError("weight_map is not a map of names to files")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise DataLossError(f"{index} is not a safetensors index: {e}") from None
    directory = os.path.dirname(index)
    names = sorted(set(weight_map.values()))
    for n in names:
        if not n or os.path.basename(n) != n or n in (".", ".."):
            raise DataLossError(f"{index}: shard {n!r} is not a file beside the index")
    return [os.path.join(directory, n) for n in names], weight_map


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json(raw: bytes) -> Any:
    """Strict JSON, as the safetensors library reads it: UTF-8 without a
    byte-order mark, no NaN or Infinity, nesting within the parser's limit."""
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        raise ValueError("a byte-order mark before the JSON")
    return json.loads(text, parse_constant=_refuse_constant)


def _map(path: str) -> Tuple[Optional[mmap.mmap], Dict[str, Any], int]:
    """The file mapped read-only, its parsed header, and where data starts."""
    with open_input(path) as fh:
        size = local.fd_size(fh.fileno())
        head = fh.read(8)
        if len(head) < 8:
            raise DataLossError(f"{path} is not a safetensors file: {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise DataLossError(f"{path} is not a safetensors file: a header of {n} bytes in a file of {size}")
        try:
            header = _json(fh.read(n))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise DataLossError(f"{path}: the safetensors header is not JSON: {type(e).__name__}: {e}") from None
        if not isinstance(header, dict):
            raise DataLossError(f"{path}: the safetensors header is not a JSON object")
        m = local.map_read(fh.fileno()) if size > 8 + n else None
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise DataLossError(f"{path}: __metadata__ must map strings to strings")
    return m, header, 8 + n


def _lazy(path: str, m: Optional[mmap.mmap], base: int, name: str, desc: Any) -> LazyTensor:
    what = f"{path}: tensor {name!r}"
    try:
        dtype = _tables()[0][desc["dtype"]]
        shape = tuple(desc["shape"])
        begin, end = desc["data_offsets"]
        if not all(type(d) is int and d >= 0 for d in shape + (begin, end)) or end < begin:
            raise ValueError("negative or non-integer sizes")
        if len(shape) > 64 or not all(d < 1 << 62 for d in shape + (begin, end)):
            raise ValueError("more than 64 dimensions, or a size beyond 2**62")
    except KeyError as e:
        raise DataLossError(f"{what}: unknown or missing {e} in its header entry") from None
    except (TypeError, ValueError) as e:
        raise DataLossError(f"{what}: bad header entry {desc!r:.200}: {e}") from None
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if end - begin != size:
        raise DataLossError(f"{what}: {end - begin} bytes for a {desc['dtype']}{list(shape)} tensor of {size}")
    avail = len(m) - base if m is not None else 0
    if end > avail:
        raise DataLossError(f"{what} lies beyond the end of the file")

    def load() -> np.ndarray:
        if size == 0:
            return np.zeros(shape, dtype)
        assert m is not None  # a file with data is mapped
        return np.frombuffer(m, dtype, size // dtype.itemsize, base + begin).reshape(shape)
    return LazyTensor(dtype, shape, load, mapped=(base + begin) % dtype.itemsize == 0, what=what)


def _check_layout(path: str, header: Dict[str, Any], data_bytes: int) -> None:
    """Tensors must tile the data area exactly, as the format requires."""
    spans = sorted(tuple(d["data_offsets"]) for d in header.values())
    at = 0
    for begin, end in spans:
        if begin != at:
            raise DataLossError(f"{path}: tensors overlap or leave a gap at byte {at} of the data")
        at = end
    if at != data_bytes:
        raise DataLossError(f"{path}: {data_bytes - at} bytes after the last tensor")


def write_safetensors(dst: str, source: Source, *, num_shards: int = 1, durable: bool = False) -> List[str]:
    """``source``'s tensors as a safetensors file ``dst`` (``num_shards`` >
    1: shards plus the index, named after ``dst``), tensor by tensor."""
    tensors = tensors_only(source, "safetensors")
    for name, t in tensors.items():
        if t.dtype not in _tables()[1]:
            raise InvalidArgumentError(f"tensor {name!r}: safetensors has no {t.dtype} "
                                       f"(it has {', '.join(_tables()[0])})")
    meta = _string_metadata(source.metadata)
    for name, first in source.tied.items():  # tied weights once, the other name in the metadata (as
        if name in tensors and first in tensors:  # safetensors.torch.save_model writes them)
            del tensors[name]
            meta.setdefault(name, first)
    if not dst.endswith(".safetensors"):
        raise InvalidArgumentError(f"a safetensors destination ends with .safetensors, got {dst!r}")
    if num_shards == 1:
        return replace_all([(dst, lambda fh: _write_file(fh, tensors, meta))], durable)
    groups = split_shards(tensors, num_shards)
    stem = dst[:-len(".safetensors")]
    names = [f"{stem}-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values()), **meta},
             "weight_map": {n: os.path.basename(names[g]) for g, group in enumerate(groups) for n in group}}
    payload = json.dumps(index, indent=2, sort_keys=True).encode()
    return replace_all([(f, (lambda fh, g=g: _write_file(fh, g, meta))) for f, g in zip(names, groups)]
                       + [(stem + ".safetensors.index.json", lambda fh: fh.write(payload))], durable)


def _string_metadata(metadata: Any) -> Dict[str, str]:
    """The ``__metadata__`` to write: safetensors metadata a bundle carried
    through a conversion comes back as it was; other metadata is not
    strings and stays behind."""
    if isinstance(metadata, dict) and metadata.get("converted_from") == "safetensors":
        metadata = metadata.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}


def split_shards(tensors: Dict[str, LazyTensor], n: int) -> List[Dict[str, LazyTensor]]:
    """``n`` contiguous runs of about equal bytes, in order, none empty (a
    tensor goes where its middle byte falls; never skipping a shard, never
    leaving the later ones without tensors)."""
    if len(tensors) < n:
        raise InvalidArgumentError(f"cannot cut {len(tensors)} tensor(s) into {n} safetensors shards")
    total = sum(t.nbytes for t in tensors.values()) or 1
    groups: List[Dict[str, LazyTensor]] = [{} for _ in range(n)]
    at = g = 0
    for k, (name, t) in enumerate(tensors.items()):
        if k:
            want = min(n - 1, (2 * at + t.nbytes) * n // (2 * total))
            g = max(min(max(g, want), g + 1), n - (len(tensors) - k))
        groups[g][name] = t
        at += t.nbytes
    return groups


def _write_file(fh: Any, tensors: Dict[str, LazyTensor], meta: Dict[str, str]) -> None:
    header: Dict[str, Any] = {"__metadata__": meta} if meta else {}
    at = 0
    for name, t in tensors.items():
        header[name] = {"dtype": _tables()[1][t.dtype], "shape": list(t.shape), "data_offsets": [at, at + t.nbytes]}
        at += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data 8-aligned, as the library writes it
    fh.write(struct.pack("<Q", len(text)) + text)
    fh.flush()
    write_at(fh.fileno(), 8 + len(text), list(tensors.values()))
