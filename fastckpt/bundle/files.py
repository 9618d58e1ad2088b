"""The data files of one bundle: descriptors, sizes, memory maps, range
checks and checksums read with ``pread`` -- one home for the reader and
``verify`` alike. A bundle in an object store has :class:`ObjectDataFiles`
instead, whose handles (:class:`RemoteFile`) read by ranged GETs of the
object versions the index was opened with; every function here that takes
a descriptor takes such a handle too."""

from __future__ import annotations

import errno
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union, cast

import numpy as np

from fastckpt import _core
from fastckpt.errors import CheckpointError, CheckpointIOError, ConflictError, DataLossError, NotFoundError
from fastckpt.storage.locking import lock_for_reading, open_regular
from fastckpt.bundle.naming import data_filename
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import PART_BYTES, PARTS_IN_FLIGHT, ObjectInfo

__all__ = ["DataFiles", "ObjectDataFiles", "RemoteFile", "Handle", "crc32c_of_range", "read_range", "pread_into"]

_CHUNK = 8 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A data object as the reader opened it: URL, size, and the ETag of
    that version (a ranged read of any other version fails)."""

    url: str
    size: int
    etag: str
    storage: Any

    def pread_into(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from ``offset`` (fewer bytes at the object's end)."""
        n = max(0, min(view.nbytes, self.size - offset))
        if n:
            self.read_segments([(offset, view[:n])])
        return n

    def read_segments(self, segments: List[Tuple[int, memoryview]]) -> None:
        """Fill each ``(offset, view)`` (in order, inside the object) by one request."""
        if segments:
            try:
                self.storage.read_segments(self.url, segments, self.etag)
            except ConflictError:  # (what was opened is gone: the reading functions find the checkpoint again)
                raise NotFoundError(f"{self.url} was replaced while the checkpoint was being read "
                                    "(a save rewrote it): read the checkpoint again") from None
            except FileNotFoundError:
                raise NotFoundError(f"{self.url} was deleted while the checkpoint was being read "
                                    "(retention, or a save replacing it)") from None
            except OSError as e:
                raise CheckpointIOError(e.errno or errno.EIO, f"cannot read {self.url}: {e.strerror or e}",
                                        self.url) from e


Handle = Union[int, RemoteFile]


def pread_into(handle: Handle, view: memoryview, offset: int) -> int:
    """``pread`` into ``view`` from a local descriptor or a data object."""
    if isinstance(handle, RemoteFile):
        return handle.pread_into(view, offset)
    return local.pread_into(handle, view, offset)


def crc32c_of_range(fd: Handle, offset: int, size: int, what: str) -> int:
    """CRC32C of a file's bytes read by ``pread`` in chunks (constant memory;
    a file that shrank gives :class:`DataLossError`, never a signal)."""
    crc = 0
    buf = bytearray(min(size, _CHUNK))
    at = 0
    while at < size:
        n = min(len(buf), size - at)
        view = memoryview(buf)[:n]
        got = pread_into(fd, view, offset + at)
        if got <= 0:
            raise DataLossError(f"{what}: the file ends at byte {offset + at}, before the tensor's end "
                                f"{offset + size} (truncated while being read?)")
        crc = _core.crc32c(view[:got], crc)
        at += got
    return crc


def read_range(fd: Handle, offset: int, size: int, what: str) -> bytearray:
    """``size`` bytes at ``offset``, read with ``pread``."""
    out = bytearray(size)
    at = 0
    while at < size:
        got = pread_into(fd, memoryview(out)[at:], offset + at)
        if got <= 0:
            raise DataLossError(f"{what}: the file ends before the tensor's end (truncated while being read?)")
        at += got
    return out


