"""The path convention of every reading function: a path means a
checkpoint prefix (or its ``.index`` or a data file), or a directory (its
latest checkpoint by the state file, or the only checkpoint in it), found
again when a save replaces or retires it while it is being opened."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple, TypeVar

from fastckpt.bundle.naming import PathLike, index_filename, storage_path, resolve_prefix
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.directory.state import latest_checkpoint, readable_prefix, state_path
from fastckpt.errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError
from fastckpt.storage import fs
from fastckpt.storage.fsutil import io_error
from fastckpt.storage.s3 import using_storage

__all__ = ["read_bundle", "load_checkpoint", "list_variables", "open_checkpoint", "find_checkpoint", "no_checkpoint"]


def read_bundle(
    prefix: PathLike,
    names: Optional[Sequence[str]] = None,
    *,
    into: Optional[MutableMapping[str, Any]] = None,
    verify: bool = True,
    threads: Optional[int] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    copy_on_write: Optional[bool] = None,
) -> Dict[str, Any]:
    """Read tensors of the bundle ``prefix`` into a dict of numpy arrays.

    ``names`` selects tensors (default: all, or the keys of ``into``). With
    ``into`` (name → array), arrays are filled in place after checking shape
    and dtype, and ``into`` is returned. Each tensor's CRC32C is verified
    unless ``verify=False``; damage raises :class:`DataLossError` naming the
    file and the tensor. String tensors come back as object arrays of
    ``bytes``. New arrays are copy-on-write maps of the data files where
    they can be guarded (see :class:`CheckpointReader`; ``copy_on_write=False``
    copies).
    """
    with using_storage(storage_options):
        def read(p: str) -> Dict[str, Any]:
            with CheckpointReader(p, verify=verify, threads=threads, copy_on_write=copy_on_write) as reader:
                return reader.read(names, into=into)
        return open_checkpoint(prefix, read)


def load_checkpoint(dir_or_prefix: PathLike, *, verify: bool = True,
                    storage_options: Optional[Mapping[str, Any]] = None) -> CheckpointReader:
    """A :class:`CheckpointReader` for a checkpoint path (see
    :func:`open_checkpoint`)."""
    with using_storage(storage_options):
        return open_checkpoint(dir_or_prefix, lambda p: CheckpointReader(p, verify=verify))


T = TypeVar("T")


def no_checkpoint(path: str) -> NotFoundError:
    """The one error for "there is no checkpoint here"."""
    return NotFoundError(f"no checkpoint at {path}")


def find_checkpoint(path: PathLike) -> str:
    """The checkpoint prefix a path means: a prefix (or the path of its
    ``.index`` or a data file); a directory's latest checkpoint (its state
    file) or, without a state file, the only checkpoint in it. Several
    checkpoints and no state file: :class:`InvalidArgumentError` listing
    them; none: :class:`NotFoundError`. While a commit replaces the
    checkpoint, the complete staged bundle standing in for it is returned
    (:func:`fastckpt.directory.state.readable_prefix`)."""
    p = storage_path(path)
    try:
        return _find(p)
    except OSError as e:
        if isinstance(e, CheckpointError):
            raise
        if isinstance(e, FileNotFoundError):  # an object store's missing bucket
            raise NotFoundError(f"no checkpoint at {p}: {e.strerror or e}") from None
        raise io_error(e, f"looking for a checkpoint at {p}") from e


def _find(p: str) -> str:
    if fs.is_dir(p):
        if fs.exists(state_path(p, None)):
            for _ in range(100):  # the latest may be retired between naming and finding it: name it again
                latest = latest_checkpoint(p)
                if latest is None:
                    raise no_checkpoint(p)
                found = readable_prefix(latest)
                if found is not None:
                    return found
            raise no_checkpoint(p)
        found_all = sorted(n[:-len(".index")] for n in fs.listdir(p)
                           if n.endswith(".index") and not n.startswith(".fcsave-"))
        if len(found_all) > 1:
            raise InvalidArgumentError(f"{p} holds {len(found_all)} checkpoints and no state file naming the latest: "
                                       f"{', '.join(found_all[:10])}{', ...' if len(found_all) > 10 else ''}; "
                                       "pass one prefix")
        if not found_all:
            raise no_checkpoint(p)
        return os.path.join(p, found_all[0])
    found = readable_prefix(resolve_prefix(p))
    if found is None:
        raise no_checkpoint(p)
    return found


def open_checkpoint(path: PathLike, use: Callable[[str], T]) -> T:
    """``use(prefix)`` for the checkpoint ``path`` means (:func:`find_checkpoint`):
    the path convention of every reading function. A save replacing or
    deleting that checkpoint meanwhile is no failure: when the checkpoint
    vanished between finding and opening it, it is found again (a directory:
    its new latest checkpoint; a prefix: the same checkpoint, replaced)."""
    prefix = find_checkpoint(path)
    for _ in range(100):
        before = _index_id(prefix)
        try:
            return use(prefix)
        except NotFoundError:
            again = find_checkpoint(path)  # raises NotFoundError when it is really gone
            if again == prefix and _index_id(prefix) == before:
                raise  # nothing changed: a data file is missing
            prefix = again
    raise DataLossError(f"the checkpoint at {os.fspath(path)!r} keeps changing while it is opened")


def _index_id(prefix: str) -> Optional[Tuple[int, int, int]]:
    return fs.identity(index_filename(prefix))


def list_variables(dir_or_prefix: PathLike, *,
                   storage_options: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, List[int]]]:
    """Sorted ``(name, shape)`` pairs of a checkpoint, like ``tf.train.list_variables``."""
    with using_storage(storage_options):
        with load_checkpoint(dir_or_prefix) as reader:
            shapes = reader.get_variable_to_shape_map()
        return sorted(shapes.items())

