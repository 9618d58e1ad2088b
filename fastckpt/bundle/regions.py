"""Reading a region of a tensor: any box of any tensor, whole or partitioned,
from the stored entries that intersect it -- what a resharded restore and
``CheckpointReader.get_slice`` do.

A stored entry's CRC32C covers the entry whole. With ``verify=True`` (the
default) an entry the region covers only in part is read whole and checked,
then the intersection is copied out; with ``verify=False`` only the byte
runs the region needs are read (one run per row of the intersection, or
fewer where it spans whole trailing dimensions), without a check.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from fastckpt import _core
from fastckpt.bundle.compressed import restore_frame
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, numpy_dtype
from fastckpt.errors import DataLossError, InvalidArgumentError, UnsupportedError
from fastckpt.bundle.files import Handle, read_range
from fastckpt.bundle.readplan import find_entry, name_of

__all__ = ["read_region", "TensorSlice"]

Box = Tuple[Tuple[int, ...], Tuple[int, ...]]  # (start, length) per dimension


def _check_box(name: str, shape: Tuple[int, ...], start: Sequence[int], length: Sequence[int]) -> Box:
    st, ln = tuple(int(x) for x in start), tuple(int(x) for x in length)
    if len(st) != len(shape) or len(ln) != len(shape):
        raise InvalidArgumentError(f"tensor {name!r} has rank {len(shape)}: offset {list(st)} and shape {list(ln)} "
                                   "must have as many dimensions")
    for d, (s, n, g) in enumerate(zip(st, ln, shape)):
        if s < 0 or n < 0 or s + n > g:
            raise InvalidArgumentError(f"tensor {name!r} of shape {list(shape)}: dimension {d}: "
                                       f"[{s}, {s + n}) is outside [0, {g})")
    return st, ln


def read_region(reader: Any, name: str, start: Sequence[int], length: Sequence[int],
                out: Optional[np.ndarray] = None, *, verify: Optional[bool] = None) -> np.ndarray:
    """The box ``start`` + ``length`` of tensor ``name`` (into ``out`` when
    given: shape and dtype must match), from the entries that intersect it."""
    key, entry = find_entry(reader.index, reader.prefix, name)
    text = name_of(key)
    if entry.dtype == DT_VARIANT:
        raise UnsupportedError(f"tensor {text!r} is a DT_VARIANT tensor, which fastckpt does not read")
    st, ln = _check_box(text, entry.shape, start, length)
    npdt = numpy_dtype(entry.dtype)
    if out is None:
        out = np.empty(ln, npdt)
    elif out.shape != ln or out.dtype.newbyteorder("=") != npdt.newbyteorder("="):
        raise InvalidArgumentError(f"tensor {text!r}: region is {npdt} {list(ln)}, out is {out.dtype} {list(out.shape)}")
    check = reader.verifies if verify is None else bool(verify)
    if entry.dtype == DT_STRING:  # variable-length: read whole, then cut
        full = reader.get_tensor(text)
        out[...] = full[tuple(slice(s, s + n) for s, n in zip(st, ln))]
        return out
    if entry.slices:
        parts = [(tuple((r.start, r.stop - r.start) for r in region), e)
                 for region, e in reader.slice_parts(text, key, entry.dtype, entry.shape, entry.slices)]
    else:
        parts = [(tuple((0, g) for g in entry.shape), entry)]
    for box, e in parts:
        _copy_part(reader, text, (st, ln), box, e, npdt, out, check)
    return out


def _copy_part(reader: Any, name: str, want: Box, box: Tuple[Tuple[int, int], ...], e: Any,
               npdt: np.dtype, out: np.ndarray, verify: bool) -> None:
    """Copy the intersection of the wanted box with one stored entry."""
    lo = [max(w, b) for w, (b, _) in zip(want[0], box)]
    hi = [min(w + n, b + m) for w, n, (b, m) in zip(want[0], want[1], box)]
    if any(h <= l for l, h in zip(lo, hi)) and len(box):
        return
    stored = tuple(m for _, m in box)
    local = tuple(l - b for l, (b, _) in zip(lo, box))
    inter = tuple(h - l for l, h in zip(lo, hi))
    dest = tuple(slice(l - w, h - w) for l, h, w in zip(lo, hi, want[0]))
    fd = reader.files.check_range(name, e.shard, e.offset, e.size)
    what = f"{reader.files.path(e.shard)}: tensor {name!r}"
    if verify or inter == stored:
        direct = inter == stored == out.shape and out.flags.c_contiguous and out.flags.writeable
        whole = out if direct else np.empty(stored, npdt)  # the region is this entry: read straight into out
        crc: Optional[int] = None
        if verify:
            if e.crc is None:
                raise DataLossError(f"{what}: the index entry has no checksum")
            crc = _core.unmask_crc(e.crc)
        if reader.index.compressed:
            if whole.size:
                restore_frame(fd, e.offset, e.size, whole.reshape(-1).view(np.uint8), npdt.itemsize, reader.threads,
                              crc, what)
        else:
            reader.files.read_many([fd], [e.offset], [whole], [crc], 1, lambda i: what)
        if not direct:
            out[dest] = whole[tuple(slice(l, l + n) for l, n in zip(local, inter))]
        return
    starts, run = _runs(stored, local, inter)
    if reader.index.compressed:
        out[dest] = _restore_runs(fd, e, stored, starts, run, inter, npdt, what)
        return
    if reader.files.remote:  # one ranged read of the span the runs lie in, not one request per run
        first, end = int(starts.min()), int(starts.max()) + run
        span = np.empty(end - first, npdt)
        reader.files.read_many([fd], [e.offset + first * npdt.itemsize], [span], None, reader.threads,
                               lambda i: what)
        picks = (starts - first)[:, None] + np.arange(run)[None, :]
        out[dest] = span[picks.reshape(-1)].reshape(inter)
        return
    tmp = np.empty(inter, npdt)
    flat = tmp.reshape(-1)
    offsets = (e.offset + starts * npdt.itemsize).tolist()
    buffers: List[Any] = [flat[i * run:(i + 1) * run] for i in range(len(offsets))]
    reader.files.read_many([fd] * len(offsets), offsets, buffers, None, reader.threads, lambda i: what)
    out[dest] = tmp


def _restore_runs(fd: Handle, e: Any, stored: Tuple[int, ...], starts: np.ndarray, run: int,
                  inter: Tuple[int, ...], npdt: np.dtype, what: str) -> np.ndarray:
    """The runs of a compressed entry, from only the chunks that hold them:
    the frame's header and chunk table, then those chunks' stored bytes."""
    item = npdt.itemsize
    raw_len = math.prod(stored) * item
    head = read_range(fd, e.offset, min(e.size, _core.ZFRAME_HEADER), what)
    n_chunks = int.from_bytes(bytes(head[20:24]), "little") if len(head) >= 24 else 0
    head = read_range(fd, e.offset, min(e.size, _core.ZFRAME_HEADER + 4 * n_chunks), what)
    chunk_raw, words, first = _core.zframe_table(bytes(head), e.size, raw_len, item, what)
    lo, hi = int(starts.min()) * item, (int(starts.max()) + run) * item
    c0, c1 = lo // chunk_raw, (hi - 1) // chunk_raw
    spans = [w & 0x7FFFFFFF for w in words]
    at = first + sum(spans[:c0])
    stored_bytes = read_range(fd, e.offset + at, sum(spans[c0:c1 + 1]), what)
    raw = np.empty((c1 - c0 + 1) * chunk_raw, np.uint8)
    pos = 0
    for c in range(c0, c1 + 1):
        length = min(chunk_raw, raw_len - c * chunk_raw)
        _core.zchunk_decode(memoryview(stored_bytes)[pos:pos + spans[c]], words[c],
                            raw[(c - c0) * chunk_raw:(c - c0) * chunk_raw + length], item, what)
        pos += spans[c]
    elements = raw.view(npdt) if raw.size % item == 0 else raw[: raw.size - raw.size % item].view(npdt)
    base = c0 * chunk_raw // item
    picks = (starts - base)[:, None] + np.arange(run)[None, :]
    return elements[picks.reshape(-1)].reshape(inter)


def _runs(stored: Tuple[int, ...], local: Tuple[int, ...], inter: Tuple[int, ...]) -> Tuple[np.ndarray, int]:
    """The box ``local`` + ``inter`` of a C-order array of shape ``stored``
    as runs of contiguous elements: each run's first element, and the run
    length (one run per row of the box, fewer where it spans whole trailing
    dimensions)."""
    rank = len(stored)
    k = rank - 1
    while k > 0 and local[k] == 0 and inter[k] == stored[k]:
        k -= 1  # trailing dimensions spanned whole merge into one run
    strides = [int(np.prod(stored[d + 1:], dtype=np.int64)) for d in range(rank)]
    run = inter[k] * strides[k]
    if k == 0:
        starts = np.array([local[0] * strides[0]], np.int64)
    else:
        grid = np.indices(inter[:k]).reshape(k, -1).T + np.array(local[:k], np.int64)
        starts = grid @ np.array(strides[:k], np.int64) + local[k] * strides[k]
    return starts, run


class TensorSlice:
    """A tensor of a checkpoint, read by numpy-style indexing without
    reading the rest (as safetensors' ``get_slice``): ``reader.get_slice(
    "emb")[1000:2000, :]``. Indices are ints and slices with step 1."""

    def __init__(self, reader: Any, name: str) -> None:
        key, entry = find_entry(reader.index, reader.prefix, name)
        self._reader, self._name = reader, name_of(key)
        self.shape: Tuple[int, ...] = tuple(entry.shape)
        self.dtype: np.dtype = numpy_dtype(entry.dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > len(self.shape):
            raise InvalidArgumentError(f"too many indices for tensor {self._name!r} of rank {len(self.shape)}")
        starts, lengths, drop = [], [], []
        for d, g in enumerate(self.shape):
            i = idx[d] if d < len(idx) else slice(None)
            if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
                j = int(i) + g if i < 0 else int(i)
                if not 0 <= j < g:
                    raise InvalidArgumentError(f"index {i} is out of bounds for dimension {d} of size {g}")
                starts.append(j)
                lengths.append(1)
                drop.append(d)
            elif isinstance(i, slice):
                a, b, step = i.indices(g)
                if step != 1:
                    raise InvalidArgumentError("slices with a step are not supported; slice the result")
                starts.append(a)
                lengths.append(max(0, b - a))
            else:
                raise InvalidArgumentError(f"index {i!r}: only ints and slices are supported")
        arr = read_region(self._reader, self._name, starts, lengths)
        return arr.reshape([n for d, n in enumerate(lengths) if d not in drop]) if drop else arr

    def __repr__(self) -> str:
        return f"<TensorSlice {self._name!r} {self.dtype} {list(self.shape)}>"
