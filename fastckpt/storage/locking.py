"""Locks that make saving into a shared directory safe.

- The **directory lock** (``<dir>/<state file>.lock``, ``flock``) is held
  while a save commits: the state file is read and rewritten, the new
  checkpoint put in place and old ones deleted, so two processes never
  interleave those steps.
- Every file of a save in progress (its staged bundle, its temporaries) is
  ``flock``-ed by its writer until the save ends (data files with a shared
  lock). A later save deletes a leftover only when it can take that lock
  exclusively, that is when its writer is gone (killed, crashed): a
  concurrent save's files are never touched.
- **Readers share, recyclers exclude.** fastckpt's readers hold a shared
  lock on every data file they open (and keep it while any view of its
  map lives). A save recycles a retired checkpoint's data file only if it
  can take its exclusive lock at once; it holds that lock while it
  rewrites the file.
- Locks never outlive ``fork()`` in the child: a forked child closes the
  lock descriptors it inherited (they belong to threads that do not exist
  in the child), so neither the child's saves nor the parent's wait on it.
- Nothing here follows a symbolic link or opens a non-regular file: a FIFO
  or a dangling link with a checkpoint-like name never blocks or redirects
  a save.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import threading
from typing import Callable, Collection, Iterator, List, Optional, Set, Tuple

from fastckpt.errors import CheckpointIOError, DataLossError

__all__ = ["directory_lock", "create_locked_temp", "clean_leftovers", "is_leftover", "release_lock",
           "open_regular", "lock_for_reading", "claim_exclusive", "link_locked"]

log = logging.getLogger("fastckpt")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

# TensorFlow's temporaries (P.index.tempstate123, P.data-...-of-....tempstate123),
# a state file being rewritten (checkpoint.tmp<32 hex>), fastckpt's staged
# bundles (.fcsave-<16 hex>.index / .data-...) and link temporaries (.fclink-<16 hex>).
_LEFTOVER = re.compile(r".*\.(?:index|data-\d{5,}-of-\d{5,})\.tempstate\d+\Z|.*\.tmp[0-9a-f]{32}\Z"
                       r"|\.fcsave-[0-9a-f]{16}\.(?:index|data-\d{5,}-of-\d{5,})\Z|\.fclink-[0-9a-f]{16}\Z")

# Descriptors holding a lock, closed in a forked child.
_HELD: Set[int] = set()
_HELD_LOCK = threading.Lock()


def _hold(fd: int) -> None:
    with _HELD_LOCK:
        _HELD.add(fd)


def release_lock(fd: int) -> None:
    """Close a descriptor returned by :func:`create_locked_temp` (its lock goes with it)."""
    with _HELD_LOCK:
        _HELD.discard(fd)
    os.close(fd)


def _close_inherited_locks() -> None:
    """In a forked child: drop the lock descriptors the parent's threads hold."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()  # the parent's may have been held at fork time
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)


def _flock(fd: int, operation: int, path: str) -> None:
    """``flock``, or :class:`CheckpointIOError` saying plainly that the file
    system lacks it: saves need it to keep concurrent writers and cleaners
    apart, and go no further without it."""
    try:
        fcntl.flock(fd, operation)
    except OSError as e:
        if e.errno in _NO_FLOCK:
            raise CheckpointIOError(e.errno, f"the file system of {os.path.dirname(path) or '.'} does not support "
                                    f"file locks (flock: {e.strerror}); fastckpt saves need them: save to a local "
                                    "or lock-capable file system", path) from None
        raise


def lock_for_reading(fd: int, wait: float = 10.0) -> bool:
    """Take a shared lock on a data file a reader opened: while any reader
    holds it, no save recycles the file. A save holds its files'
    exclusive lock only while it rewrites a recycled file and commits it
    (the committed files then become shareable): waits up to ``wait``
    seconds for that; False if the lock is still held then."""
    import time

    deadline = time.monotonic() + wait
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except OSError as e:  # a file system without flock: nothing to share, nothing recycled
            if e.errno in _NO_FLOCK:
                return True
            raise


