"""The general read path: tensors the C read planner leaves over (strings,
partitioned tensors, big-endian bundles, ``into`` arrays that do not fit),
each checked against the files before anything is allocated, then read in
one parallel ``io_run`` and finished (decoded, assembled, converted)."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, MutableMapping, Optional, Tuple, Union

import numpy as np

from fastckpt import _core
from fastckpt.bundle.compressed import check_claim, restore_frame
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, dtype_name, numpy_dtype
from fastckpt.errors import DataLossError, InvalidArgumentError, TensorNotFoundError, UnsupportedError
from fastckpt.bundle.files import DataFiles, Handle, ObjectDataFiles
from fastckpt.bundle.records import Extent, IndexEntry
from fastckpt.bundle.slices import encode_slice_key, first_overlap, slice_region, slice_shape

__all__ = ["ReadPlan", "find_entry", "name_of", "advise_willneed"]


def name_of(key: bytes) -> str:
    """A tensor key as text (undecodable bytes kept as surrogates)."""
    return key.decode("utf-8", "surrogateescape")


def _key_of(name: Union[str, bytes]) -> bytes:
    if isinstance(name, bytes):
        return name
    if not isinstance(name, str):
        raise InvalidArgumentError(f"tensor names are str, got {type(name).__name__}: {name!r}")
    return name.encode("utf-8", "surrogateescape")


def find_entry(index: "_core.Index", prefix: str, name: Union[str, bytes]) -> Tuple[bytes, IndexEntry]:
    """(key, entry) of tensor ``name``; :class:`TensorNotFoundError` if absent."""
    key = _key_of(name)
    i = index.find(key) if key and key[0] != 0 else -1
    if i < 0:
        raise TensorNotFoundError(f"Key {name_of(key)} not found in checkpoint {prefix}{_did_you_mean(index, key)}")
    return key, index.entry(i)


def _did_you_mean(index: "_core.Index", key: bytes) -> str:
    """``"; did you mean 'a/b', 'a/c'?"`` from the closest tensor names."""
    import difflib

    names = [name_of(k) for k in index.keys() if k[:1] != b"\x00"]
    if len(names) > 100_000:
        return ""
    close = difflib.get_close_matches(name_of(key), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class _Pending:
    """Reads queued for one io_run, and what to do with each afterwards."""

    def __init__(self) -> None:
        self.fds: List[Handle] = []
        self.offsets: List[int] = []
        self.buffers: List[Any] = []
        self.crcs: List[Optional[int]] = []
        self.names: List[str] = []    # for error messages only
        self.shards: List[int] = []
        self.after: List[Any] = []


class ReadPlan:
    """Reads queued for one parallel ``io_run`` over a bundle's data files."""

    def __init__(self, index: "_core.Index", files: Union[DataFiles, ObjectDataFiles], prefix: str, verify: bool,
                 threads: int = 1) -> None:
        self._index, self._files, self._prefix, self._verify = index, files, prefix, verify
        self.threads = threads
        self.pending = _Pending()

    def run(self, threads: int) -> None:
        """Read everything queued, then finish each tensor."""
        pending, self.pending = self.pending, _Pending()
        try:
            if pending.buffers:
                describe = lambda i: f"{self._files.path(pending.shards[i])}: tensor {pending.names[i]!r}"  # noqa: E731
                if self._files.remote:
                    self._files.read_many(pending.fds, pending.offsets, pending.buffers, pending.crcs, threads,
                                          describe)
                else:  # (the kernel reads ahead while the threads copy)
                    _prefetch(pending)
                    self._files.read_many(pending.fds, pending.offsets, pending.buffers, pending.crcs, threads,
                                          describe)
            for finish in pending.after:
                finish()
        finally:
            # The finishing closures refer to the queue: without this, a
            # failed read's buffers live on in that cycle until the next
            # garbage collection (gigabytes for a large tensor).
            pending.__dict__.clear()

    def queue(self, name: str, out: Dict[str, Any], into: Optional[MutableMapping[str, Any]]) -> None:
        """Check tensor ``name`` and queue its read (into ``into[name]`` when
        given, else a new array put in ``out``)."""
        pending = self.pending
        key, (dtype, shape, shard, offset, size, crc, slices) = find_entry(self._index, self._prefix, name)
        if dtype == DT_VARIANT:
            raise UnsupportedError(f"tensor {name!r} is a DT_VARIANT tensor, which fastckpt does not read")
        npdt = numpy_dtype(dtype)
        # Every byte range is checked against the files before anything is allocated.
        parts = self.slice_parts(name, key, dtype, shape, slices) if slices else None
        fd = self._files.check_range(name, shard, offset, size) if parts is None else -1
        outname = name if isinstance(name, str) else name_of(key)
        if dtype == DT_STRING and parts is None and into is None:
            # the array is made from the decoded strings: nothing is sized
            # from the element count before the payload's checksums pass
            out[outname] = None
            self._queue_payload(name, dtype, shape, fd, shard, offset, size, crc, None, pending,
                                deliver=lambda arr: out.__setitem__(outname, arr))
            return
        if self._index.compressed and parts is None:
            check_claim(size, math.prod(shape) * npdt.itemsize, f"{self._files.path(shard)}: tensor {name!r}")
        target = self._target(name, shape, npdt, into)
        if parts is not None:
            for region, entry in parts:
                part = np.empty(entry.shape, npdt)
                sfd = self._files.check_range(name, entry.shard, entry.offset, entry.size)
                self._queue_payload(name, dtype, entry.shape, sfd, entry.shard, entry.offset, entry.size, entry.crc,
                                    part, pending)
                pending.after.append(lambda part=part, region=region: target.__setitem__(region, part))
        else:
            self._queue_payload(name, dtype, shape, fd, shard, offset, size, crc, target, pending)
        out[outname] = target

    def _target(self, name: str, shape: Tuple[int, ...], npdt: np.dtype,
                into: Optional[MutableMapping[str, Any]]) -> np.ndarray:
        if into is None or name not in into:
            if into is not None:
                raise InvalidArgumentError(f"into has no array for tensor {name!r}")
            return np.empty(shape, npdt)
        arr = into[name]
        if not isinstance(arr, np.ndarray):
            raise InvalidArgumentError(
                f"into[{name!r}] must be a numpy array, got {type(arr).__name__}")
        if tuple(arr.shape) != tuple(shape):
            raise InvalidArgumentError(
                f"tensor {name!r}: checkpoint shape {list(shape)} does not match into shape {list(arr.shape)}")
        if arr.dtype.newbyteorder("=") != npdt:
            raise InvalidArgumentError(
                f"tensor {name!r}: checkpoint dtype {npdt} does not match into dtype {arr.dtype}")
        if not arr.flags.writeable:
            raise InvalidArgumentError(f"into[{name!r}] is read-only")
        return arr

    def _queue_payload(self, name: str, dtype: int, shape: Tuple[int, ...], fd: Handle, shard: int,
                       offset: int, size: int, crc: Optional[int], target: Optional[np.ndarray],
                       pending: _Pending, deliver: Optional[Callable[[np.ndarray], None]] = None) -> None:
        if self._verify and crc is None:
            raise DataLossError(f"{self._files.path(shard)}: tensor {name!r}: the index entry has no checksum")
        big = self._index.big_endian
        if dtype == DT_STRING:
            buf = bytearray(size)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            label = f"{self._files.path(shard)}: tensor {name!r}"

            def finish_strings() -> None:
                items = _core.decode_strings(buf, count, crc or 0, self._verify, big, label)
                flat = np.empty(len(items), dtype=object)
                flat[:] = items
                if target is None:
                    assert deliver is not None
                    deliver(flat.reshape(shape))
                else:
                    target[...] = flat.reshape(shape)

            # the string decoder checks the entry CRC, which is not the payload's
            self._add(pending, name, shard, fd, offset, buf, None)
            pending.after.append(finish_strings)
            return
        assert target is not None
        expected = _core.unmask_crc(crc) if (self._verify and crc is not None) else None
        if self._index.compressed:
            self._queue_frame(name, shard, fd, offset, size, expected, target, pending)
            return
        if not big and target.flags.c_contiguous and target.dtype.byteorder in "=|<":
            self._add(pending, name, shard, fd, offset, target, expected)
            return
        dest = np.empty(shape, target.dtype.newbyteorder("="))

        def finish_fixed() -> None:
            if big:
                dest.byteswap(inplace=True)
            if dest is not target:
                np.copyto(target, dest, casting="unsafe")

        self._add(pending, name, shard, fd, offset, dest, expected)
        pending.after.append(finish_fixed)

    def _queue_frame(self, name: str, shard: int, fd: Handle, offset: int, size: int, expected: Optional[int],
                     target: np.ndarray, pending: _Pending) -> None:
        """A compressed payload: after the other reads, restored into the
        target window by window (``compressed.restore_frame``), its raw CRC
        checked."""
        if not target.nbytes:
            return
        what = f"{self._files.path(shard)}: tensor {name!r}"

        def finish() -> None:
            dest = target if target.flags.c_contiguous and target.dtype.byteorder in "=|<" else \
                np.empty(target.shape, target.dtype.newbyteorder("="))
            restore_frame(fd, offset, size, dest.reshape(-1).view(np.uint8), dest.dtype.itemsize, self.threads,
                          expected, what)
            if dest is not target:
                np.copyto(target, dest, casting="unsafe")

        pending.after.append(finish)

    @staticmethod
    def _add(p: _Pending, name: str, shard: int, fd: Handle, offset: int, buf: Any, crc: Optional[int]) -> None:
        p.fds.append(fd)
        p.offsets.append(offset)
        p.buffers.append(buf)
        p.crcs.append(crc)
        p.names.append(name)
        p.shards.append(shard)

    def slice_parts(self, name: str, key: bytes, dtype: int, shape: Tuple[int, ...],
                    slices: List[Tuple[Extent, ...]]) -> List[Tuple[Tuple[slice, ...], IndexEntry]]:
        """The slice entries of a partitioned tensor, checked: they tile the
        shape, match its dtype, and lie inside their data files."""
        _check_coverage(name, shape, slices)
        parts = []
        for extents in slices:
            i = self._index.find(encode_slice_key(key, extents))
            if i < 0:
                raise DataLossError(f"{self._prefix}: slice {list(extents)} of tensor {name!r} is missing")
            entry = self._index.entry(i)
            sdtype, sshape, shard, offset, size, _, sub = entry
            want = slice_shape(extents, shape)
            if sdtype != dtype or tuple(sshape) != want or sub:
                raise DataLossError(
                    f"{self._prefix}: slice {list(extents)} of tensor {name!r} has dtype "
                    f"{dtype_name(sdtype)} shape {list(sshape)}, expected {dtype_name(dtype)} {list(want)}")
            self._files.check_range(name, shard, offset, size)
            parts.append((slice_region(extents, shape), entry))
        return parts


