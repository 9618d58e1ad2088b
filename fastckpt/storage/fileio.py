"""Reading whole files and descriptors of the local file system, with
fastckpt's errors: a missing file is :class:`NotFoundError`, a FIFO or device
:class:`DataLossError` (never blocked on), other failures
:class:`CheckpointIOError`."""

from __future__ import annotations

import errno
import os

from fastckpt.errors import CheckpointIOError, DataLossError, NotFoundError
from fastckpt.storage.locking import open_regular

__all__ = ["read_regular", "open_file", "read_fd", "read_file"]


def read_regular(path: str) -> bytes:
    """The whole regular file ``path`` (no symlink at the end, never blocks on
    a FIFO); ``OSError`` as the system reports it, ``EINVAL`` for a
    non-regular file."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def open_file(path: str, missing: str) -> int:
    """A read-only descriptor of the regular file ``path``, with
    :func:`read_file`'s errors."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise NotFoundError(f"{missing}: {path} does not exist") from None
    except IsADirectoryError:
        raise NotFoundError(f"{missing}: {path} is a directory") from None
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ELOOP, errno.ENXIO):
            raise DataLossError(f"{path} is not a regular file") from None
        raise CheckpointIOError(e.errno or 0, f"cannot read {path}: {e.strerror}", path) from e


def read_fd(fd: int, path: str) -> bytes:
    """Everything from ``fd``'s current offset; :class:`CheckpointIOError`
    on failure."""
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise CheckpointIOError(e.errno or 0, f"cannot read {path}: {e.strerror}", path) from e


def read_file(path: str, missing: str) -> bytes:
    """The whole file; :class:`NotFoundError` (``missing`` + why) when it is
    absent or a directory, :class:`DataLossError` for another non-regular
    file, :class:`CheckpointIOError` for other failures."""
    fd = open_file(path, missing)
    try:
        return read_fd(fd, path)
    finally:
        os.close(fd)