def claim_exclusive(path: str) -> Optional[int]:
    """``path`` opened for writing with its exclusive lock taken at once
    (no reader and no writer holds any lock on it), or None. Never follows
    a final symbolic link; only regular files."""
    try:
        fd = open_regular(path, os.O_RDWR, follow=False)
    except OSError:
        return None
    _hold(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        release_lock(fd)
        return None
    return fd


def is_leftover(name: str) -> bool:
    """True for the names of an unfinished save's files (staged bundles,
    temporaries of TensorFlow and fastckpt, a state file being rewritten)."""
    return bool(_LEFTOVER.match(name))


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = 0o644, *, follow: bool = True) -> int:
    """Open ``path`` without blocking on a FIFO or device (and, unless
    ``follow``, without following a final symlink: ``ELOOP``); raises
    ``IsADirectoryError`` for a directory, ``OSError(EINVAL)`` for any other
    non-regular file."""
    fd = os.open(path, flags | _CLOEXEC | _NONBLOCK | (0 if follow else _NOFOLLOW), mode)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if _NONBLOCK:
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def directory_lock(directory: str, latest_filename: str = "checkpoint") -> Iterator[None]:
    """Exclusive lock on a checkpoint directory (blocks until free).

    The lock file must be a regular file inside the directory: a symlink
    (dangling or not), a directory or a FIFO under its name is refused with
    :class:`DataLossError` naming it; nothing is created elsewhere.
    """
    path = os.path.join(directory, latest_filename + ".lock")
    try:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, follow=False)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.EINVAL, errno.ENXIO):
            raise DataLossError(f"lock file {path} is not a regular file (a symlink, directory or FIFO); "
                                "remove it to save in this directory") from None
        raise CheckpointIOError(e.errno or 0, f"cannot open lock file {path}: {e.strerror}", path) from e
    _hold(fd)
    try:
        _flock(fd, fcntl.LOCK_EX, path)
        yield
    finally:
        release_lock(fd)


def create_locked_temp(make_name: Callable[[], str], mode: int = 0o644, *, shared: bool = False) -> Tuple[str, int]:
    """Create a new file and hold its lock (``shared``: a shared lock, which
    readers of the finished file may share and a cleaner or a recycling
    save still cannot take); returns (path, fd).

    Between creating the file and locking it, a cleaner in another process
    may take the lock first and delete the file. So the lock is taken
    blocking (waiting out such a cleaner) and the file must still have a
    name afterwards; if not, a new name is tried. Release with
    :func:`release_lock`.
    """
    for _ in range(100):
        path = make_name()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW, mode)
        _hold(fd)
        try:
            _flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, path)
            if os.fstat(fd).st_nlink > 0:
                return path, fd
        except BaseException:
            release_lock(fd)
            raise
        release_lock(fd)  # a cleaner removed it before we held the lock
    raise OSError(errno.EAGAIN, "could not create a temporary file that stays", path)


def link_locked(src_fd: int, src_path: str, make_name: Callable[[], str]) -> Tuple[str, int]:
    """A new name for the open file ``src_fd`` (named ``src_path``): linked
    by its name, then proved to be the very file of ``src_fd`` (same device
    and inode; a file put under ``src_path`` meanwhile is unlinked again and
    ``ENOENT`` raised), held by a shared lock like a file
    :func:`create_locked_temp` makes (a cleaner that removed the new name
    before the lock was held is noticed: a new name is tried). ``OSError``
    when the file has no name left (``ENOENT``) or the system cannot link it
    (``EPERM``, ``EXDEV``, ``ENOTSUP``...): the caller writes the bytes
    instead."""
    want = os.fstat(src_fd)
    for _ in range(100):
        path = make_name()
        os.link(src_path, path, follow_symlinks=False)
        try:
            fd = open_regular(path, follow=False)
        except OSError:
            with contextlib.suppress(OSError):  # (a cleaner took the name at once, or it cannot be opened)
                os.unlink(path)
            continue
        _hold(fd)
        try:
            _flock(fd, fcntl.LOCK_SH, path)
            got = os.fstat(fd)
            if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
                os.unlink(path)  # another file took the name: not the bytes the index was read with
                raise FileNotFoundError(errno.ENOENT, "the file was replaced", src_path)
            named = os.stat(path, follow_symlinks=False)
            if (named.st_dev, named.st_ino) == (want.st_dev, want.st_ino):
                return path, fd
        except FileNotFoundError as e:
            if e.filename == src_path:
                release_lock(fd)
                raise
        except BaseException:
            release_lock(fd)
            raise
        release_lock(fd)
    raise OSError(errno.EAGAIN, "could not link a file under a name that stays", src_path)


def _unlink_if_abandoned(path: str) -> bool:
    """Delete ``path`` if it is a regular file nobody holds a lock on (its
    writer is gone), unlinking while holding the lock so that a writer
    between its create and its lock sees the file vanish and retries.
    Never blocks, never follows a symlink."""
    try:
        fd = open_regular(path, follow=False)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
        return True
    except OSError:
        return False  # a live save holds it, or it vanished
    finally:
        os.close(fd)


def clean_leftovers(directory: str, keep: Collection[str] = ()) -> List[str]:
    """Delete the files of interrupted saves in ``directory``.

    Only files whose writer no longer holds their lock are removed, never a
    name in ``keep`` (files of a staged bundle the state file still lists);
    returns their paths. Non-regular files and symlinks with such names are
    left alone (and never opened in a way that blocks).
    """
    removed: List[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not is_leftover(name) or name in keep:
            continue
        path = os.path.join(directory, name)
        if _unlink_if_abandoned(path):
            removed.append(path)
    if removed:
        log.info("removed %d leftover file(s) of interrupted saves in %s", len(removed), directory)
    return removed
