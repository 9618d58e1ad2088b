"""Partitioned tensors: TensorFlow's slice keys ("OrderedCode") and slice
geometry. A partitioned tensor has a full entry listing its slices; each
slice is stored under ``EncodeTensorNameSlice(name, slice)``."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from fastckpt.errors import InvalidArgumentError
from fastckpt.bundle.records import Extent

__all__ = ["encode_slice_key", "decode_slice_key", "slice_region", "Extent", "Shard", "SliceKey", "first_overlap"]

_SIGNED_HEADERS = {2: 0xC000, 3: 0xE000, 4: 0xF000, 5: 0xF800, 6: 0xFC00,
                   7: 0xFE00, 8: 0xFF00, 9: 0xFF80, 10: 0xFFC0}


def _num_increasing(u: int) -> bytes:
    body = u.to_bytes((u.bit_length() + 7) // 8, "big") if u else b""
    return bytes([len(body)]) + body


def _string(s: bytes) -> bytes:
    if b"\x00" not in s and b"\xff" not in s:  # the common case: nothing to escape
        return s + b"\x00\x01"
    out = bytearray()
    for b in s:
        out += b"\x00\xff" if b == 0 else b"\xff\x00" if b == 0xFF else bytes([b])
    return bytes(out) + b"\x00\x01"


def signed_num_increasing(v: int) -> bytes:
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    n = x.bit_length() // 7 + 1
    if n > 10:
        raise ValueError(f"{v} is out of range for a slice key")
    raw = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big")[10 - n:])
    header = _SIGNED_HEADERS[n]
    raw[0] ^= header >> 8
    raw[1] ^= header & 0xFF
    return bytes(raw)


def encode_slice_key(name: bytes, extents: Sequence[Extent]) -> bytes:
    """The index key under which a slice of tensor ``name`` is stored."""
    out = [_num_increasing(0), _string(name), _num_increasing(len(extents))]
    for start, length in extents:
        out.append(signed_num_increasing(start))
        out.append(signed_num_increasing(length))
    return b"".join(out)


def _read_num_increasing(key: bytes, pos: int) -> Tuple[int, int]:
    n = key[pos]
    if n > 8 or pos + 1 + n > len(key):
        raise ValueError("corrupt slice key")
    return int.from_bytes(key[pos + 1: pos + 1 + n], "big"), pos + 1 + n


def _read_signed(key: bytes, pos: int) -> Tuple[int, int]:
    if pos >= len(key):
        raise ValueError("corrupt slice key")
    b0 = key[pos]
    if 0x40 <= b0 < 0xC0:
        return (b0 ^ 0x80) - (256 if (b0 ^ 0x80) >= 128 else 0), pos + 1
    # Wider forms: the encoding is unique, so decode each width and keep
    # the one that re-encodes to the same bytes.
    for n in range(2, 11):
        chunk = key[pos: pos + n]
        if len(chunk) < n:
            break
        raw = bytearray(chunk)
        header = _SIGNED_HEADERS[n]
        raw[0] ^= header >> 8
        raw[1] ^= header & 0xFF
        v = int.from_bytes(raw, "big")
        if b0 < 0x80:  # negative: sign-extend
            v -= 1 << (8 * n)
        if signed_num_increasing(v) == chunk:
            return v, pos + n
    raise ValueError("corrupt slice key")


def decode_slice_key(key: bytes) -> Tuple[bytes, List[Extent]]:
    """Inverse of :func:`encode_slice_key` (raises ValueError if corrupt)."""
    zero, pos = _read_num_increasing(key, 0)
    if zero != 0:
        raise ValueError("not a slice key")
    name = bytearray()
    while True:
        if pos + 1 >= len(key):
            raise ValueError("corrupt slice key")
        b, c = key[pos], key[pos + 1]
        if b == 0x00 and c == 0x01:
            pos += 2
            break
        if b == 0x00 and c == 0xFF:
            name.append(0)
            pos += 2
        elif b == 0xFF and c == 0x00:
            name.append(0xFF)
            pos += 2
        else:
            name.append(b)
            pos += 1
    rank, pos = _read_num_increasing(key, pos)
    extents: List[Extent] = []
    for _ in range(rank):
        start, pos = _read_signed(key, pos)
        length, pos = _read_signed(key, pos)
        extents.append((start, length))
    if pos != len(key):
        raise ValueError("trailing bytes in slice key")
    return bytes(name), extents


def slice_region(extents: Sequence[Extent], shape: Sequence[int]) -> Tuple[slice, ...]:
    """numpy index of a slice inside the full tensor."""
    return tuple(slice(0, dim) if length < 0 else slice(start, start + length)
                 for (start, length), dim in zip(extents, shape))


def slice_shape(extents: Sequence[Extent], shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape of the stored slice."""
    return tuple(dim if length < 0 else length for (_, length), dim in zip(extents, shape))