def _prefetch(pending: _Pending) -> None:
    """Ask the kernel to read ahead each file's requested span at once, so
    cold reads stream at disk speed while the threads copy and checksum
    (a no-op for pages already cached)."""
    spans: Dict[int, List[int]] = {}
    for fd, off, buf in zip(pending.fds, pending.offsets, pending.buffers):
        if not isinstance(fd, int):
            continue
        end = off + memoryview(buf).nbytes if not isinstance(buf, np.ndarray) else off + buf.nbytes
        lo_hi = spans.setdefault(fd, [off, end])
        lo_hi[0] = min(lo_hi[0], off)
        lo_hi[1] = max(lo_hi[1], end)
    for fd, (lo, hi) in spans.items():
        advise_willneed(fd, lo, hi - lo)


def advise_willneed(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to read ``length`` bytes at ``offset`` ahead."""
    if length > 0 and hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def _check_coverage(name: str, shape: Tuple[int, ...], slices: List[Tuple[Extent, ...]]) -> None:
    """The slices must tile the tensor exactly: no gap (uninitialised
    memory) and no overlap."""
    total = math.prod(shape)
    boxes = [(tuple(0 if ln < 0 else st for st, ln in ext),
              tuple(d if ln < 0 else st + ln for (st, ln), d in zip(ext, shape))) for ext in slices]
    volume = sum(math.prod(hi - lo for lo, hi in zip(*b)) for b in boxes)
    nonempty = [b for b in boxes if all(hi > lo for lo, hi in zip(*b))]
    if first_overlap(nonempty) is not None:
        raise DataLossError(f"partitioned tensor {name!r} has overlapping slices")
    if volume != total:
        raise DataLossError(f"the slices of partitioned tensor {name!r} do not cover its shape {list(shape)}")