class DataFiles:
    """The ``num_shards`` data files of the bundle ``prefix``, each opened on
    first use (or all at once with :meth:`open_all`) and kept open, so what
    was opened stays one generation even if the checkpoint is replaced."""

    remote = False

    def __init__(self, prefix: str, num_shards: int) -> None:
        self.prefix = prefix
        self.num_shards = num_shards
        self._fds: Dict[int, int] = {}
        self._sizes: Dict[int, int] = {}
        self._maps: Dict[int, Optional[mmap.mmap]] = {}

    def path(self, shard: int) -> str:
        """``PREFIX.data-SSSSS-of-NNNNN``."""
        return data_filename(self.prefix, shard, self.num_shards)

    def open(self, shard: int) -> Tuple[int, int]:
        """(descriptor, size) of a data file; :class:`NotFoundError` when it is
        missing, :class:`DataLossError` when it is not a regular file."""
        if shard not in self._fds:
            path = self.path(shard)
            try:
                fd = open_regular(path)
            except FileNotFoundError:
                raise NotFoundError(f"data file {path} of checkpoint {self.prefix!r} is missing") from None
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.EISDIR):
                    raise DataLossError(f"data file {path} of checkpoint {self.prefix!r} is not a regular file") \
                        from None
                raise CheckpointIOError(e.errno or 0, f"cannot open {path}: {e.strerror}", path) from e
            if not lock_for_reading(fd):
                local.close(fd)
                raise NotFoundError(f"data file {path} of checkpoint {self.prefix!r} is being rewritten by a save "
                                    "that recycles it (the checkpoint was retired)")
            self._fds[shard] = fd
            self._sizes[shard] = local.fd_size(fd)
        return self._fds[shard], self._sizes[shard]

    def open_all(self) -> None:
        """Open every data file now; a missing one is reported when used."""
        for shard in range(self.num_shards):
            try:
                self.open(shard)
            except CheckpointError:
                pass

    def check_range(self, name: str, shard: int, offset: int, size: int, fresh: bool = False) -> int:
        """The shard's descriptor, after checking that the tensor's bytes lie
        inside the file (as it is now, with ``fresh``: a file that shrank is
        caught here)."""
        fd, file_size = self.open(shard)
        if fresh:
            file_size = local.fd_size(fd)
        if offset + size > file_size:
            raise DataLossError(
                f"{self.path(shard)}: tensor {name!r} needs bytes {offset}..{offset + size} "
                f"but the file has {file_size} bytes (truncated?)")
        return fd

    def mapping(self, shard: int) -> Optional[mmap.mmap]:
        """A read-only map of the whole file (None for an empty one)."""
        if shard not in self._maps:
            fd, size = self.open(shard)
            try:
                self._maps[shard] = local.map_read(fd, size) if size else None
            except ValueError:  # the file shrank since it was opened
                raise DataLossError(f"{self.path(shard)}: the file is shorter than when it was opened "
                                    f"({local.fd_size(fd)} < {size} bytes): it was truncated") from None
        return self._maps[shard]

    def missing(self) -> Tuple[int, Set[int]]:
        """(how many data files are missing, which -- all of them when there
        are up to 65,536 shards, else the first), from one directory listing
        however many shards the header claims."""
        n = self.num_shards
        directory = os.path.dirname(self.prefix) or "."
        pattern = re.compile(re.escape(os.path.basename(self.prefix)) + r"\.data-(\d{5,})-of-" + f"{n:05d}" + r"\Z")
        try:
            present = {int(m.group(1)) for m in map(pattern.match, fs.listdir(directory)) if m}
        except OSError:
            present = set()
        count = n - len({s for s in present if s < n})
        if not count:
            return 0, set()
        if n <= 1 << 16:
            return count, set(range(n)) - present
        return count, {next(s for s in range(n) if s not in present)}

    def close(self) -> None:
        """Close the files and maps. Views already handed out stay valid
        (their map closes when the last one is gone)."""
        maps, self._maps = self._maps, {}
        for m in maps.values():
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass  # views exist: the map lives until they are gone
        fds, self._fds = self._fds, {}
        self._sizes = {}
        for fd in fds.values():
            try:
                local.close(fd)
            except OSError:
                pass

    def read_many(self, fds: Sequence[Handle], offsets: Sequence[int], buffers: Sequence[Any],
                  crcs: Optional[Sequence[Optional[int]]], threads: int, describe: Callable[[int], str]) -> None:
        """Fill every buffer from its descriptor at its offset, in parallel
        (checking the CRC32C of those with a ``crcs`` entry)."""
        _core.io_run(cast(List[int], list(fds)), list(offsets), list(buffers), None if crcs is None else list(crcs), write=False,
                     threads=threads, describe=describe)

    def descriptors(self) -> Optional[Tuple[list, list]]:
        """(descriptors, sizes) of every shard, opening them all; None if one
        cannot be opened (the caller takes a path that reports it)."""
        fds, sizes = [], []
        try:
            for shard in range(self.num_shards):
                fd, size = self.open(shard)
                fds.append(fd)
                sizes.append(size)
        except CheckpointError:
            return None
        return fds, sizes


