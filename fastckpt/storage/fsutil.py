"""File-system helpers shared by the writer, the state file and the commit:
threads, fsyncs, directory creation, atomic small-file writes, errors."""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
from typing import Iterator, Sequence

from fastckpt.storage.locking import create_locked_temp, release_lock
from fastckpt.errors import CheckpointError, CheckpointIOError, InvalidArgumentError

__all__ = ["default_threads", "fsync_all", "fsync_dir", "ensure_directory", "write_text_atomic",
           "io_error", "gc_paused", "check_name_fits"]


def default_threads() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC passes while building many small objects (they hold no
    cycles); each pass would walk every one of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def io_error(e: OSError, what: str) -> CheckpointIOError:
    """``e`` as a :class:`CheckpointIOError` whose message says ``what``."""
    if isinstance(e, CheckpointIOError):
        return e
    return CheckpointIOError(e.errno or 0, f"{what}: {e.strerror or e}", e.filename)


def fsync_all(fds: Sequence[int]) -> None:
    """fsync several files at once (each flush waits on the disk, not the CPU)."""
    if len(fds) == 1:
        os.fsync(fds[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(fds), 16)) as pool:
        list(pool.map(os.fsync, fds))


def fsync_dir(path: str) -> None:
    """fsync a directory so renames and creations in it are durable."""
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(directory: str) -> None:
    """Create ``directory`` (and parents) if needed; :class:`CheckpointIOError`
    naming it when that fails (read-only file system, permissions, a file
    in the way)."""
    if not directory:
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointIOError(e.errno or 0, f"cannot create directory {directory}: {e.strerror or e}",
                                directory) from e
    if not os.path.isdir(directory):
        raise CheckpointIOError(20, f"cannot create directory {directory}: not a directory", directory)


def check_name_fits(path: str) -> None:
    """:class:`InvalidArgumentError` when the file name ``path`` is longer than
    its directory allows (checked before anything is written)."""
    directory = os.path.dirname(path) or "."
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = os.path.basename(path)
    if len(os.fsencode(name)) > limit:
        raise InvalidArgumentError(
            f"file name {name!r} is {len(os.fsencode(name))} bytes; {directory} allows at most {limit}")


def write_text_atomic(path: str, text: str, durable: bool) -> None:
    """Write ``text`` to ``path`` by temp file + rename (+ fsyncs if durable).

    The temporary is locked while it exists, so a concurrent cleaner never
    takes it for a leftover; on failure it is removed and
    :class:`CheckpointIOError` names ``path``.
    """
    directory = os.path.dirname(path)
    data = text.encode("utf-8", "surrogateescape")
    tmp = ""
    try:
        tmp, fd = create_locked_temp(lambda: os.path.join(directory, f"{os.path.basename(path)}.tmp{uuid.uuid4().hex}"))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
            os.replace(tmp, path)
            tmp = ""
        finally:
            release_lock(fd)
        if durable:
            fsync_dir(directory)
    except OSError as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointIOError(e.errno or 0, f"cannot write {path}: {e.strerror}", path) from e
