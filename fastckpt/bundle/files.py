"""The data files of one bundle: descriptors, sizes, memory maps, range
checks and checksums read with ``pread`` -- one home for the reader and
``verify`` alike."""

from __future__ import annotations

import errno
import mmap
import os
import re
from typing import Dict, Optional, Set, Tuple

from fastckpt import _core
from fastckpt.errors import CheckpointError, CheckpointIOError, DataLossError, NotFoundError
from fastckpt.storage.locking import lock_for_reading, open_regular
from fastckpt.bundle.naming import data_filename
from fastckpt.storage import fs, local

__all__ = ["DataFiles", "crc32c_of_range", "read_range"]

_CHUNK = 8 << 20


def crc32c_of_range(fd: int, offset: int, size: int, what: str) -> int:
    """CRC32C of a file's bytes read by ``pread`` in chunks (constant memory;
    a file that shrank gives :class:`DataLossError`, never a signal)."""
    crc = 0
    buf = bytearray(min(size, _CHUNK))
    at = 0
    while at < size:
        n = min(len(buf), size - at)
        view = memoryview(buf)[:n]
        got = local.pread_into(fd, view, offset + at)
        if got <= 0:
            raise DataLossError(f"{what}: the file ends at byte {offset + at}, before the tensor's end "
                                f"{offset + size} (truncated while being read?)")
        crc = _core.crc32c(view[:got], crc)
        at += got
    return crc


def read_range(fd: int, offset: int, size: int, what: str) -> bytearray:
    """``size`` bytes at ``offset``, read with ``pread``."""
    out = bytearray(size)
    at = 0
    while at < size:
        got = local.pread_into(fd, memoryview(out)[at:], offset + at)
        if got <= 0:
            raise DataLossError(f"{what}: the file ends before the tensor's end (truncated while being read?)")
        at += got
    return out


class DataFiles:
    """The ``num_shards`` data files of the bundle ``prefix``, each opened on
    first use (or all at once with :meth:`open_all`) and kept open, so what
    was opened stays one generation even if the checkpoint is replaced."""

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
