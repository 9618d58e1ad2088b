"""Locks that make saving into a shared directory safe.

- The **directory lock** (``<dir>/<state file>.lock``, ``flock``) is held
  while the state file is read, rewritten and old checkpoints deleted, so
  two processes never interleave those steps.
- Every **temporary file** of a save in progress is ``flock``-ed by its
  writer until it is renamed into place. A later save deletes a leftover
  temporary only when it can take that lock, that is when its writer is
  gone (killed, crashed): a concurrent save's files are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
from typing import Callable, Iterator, List, Tuple

__all__ = ["directory_lock", "create_locked_temp", "clean_leftovers", "is_leftover"]

log = logging.getLogger("fastckpt")

# P.data-00000-of-00001.tempstate123, P.index.tempstate123 (TensorFlow's names
# too), checkpoint.tmp<32 hex> (the state file being rewritten).
_LEFTOVER = re.compile(r".*\.(?:index|data-\d{5,}-of-\d{5,})\.tempstate\d+\Z|.*\.tmp[0-9a-f]{32}\Z")


def is_leftover(name: str) -> bool:
    """True for the temporary names of an unfinished save or state update."""
    return bool(_LEFTOVER.match(name))


@contextlib.contextmanager
def directory_lock(directory: str, latest_filename: str = "checkpoint") -> Iterator[None]:
    """Exclusive lock on a checkpoint directory (blocks until free)."""
    path = os.path.join(directory, latest_filename + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_locked_temp(make_name: Callable[[], str], mode: int = 0o644) -> Tuple[str, int]:
    """Create a new temporary file and hold its lock; returns (path, fd).

    Between creating the file and locking it, a cleaner in another process
    may take the lock first and delete the file. So the lock is taken
    blocking (waiting out such a cleaner) and the file must still have a
    name afterwards; if not, a new name is tried.
    """
    for _ in range(100):
        path = make_name()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return path, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a cleaner removed it before we held the lock
    raise OSError(errno.EAGAIN, "could not create a temporary file that stays", path)


def clean_leftovers(directory: str) -> List[str]:
    """Delete the temporaries of interrupted saves in ``directory``.

    Only files whose writer no longer holds their lock are removed; returns
    their paths. Never raises for a file that vanishes or cannot be opened.
    """
    removed: List[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not is_leftover(name):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live save is writing it
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d leftover file(s) of interrupted saves in %s", len(removed), directory)
    return removed