class ObjectDataFiles:
    """The data objects of a bundle in an object store, as listed when its
    index was read (one generation: each read names the object version it
    listed). The reader's interface of :class:`DataFiles`; reads are ranged
    GETs in parallel (:meth:`read_many`), no maps, no descriptors."""

    remote = True

    def __init__(self, prefix: str, num_shards: int, objects: Dict[int, ObjectInfo], storage: Any) -> None:
        self.prefix = prefix
        self.num_shards = num_shards
        self._objects = objects
        self._storage = storage

    def path(self, shard: int) -> str:
        """``PREFIX.data-SSSSS-of-NNNNN``."""
        return data_filename(self.prefix, shard, self.num_shards)

    def open(self, shard: int) -> Tuple[RemoteFile, int]:
        """(handle, size) of a data object; :class:`NotFoundError` when missing."""
        info = self._objects.get(shard)
        if info is None:
            raise NotFoundError(f"data file {self.path(shard)} of checkpoint {self.prefix!r} is missing")
        return RemoteFile(info.url, info.size, info.etag, self._storage), info.size

    def open_all(self) -> None:
        """Nothing to open: the objects were listed with the index."""

    def check_range(self, name: str, shard: int, offset: int, size: int, fresh: bool = False) -> RemoteFile:
        """The object's handle, after checking that the tensor's bytes lie inside it."""
        handle, file_size = self.open(shard)
        if offset + size > file_size:
            raise DataLossError(
                f"{self.path(shard)}: tensor {name!r} needs bytes {offset}..{offset + size} "
                f"but the object has {file_size} bytes (truncated?)")
        return handle

    def mapping(self, shard: int) -> None:
        """Objects are not mapped."""
        return None

    def missing(self) -> Tuple[int, Set[int]]:
        """(how many data objects are missing, which)."""
        gone = {s for s in range(self.num_shards) if s not in self._objects} if self.num_shards <= 1 << 16 else set()
        count = self.num_shards - len([s for s in self._objects if s < self.num_shards])
        return count, gone if count else set()

    def close(self) -> None:
        """Nothing is held open."""

    def descriptors(self) -> None:
        """No descriptors: the C read planner is for local files."""
        return None

    def read_many(self, handles: Sequence[Handle], offsets: Sequence[int], buffers: Sequence[Any],
                  crcs: Optional[Sequence[Optional[int]]], threads: int, describe: Callable[[int], str]) -> None:
        """Fill every buffer from its handle at its offset: ranged GETs of
        at most ``PART_BYTES``, ``PARTS_IN_FLIGHT`` at once, straight into
        the buffers; each buffer whose ``crcs`` entry is set has its
        CRC32C checked (pieces checksummed as they land, then combined)."""
        part = int(getattr(self._storage, "part_bytes", PART_BYTES))
        pieces: List[Tuple[RemoteFile, int, int, int, memoryview]] = []  # (object, offset, buffer, start, view)
        views = []
        for i, buf in enumerate(buffers):
            flat: Any = buf.reshape(-1).view(np.uint8) if isinstance(buf, np.ndarray) else buf
            view = memoryview(flat).cast("B")
            views.append(view)
            handle = handles[i]
            if not isinstance(handle, RemoteFile):
                raise TypeError("object data files read through RemoteFile handles")
            if offsets[i] + view.nbytes > handle.size:
                raise DataLossError(f"{describe(i)}: the object ends before the tensor's end")
            for start in range(0, view.nbytes, part):
                pieces.append((handle, offsets[i] + start, i, start, view[start:start + part]))
        # neighbouring pieces of one object share a request (up to a part's bytes, gaps under 64 KiB)
        pieces.sort(key=lambda p: (p[0].url, p[1]))
        tasks: List[List[Tuple[RemoteFile, int, int, int, memoryview]]] = []
        for p in pieces:
            last = tasks[-1] if tasks else None
            if last is not None and last[-1][0].url == p[0].url and 0 <= p[1] - (last[-1][1] + last[-1][4].nbytes) \
                    <= 1 << 16 and p[1] + p[4].nbytes - last[0][1] <= part:
                last.append(p)
            else:
                tasks.append([p])
        piece_crcs: Dict[Tuple[int, int], int] = {}
        if crcs is None:
            crcs = [None] * len(buffers)

        def fetch(task: List[Tuple[RemoteFile, int, int, int, memoryview]]) -> None:
            task[0][0].read_segments([(offset, view) for _, offset, _, _, view in task])
            for _, _, i, start, view in task:
                if crcs[i] is not None:  # type: ignore[index]
                    piece_crcs[(i, start)] = _core.crc32c(view)

        if len(tasks) == 1:
            fetch(tasks[0])
        elif tasks:
            in_flight = int(getattr(self._storage, "parts_in_flight", PARTS_IN_FLIGHT))
            with ThreadPoolExecutor(max_workers=max(1, min(in_flight, len(tasks))),
                                    thread_name_prefix="fastckpt-get") as pool:
                for _ in pool.map(fetch, tasks):
                    pass
        for i, view in enumerate(views):
            expected = crcs[i]
            if expected is None:
                continue
            crc = 0
            for start in range(0, view.nbytes, part):
                piece = piece_crcs[(i, start)]
                crc = piece if start == 0 else _core.crc32c_combine(crc, piece, min(part, view.nbytes - start))
            if crc != expected:
                raise DataLossError(f"{describe(i)}: checksum does not match: stored {_core.mask_crc(expected)} "
                                    f"vs. calculated {_core.mask_crc(crc)}")
