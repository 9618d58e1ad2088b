"""``Saver``: TensorFlow's ``tf.train.Saver`` shape (global-step naming, the
state file, retention) over fastckpt's bundle writer and reader."""

from __future__ import annotations

import logging
import operator
import os
import re
import time
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

from .errors import CheckpointError, CheckpointIOError, InvalidArgumentError, NotFoundError
from .locking import clean_leftovers, directory_lock
from .naming import PathLike, index_filename, resolve_prefix
from .reader import read_bundle
from .state import checkpoint_exists, get_checkpoint_state, update_checkpoint_state
from .structure import flatten, meta_filename, write_meta
from .writer import write_bundle

__all__ = ["Saver", "save", "checkpoint_files", "remove_checkpoint"]

log = logging.getLogger("fastckpt")


def checkpoint_files(prefix: str) -> List[str]:
    """The files of checkpoint ``prefix`` that exist: ``.index``, every
    ``.data-SSSSS-of-NNNNN`` and ``.meta`` (matched exactly, no globbing)."""
    directory = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    pattern = re.compile(re.escape(base) + r"(\.index|\.meta|\.data-\d{5,}-of-\d{5,})\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(os.path.dirname(prefix), n) for n in sorted(names) if pattern.match(n)]


def remove_checkpoint(prefix: str) -> None:
    """Delete a checkpoint's files, index first (so it stops being one)."""
    files = checkpoint_files(prefix)
    files.sort(key=lambda f: not f.endswith(".index"))
    for f in files:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete %s: %s", f, e)


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
    metadata needs no ``.meta`` (it restores as the same flat dict)."""
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
        self._threads = threads
        self._created = time.time()
        self._last: List[str] = []

    @property
    def last_checkpoints(self) -> List[str]:
        """Prefixes listed after this saver's last save, oldest first."""
        return list(self._last)

    def _listed(self, directory: str, latest_filename: Optional[str]) -> Tuple[List[Tuple[str, float]], float]:
        """The checkpoints the state file lists that exist, with timestamps
        (the state's, else the index's mtime), and the last preserved time."""
        preserved = min(self._created, time.time())
        try:
            st = get_checkpoint_state(directory, latest_filename)
        except CheckpointError as e:
            log.warning("ignoring unreadable checkpoint state in %s: %s", directory, e)
            return [], preserved
        if st is None:
            return [], preserved
        listed: List[Tuple[str, float]] = []
        stamps = st.all_model_checkpoint_timestamps
        for i, p in enumerate(st.all_model_checkpoint_paths):
            if not checkpoint_exists(p):
                continue
            ts = stamps[i] if len(stamps) == len(st.all_model_checkpoint_paths) else \
                os.path.getmtime(index_filename(p))
            listed.append((p, ts))
        if st.last_preserved_timestamp:
            preserved = min(st.last_preserved_timestamp, time.time())
        return listed, preserved

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
        shape, and the JSON ``metadata`` go to ``PREFIX.meta``, read back by
        :func:`fastckpt.restore` and :func:`fastckpt.read_meta`).

        The prefix is ``save_path`` or, with ``global_step``,
        ``f"{save_path}-{global_step}"``. The directory is created if needed.
        The state file is updated (unless ``write_state=False``) only after the
        checkpoint is complete, and old checkpoints are deleted only after the
        state file no longer names them.
        """
        if save_path is None:
            raise InvalidArgumentError("save_path must not be None")
        base = os.fspath(save_path)
        if not isinstance(base, str) or not base or base.endswith(os.sep):
            raise InvalidArgumentError(f"save_path must be a file path prefix, got {save_path!r}")
        prefix = base if global_step is None else f"{base}-{_step_suffix(global_step)}"
        directory = os.path.dirname(os.path.abspath(prefix))
        if global_step is None and os.path.basename(base) == (latest_filename or "checkpoint"):
            raise InvalidArgumentError(
                f"save_path {base!r} collides with the checkpoint state file name")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise CheckpointIOError(e.errno or 0, f"cannot create {directory}: {e.strerror}", directory) from e
        clean_leftovers(directory)
        leaves, tree = split_structure(state, metadata)
        self._write(prefix, leaves, tree, metadata)
        if write_state:
            self._record(prefix, directory, latest_filename)
        return prefix

    def _write(self, prefix: str, leaves: Mapping[str, Any], tree: Any, metadata: Any) -> None:
        """The bundle, then (for nested state or metadata) ``PREFIX.meta``;
        a stale ``.meta`` of an earlier checkpoint of the same name goes first."""
        meta = meta_filename(prefix)
        if tree is None and os.path.lexists(meta):
            os.unlink(meta)
        write_bundle(prefix, leaves, durable=self._durable, **self._write_options)  # type: ignore[arg-type]
        if tree is not None:
            write_meta(prefix, tree, leaves, metadata, self._durable)

    def _record(self, prefix: str, directory: str, latest_filename: Optional[str]) -> None:
        """Name the new checkpoint in the state file, then delete the ones
        retention drops -- all under the directory lock, re-reading the state
        file first, so concurrent savers and restarts see one history."""
        with directory_lock(directory, latest_filename or "checkpoint"):
            listed, preserved = self._listed(directory, latest_filename)
            managed = [(p, ts) for p, ts in listed if os.path.abspath(p) != os.path.abspath(prefix)]
            managed.append((prefix, time.time()))
            doomed: List[str] = []
            while self._max_to_keep is not None and len(managed) > self._max_to_keep:
                old, ts = managed.pop(0)
                hours = self._keep_hours
                if hours is not None and ts - hours * 3600 >= preserved:
                    preserved = ts  # kept on disk, no longer listed
                else:
                    doomed.append(old)
            update_checkpoint_state(
                directory,
                prefix,
                [p for p, _ in managed],
                all_model_checkpoint_timestamps=[ts for _, ts in managed],
                last_preserved_timestamp=preserved,
                latest_filename=latest_filename,
                durable=self._durable,
            )
            for old in doomed:
                remove_checkpoint(old)
        self._last = [p for p, _ in managed]

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
    ``prefix`` with its ``PREFIX.meta``, without touching a state file."""
    p = os.fspath(prefix)
    leaves, tree = split_structure(state, metadata)
    Saver(durable=durable, num_shards=num_shards, alignment=alignment, threads=threads)._write(p, leaves, tree, metadata)
    return p
