"""The storage interface the layers above call for names: each function
asks :func:`backend` which implementation holds ``path`` and delegates to
it. Local paths are :mod:`fastckpt.storage.local`'s; an object store is
another object with these functions (:class:`fastckpt.storage.s3.S3Storage`
for ``s3://`` URLs), chosen here by the path's scheme, without a change in
the layers that call them. (The public API still refuses URLs,
:func:`fastckpt.bundle.naming.local_path`, until every layer's use of an
object store is built and tested.)"""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

from fastckpt.storage import local, s3

__all__ = ["Storage", "backend", "object_store", "exists", "present", "is_dir", "is_file", "listdir", "size", "mtime", "identity",
           "delete", "delete_quietly", "replace", "rename", "link", "copy", "real_path"]


class Storage(Protocol):
    """What an implementation of the storage seam provides for names."""

    def exists(self, path: str) -> bool: ...
    def present(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def is_file(self, path: str) -> bool: ...
    def listdir(self, directory: str) -> List[str]: ...
    def size(self, path: str) -> int: ...
    def mtime(self, path: str) -> float: ...
    def identity(self, path: str) -> Optional[Tuple[int, int, int]]: ...
    def delete(self, path: str) -> None: ...
    def delete_quietly(self, path: str) -> None: ...
    def replace(self, src: str, dst: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def copy(self, src: str, dst: str) -> None: ...
    def real_path(self, path: str) -> str: ...


def backend(path: str) -> Storage:
    """The implementation that holds ``path``: an object store for
    ``s3://`` URLs, else the local file system."""
    if path.startswith(s3.SCHEME):
        return s3.default_s3()
    return local  # a module is an implementation: it has the protocol's functions


def object_store(path: str) -> s3.S3Storage:
    """The object store holding the URL ``path`` (what object stores add to
    the interface: conditional writes, ranged reads, streamed uploads)."""
    if not path.startswith(s3.SCHEME):
        raise ValueError(f"not an object-store URL: {path!r}")
    return s3.default_s3()


def exists(path: str) -> bool:
    """True if anything (a dangling symlink too) has this name."""
    return backend(path).exists(path)


def present(path: str) -> bool:
    """True if ``path`` names something, through symlinks."""
    return backend(path).present(path)


def is_dir(path: str) -> bool:
    """True if ``path`` is a directory."""
    return backend(path).is_dir(path)


def is_file(path: str) -> bool:
    """True if ``path`` is a regular file."""
    return backend(path).is_file(path)


def listdir(directory: str) -> List[str]:
    """The names in ``directory``."""
    return backend(directory).listdir(directory)


def size(path: str) -> int:
    """The size of the file ``path``, in bytes."""
    return backend(path).size(path)


def mtime(path: str) -> float:
    """The modification time of ``path``."""
    return backend(path).mtime(path)


def identity(path: str) -> Optional[Tuple[int, int, int]]:
    """What tells one file under a name from another that replaced it."""
    return backend(path).identity(path)


def delete(path: str) -> None:
    """Remove the name ``path``."""
    backend(path).delete(path)


def delete_quietly(path: str) -> None:
    """Remove ``path`` if it can be removed."""
    backend(path).delete_quietly(path)


def replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` atomically."""
    backend(dst).replace(src, dst)


def rename(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``."""
    backend(dst).rename(src, dst)


def link(src: str, dst: str) -> None:
    """A second name ``dst`` for ``src``'s contents."""
    backend(dst).link(src, dst)


def copy(src: str, dst: str) -> None:
    """``dst`` as a copy of ``src``."""
    backend(dst).copy(src, dst)


def real_path(path: str) -> str:
    """``path`` resolved."""
    return backend(path).real_path(path)
