"""The local file system's primitives, the ones every layer above calls
instead of ``os``: what is there (``exists``, ``is_dir``, ``listdir``, sizes
and identities), what changes it (``delete``, ``replace``, ``link``,
``copy``), and what a descriptor does (``pread``, ``write_all``, ``fsync``,
``truncate``, ``map_read``) -- the last are the local implementation's own
capability, the zero-copy path of the C engine. Errors are the system's
``OSError``s, as ``os`` raises them: the layers above name the checkpoint."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
from typing import BinaryIO, List, Optional, Tuple

__all__ = ["exists", "present", "is_dir", "is_file", "listdir", "size", "mtime", "identity", "fd_identity", "fd_size",
           "fd_links", "delete", "delete_quietly", "replace", "rename", "link", "copy", "close", "pread", "pread_into",
           "write_all", "fsync", "truncate", "map_read", "dup", "real_path", "open_binary", "join", "dirname"]

FileIdentity = Tuple[int, int, int]


def join(directory: str, name: str) -> str:
    """``name`` inside ``directory``."""
    return os.path.join(directory, name)


def dirname(path: str) -> str:
    """The directory ``path`` lies in ('' for a bare name)."""
    return os.path.dirname(path)


# ---- what is there ----------------------------------------------------------------------------
def exists(path: str) -> bool:
    """True if anything (a dangling symlink too) has this name."""
    return os.path.lexists(path)


def present(path: str) -> bool:
    """True if ``path`` names something, through symlinks (a dangling one: False)."""
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    """True if ``path`` is a directory (through symlinks)."""
    return os.path.isdir(path)


def is_file(path: str) -> bool:
    """True if ``path`` is a regular file (through symlinks)."""
    return os.path.isfile(path)


def listdir(directory: str) -> List[str]:
    """The names in ``directory``."""
    return os.listdir(directory)


def size(path: str) -> int:
    """The size of the file ``path``, in bytes."""
    return os.path.getsize(path)


def mtime(path: str) -> float:
    """The modification time of ``path``."""
    return os.path.getmtime(path)


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def identity(path: str) -> Optional[FileIdentity]:
    """What tells one file under a name from another that replaced it (None: nothing there)."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def fd_identity(fd: int) -> FileIdentity:
    """:func:`identity` of an open file."""
    return _identity(os.fstat(fd))


def fd_size(fd: int) -> int:
    """The size of the open file ``fd``."""
    return os.fstat(fd).st_size


def fd_mtime_ns(fd: int) -> int:
    """The open file's modification time in nanoseconds."""
    return os.fstat(fd).st_mtime_ns


def fd_links(fd: int) -> int:
    """How many names the open file ``fd`` has."""
    return os.fstat(fd).st_nlink


# ---- what changes it --------------------------------------------------------------------------
def delete(path: str) -> None:
    """Remove the name ``path`` (``FileNotFoundError`` if there is none)."""
    os.unlink(path)


def delete_quietly(path: str) -> None:
    """Remove ``path`` if it can be removed; a cleanup that must not fail."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` atomically."""
    os.replace(src, dst)


def rename(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``."""
    os.rename(src, dst)


def link(src: str, dst: str) -> None:
    """A second name ``dst`` for the file ``src``."""
    os.link(src, dst)


def copy(src: str, dst: str) -> None:
    """``dst`` as a copy of ``src`` (a symlink copied as the link)."""
    shutil.copyfile(src, dst, follow_symlinks=False)


# ---- descriptors: the local implementation's own capability ----------------------------------
def is_link(path: str) -> bool:
    """Whether ``path`` is a symbolic link (dangling ones too)."""
    return os.path.islink(path)


def make_dir(path: str) -> None:
    """Create the directory ``path`` (its parent must exist; FileExistsError if it does)."""
    os.mkdir(path)


def remove_tree(path: str) -> None:
    """Remove the directory ``path`` and everything in it, as far as it can."""
    shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def close(fd: int) -> None:
    """Close ``fd``."""
    os.close(fd)


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes of ``fd`` at ``offset``."""
    return os.pread(fd, n, offset)


def pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Read into ``buffer`` from ``fd`` at ``offset``; how many bytes came (0 at the end)."""
    return os.preadv(fd, [buffer], offset)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` at ``fd``'s position."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync(fd: int) -> None:
    """Make what was written to ``fd`` durable."""
    os.fsync(fd)


def truncate(fd: int, length: int) -> None:
    """Make the file ``fd`` exactly ``length`` bytes long."""
    os.ftruncate(fd, length)


def map_read(fd: int, length: int = 0) -> mmap.mmap:
    """A read-only shared map of the first ``length`` bytes of ``fd`` (0: all)."""
    return mmap.mmap(fd, length, access=mmap.ACCESS_READ)


def dup(fd: int) -> int:
    """A second descriptor of the open file ``fd``."""
    return os.dup(fd)


def real_path(path: str) -> str:
    """``path`` with symlinks and ``..`` resolved."""
    return os.path.realpath(path)


def open_binary(fd: int, mode: str = "rb", *, closefd: bool = True) -> BinaryIO:
    """A buffered file object over ``fd``."""
    return os.fdopen(fd, mode, closefd=closefd)  # type: ignore[return-value]


def process_start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` on this host, in clock ticks since
    boot (tells a running process from a new one under a reused pid), or
    None when no such process runs (or the system has no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def temp_fd() -> int:
    """A descriptor of a new, already unlinked, temporary file (in
    ``TMPDIR``): space on disk that goes when it is closed."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="fastckpt-")
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        raise
    return fd