def first_overlap(boxes: List[Tuple[Tuple[int, ...], Tuple[int, ...]]]) -> Optional[Tuple[int, int]]:
    """Two boxes (start, end) that intersect, or None. A sweep along the
    dimension the boxes are cut in most: sorted by their start there, a box
    can only meet those that start before it ends."""
    if len(boxes) < 2:
        return None
    rank = len(boxes[0][0])
    sweep = max(range(rank), key=lambda d: len({lo[d] for lo, _ in boxes})) if rank else 0
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0][sweep] if rank else 0)
    for a, i in enumerate(order):
        lo_i, hi_i = boxes[i]
        for j in order[a + 1:]:
            lo_j, hi_j = boxes[j]
            if rank and lo_j[sweep] >= hi_i[sweep]:
                break
            if all(lo_i[d] < hi_j[d] and lo_j[d] < hi_i[d] for d in range(len(lo_i))):
                return (i, j) if i < j else (j, i)
    return None


class SliceKey(bytes):
    """The index key of a stored slice (it starts with a NUL byte, which the
    writer refuses in tensor names): what a process's part of a partitioned
    tensor is written under."""


class Shard:
    """One process's part of a global tensor: ``local`` (a numpy array or a
    framework tensor) holds the region starting at ``offset`` of a tensor of
    shape ``global_shape``. Saved from several processes, the parts become
    one partitioned tensor of the checkpoint, stored as TensorFlow stores
    partitioned variables; restored into, ``local`` is filled in place with
    that region, whatever slicing the checkpoint was saved with."""

    __slots__ = ("local", "global_shape", "offset")

    def __init__(self, local: Any, global_shape: Sequence[int], offset: Sequence[int]) -> None:
        shape = tuple(int(d) for d in getattr(local, "shape", ()))
        gshape = tuple(_index(d, "global_shape") for d in global_shape)
        off = tuple(_index(o, "offset") for o in offset)
        if not len(shape) == len(gshape) == len(off):
            raise InvalidArgumentError(f"Shard: local shape {list(shape)}, global_shape {list(gshape)} and "
                                       f"offset {list(off)} must have the same rank")
        for d, (o, n, g) in enumerate(zip(off, shape, gshape)):
            if o + n > g:
                raise InvalidArgumentError(f"Shard: dimension {d}: offset {o} + local size {n} exceeds the "
                                           f"global size {g}")
        self.local, self.global_shape, self.offset = local, gshape, off

    @property
    def shape(self) -> Tuple[int, ...]:
        """The local part's shape."""
        return tuple(int(d) for d in self.local.shape)

    def extents(self) -> List[Extent]:
        """TensorFlow's extents of this part: ``(start, length)`` per
        dimension, ``(0, -1)`` where it spans the whole dimension."""
        return [(0, -1) if (o == 0 and n == g) else (o, n)
                for o, n, g in zip(self.offset, self.shape, self.global_shape)]

    def __repr__(self) -> str:
        return f"Shard(shape={list(self.shape)}, global_shape={list(self.global_shape)}, offset={list(self.offset)})"


def _index(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 0:
        raise InvalidArgumentError(f"Shard: {what} must hold non-negative ints, found {v!r}")
    return int(v)
