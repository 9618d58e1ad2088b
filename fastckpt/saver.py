"""``Saver``: TensorFlow's ``tf.train.Saver`` shape (global-step naming, the
state file, retention) over fastckpt's bundle writer and reader."""

from __future__ import annotations

import logging
import operator
import os
import time
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

from .commit import Entry, commit_checkpoint, recover_directory
from .errors import InvalidArgumentError, NotFoundError
from .fsutil import ensure_directory, io_error
from .naming import PathLike, resolve_prefix
from .reader import read_bundle
from .state import _state_path, checkpoint_exists
from .structure import flatten, with_structure_record
from .writer import check_prefix, install_plain, stage_bundle

__all__ = ["Saver", "save"]

log = logging.getLogger("fastckpt")


def _step_suffix(global_step: Any) -> str:
    if isinstance(global_step, bool):
        raise InvalidArgumentError(f"global_step must be an integer, got {global_step!r}")
    try:
        return str(operator.index(global_step))
    except TypeError:
        pass
    try:  # a 0-d array or a framework scalar
        import numpy as np

        arr = np.asarray(global_step)
        if arr.ndim == 0 and arr.dtype.kind in "iu":
            return str(int(arr))
    except Exception:
        pass
    raise InvalidArgumentError(f"global_step must be an integer, got {global_step!r}")


def split_structure(state: Any, metadata: Any) -> Tuple[Mapping[str, Any], Any]:
    """``(name -> leaf, tree or None)``: a plain dict of numpy arrays with no
    metadata needs no structure record (it restores as the same flat dict)."""
    if metadata is None and type(state) is dict and all(type(v) is np.ndarray for v in state.values()):
        return state, None
    if isinstance(state, Mapping) and not state:
        return {}, ({"dict": []} if metadata is not None else None)
    leaves, tree = flatten(state)
    return leaves, tree


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
    ) -> None:
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool)
                                        or max_to_keep < 0):
            raise InvalidArgumentError(f"max_to_keep must be None or an int >= 0, got {max_to_keep!r}")
        if keep_checkpoint_every_n_hours is not None:
            try:
                hours = float(keep_checkpoint_every_n_hours)
            except (TypeError, ValueError):
                hours = -1.0
            if not hours > 0:
                raise InvalidArgumentError(
                    f"keep_checkpoint_every_n_hours must be a positive number, got {keep_checkpoint_every_n_hours!r}")
        self._max_to_keep = max_to_keep or None
        self._keep_hours = keep_checkpoint_every_n_hours
        self._durable = bool(durable)
        self._write_options = dict(num_shards=num_shards, alignment=alignment, threads=threads)
        self._num_shards = num_shards
        self._threads = threads
        self._created = time.time()
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
        base = os.fspath(save_path)
        if not isinstance(base, str) or not base or base.endswith(os.sep):
            raise InvalidArgumentError(f"save_path must be a file path prefix, got {save_path!r}")
        prefix = base if global_step is None else f"{base}-{_step_suffix(global_step)}"
        if global_step is None and os.path.basename(base) == (latest_filename or "checkpoint"):
            raise InvalidArgumentError(
                f"save_path {base!r} collides with the checkpoint state file name")
        leaves, tree = split_structure(state, metadata)
        self._save_leaves(prefix, leaves, tree, metadata, latest_filename or "checkpoint", write_state)
        return prefix

    def _save_leaves(self, prefix: str, leaves: Mapping[str, Any], tree: Any, metadata: Any,
                     state_name: str = "checkpoint", write_state: bool = True) -> None:
        """Stage the bundle (with the structure record for nested state),
        then commit it under the state file ``state_name`` -- or, without
        ``write_state``, rename it into place."""
        check_prefix(prefix, self._num_shards)
        directory = os.path.dirname(os.path.abspath(prefix))
        _state_path(directory, state_name)  # validates the name
        ensure_directory(directory)
        tensors = with_structure_record(leaves, tree, metadata)
        if write_state:
            recover_directory(directory, state_name, durable=self._durable, tidy_state=False)  # frees space first
        staged = stage_bundle(directory, tensors, durable=self._durable, **self._write_options)  # type: ignore[arg-type]
        if not write_state:
            install_plain(staged, prefix)
            return
        try:
            self._last = commit_checkpoint(staged, prefix, directory, state_name, self._retain)
        except OSError as e:
            raise io_error(e, f"saving checkpoint {prefix!r}") from e
        finally:
            staged.close()

    def _retain(self, entries: List[Entry], preserved: float) -> Tuple[List[Entry], List[str], float]:
        """Retention: (kept entries, dropped prefixes, last preserved time).
        The oldest beyond ``max_to_keep`` are dropped, except one every
        ``keep_checkpoint_every_n_hours``, which stays on disk unlisted."""
        preserved = min(preserved, time.time()) if preserved else min(self._created, time.time())
        managed = list(entries)
        doomed: List[str] = []
        while self._max_to_keep is not None and len(managed) > self._max_to_keep:
            old, ts = managed.pop(0)
            hours = self._keep_hours
            if hours is not None and ts - hours * 3600 >= preserved:
                preserved = ts  # kept on disk, no longer listed
            else:
                doomed.append(old)
        return managed, doomed, preserved

    def restore(
        self,
        save_path: PathLike,
        into: Optional[MutableMapping[str, Any]] = None,
        *,
        names: Optional[Sequence[str]] = None,
        verify: bool = True,
    ) -> Dict[str, Any]:
        """Read checkpoint ``save_path``: a dict of arrays, or ``into`` filled
        in place. Every tensor's checksum is verified unless ``verify=False``."""
        if save_path is None:
            raise InvalidArgumentError("Can't load save_path when it is None.")
        prefix = resolve_prefix(save_path)
        if not checkpoint_exists(prefix):
            raise NotFoundError(f"The passed save_path is not a valid checkpoint: {os.fspath(save_path)}")
        return read_bundle(prefix, names, into=into, verify=verify, threads=self._threads)


def save(state: Any, prefix: PathLike, *, metadata: Any = None, durable: bool = True, num_shards: int = 1,
         alignment: int = 1, threads: Optional[int] = None) -> str:
    """Write ``state`` (flat or nested; see :meth:`Saver.save`) as checkpoint
    ``prefix``, with its structure record, without touching a state file."""
    p = os.fspath(prefix)
    leaves, tree = split_structure(state, metadata)
    Saver(durable=durable, num_shards=num_shards, alignment=alignment, threads=threads)._save_leaves(
        p, leaves, tree, metadata, write_state=False)
    return p
