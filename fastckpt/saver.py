"""``Saver``: TensorFlow's ``tf.train.Saver`` shape (global-step naming, the
state file, retention) over fastckpt's bundle writer and reader."""

from __future__ import annotations

import logging
import os
from typing import Any, Collection, Dict, List, Mapping, MutableMapping, Optional, Sequence

from fastckpt.bundle.naming import PathLike, step_suffix, storage_path
from fastckpt.comm import as_communicator
from fastckpt.directory.locate import read_bundle
from fastckpt.directory.retention import Retention
from fastckpt.errors import InvalidArgumentError
from fastckpt.saving import Listing, SaveOptions, flatten_state, resolve_options, object_graph_state, write_checkpoint
from fastckpt.storage.s3 import using_storage

__all__ = ["Saver", "save"]

log = logging.getLogger("fastckpt")


class Saver:
    """Saves and restores checkpoints, keeping the newest ``max_to_keep``.

    ``saver.save(state, "dir/model", global_step=1000)`` writes the bundle
    ``dir/model-1000``, records it in ``dir/checkpoint`` (readable by
    ``tf.train.get_checkpoint_state``), then deletes checkpoints beyond
    ``max_to_keep`` (``None`` or ``0`` keeps all). Every
    ``keep_checkpoint_every_n_hours`` hours one checkpoint is preserved
    instead of deleted. The directory's state file is the saver's memory:
    it is re-read (under a lock file) at every save, so checkpoints listed
    by an earlier run or another process are adopted and retention survives
    restarts. Only listed checkpoints are ever deleted, and only after the
    state file stops naming them. Temporaries left by interrupted saves are
    removed by the next save in the directory.

    ``durable=True`` (the default) fsyncs data, index and directory before
    the state file names the checkpoint.
    """

    def __init__(
        self,
        max_to_keep: Optional[int] = 5,
        keep_checkpoint_every_n_hours: Optional[float] = None,
        *,
        durable: bool = True,
        num_shards: int = 1,
        alignment: int = 1,
        threads: Optional[int] = None,
        comm: Any = None,
        timeout: Optional[float] = None,
        compression: Optional[str] = None,
        compression_level: int = 1,
        recycle: bool = False,
        delta: bool = False,
        frozen: Collection[str] = (),
        options: Optional[SaveOptions] = None,
        storage_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        with using_storage(storage_options):  # checked now
            self._storage_options = dict(storage_options) if storage_options else None
        self._options = resolve_options(options, durable=durable, num_shards=num_shards, alignment=alignment,
                                 threads=threads, compression=compression, compression_level=compression_level,
                                 recycle=recycle, delta=delta, frozen=frozen)
        self._comm = as_communicator(comm, timeout)
        if self._options.recycle and self._comm is not None:
            raise InvalidArgumentError("recycle=True is for one-process saves: with comm= every process writes "
                                       "new files")
        self._retention = Retention(max_to_keep, keep_checkpoint_every_n_hours)
        self._last: List[str] = []

    @property
    def last_checkpoints(self) -> List[str]:
        """Prefixes listed after this saver's last save, oldest first."""
        return list(self._last)

    def save(
        self,
        state: Mapping[str, Any],
        save_path: PathLike,
        global_step: Any = None,
        latest_filename: Optional[str] = None,
        write_state: bool = True,
        metadata: Any = None,
    ) -> str:
        """Write ``state`` as a checkpoint and return its prefix.

        ``state`` is a dict of name → array, or any nesting of dicts, lists
        and tuples of arrays, scalars and framework tensors (stored under
        joined paths like ``"layer/0/kernel"``; the tree, each leaf's dtype and
        shape, and the JSON ``metadata`` go to the structure record, a tensor
        of the bundle read back by :func:`fastckpt.restore` and
        :func:`fastckpt.read_meta`).

        The prefix is ``save_path`` or, with ``global_step``,
        ``f"{save_path}-{global_step}"``. The directory is created if needed.
        The state file is updated (unless ``write_state=False``) only after the
        checkpoint is complete, and old checkpoints are deleted only after the
        state file no longer names them -- and only files directly inside the
        directory (entries pointing elsewhere are dropped from the list, never
        deleted). Re-saving an existing step replaces it atomically: killed
        at any point, the latest checkpoint has the old or the new contents.
        """
        if save_path is None:
            raise InvalidArgumentError("save_path must not be None")
        base = storage_path(save_path, "save_path")
        if not isinstance(base, str) or not base or base.endswith(os.sep) or base.endswith("/"):
            raise InvalidArgumentError(f"save_path must be a file path prefix, got {save_path!r}")
        prefix = base if global_step is None else f"{base}-{step_suffix(global_step)}"
        if global_step is None and os.path.basename(base) == (latest_filename or "checkpoint"):
            raise InvalidArgumentError(
                f"save_path {base!r} collides with the checkpoint state file name")
        if self._comm is not None:
            self._comm.begin()
        with using_storage(self._storage_options):
            listed = write_checkpoint(flatten_state(state, metadata, self._comm), prefix, self._options,
                                      Listing(self._retention, latest_filename or "checkpoint", write_state),
                                      self._comm)
        if write_state:
            self._last = listed
        return prefix

    def restore(
        self,
        save_path: PathLike,
        into: Optional[MutableMapping[str, Any]] = None,
        *,
        names: Optional[Sequence[str]] = None,
        verify: bool = True,
    ) -> Dict[str, Any]:
        """Read checkpoint ``save_path`` (a prefix, or a directory: its latest
        checkpoint): a dict of arrays, or ``into`` filled in place. Every tensor's checksum is verified unless ``verify=False``."""
        if save_path is None:
            raise InvalidArgumentError("Can't load save_path when it is None.")
        return read_bundle(save_path, names, into=into, verify=verify, threads=self._options.threads,
                           storage_options=self._storage_options)


def save(state: Any, prefix: PathLike, *, metadata: Any = None, durable: bool = True, num_shards: int = 1,
         alignment: int = 1, threads: Optional[int] = None, comm: Any = None, timeout: Optional[float] = None,
         compression: Optional[str] = None, compression_level: int = 1, object_graph: bool = False,
         template: Optional[PathLike] = None, delta: bool = False, frozen: Collection[str] = (),
         options: Optional[SaveOptions] = None, storage_options: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``state`` (flat or nested; see :meth:`Saver.save`) as checkpoint
    ``prefix``, with its structure record, without touching a state file.

    ``object_graph=True`` also writes a TensorFlow 2 object graph, so that
    ``tf.train.Checkpoint(**objects).restore(prefix)`` restores a tree of
    ``tf.Module``s and ``tf.Variable``s whose attribute names are the
    state's keys (tensors are stored under ``PATH/.ATTRIBUTES/VARIABLE_VALUE``;
    a ``save_counter`` is added unless the state has one). ``template``
    (an existing TensorFlow 2 checkpoint, e.g. one Keras wrote for the same
    model) writes the state's values under that checkpoint's keys and object
    graph instead: the state is laid out as ``fastckpt.restore(template)``
    returns it, and every missing, extra, mis-shaped or mis-typed variable is
    an error that lists them all.

    With ``comm`` (an mpi4py communicator, ``torch.distributed``, or a
    process group), every process calls ``save`` with its own part of the
    state and one checkpoint is written: a data file per process and one
    merged index (see :mod:`fastckpt.collective`); ``timeout`` bounds the
    wait for the slowest process. ``compression="zstd"``: see
    :func:`fastckpt.write_bundle`. ``delta=True``: what is unchanged since
    the directory's latest checkpoint (in its state file) is shared with it,
    not written (:class:`SaveOptions`). ``options`` (a :class:`SaveOptions`)
    replaces the keyword arguments ``durable`` to ``frozen``."""
    with using_storage(storage_options):
        p = storage_path(prefix, "prefix")
        opts = resolve_options(options, durable=durable, num_shards=num_shards, alignment=alignment, threads=threads,
                        compression=compression, compression_level=compression_level, delta=delta,
                        frozen=frozen)
        communicator = as_communicator(comm, timeout)
        if object_graph or template is not None:
            if communicator is not None:
                raise InvalidArgumentError("object_graph and template are for one process's save (comm=None)")
            flat = object_graph_state(state, metadata, template)
        else:
            if communicator is not None:
                communicator.begin()
            flat = flatten_state(state, metadata, communicator)
        write_checkpoint(flat, p, opts, Listing(write_state=False), communicator)
        return p
