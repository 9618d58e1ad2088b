"""``CheckpointManager``: resume automatically, save in the background.

In the spirit of ``tf.train.CheckpointManager``: one directory, checkpoints
named ``<checkpoint_name>-<step>``, retention, an optional save interval,
``restore_or_initialize`` for jobs that restart with the same directory.
``save(..., blocking=False)`` snapshots the state into reused host buffers
(the only time the caller waits) and writes in a background thread, with
the GIL released during the I/O, so training continues meanwhile.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import re
import threading
import weakref
from typing import Any, Collection, Dict, List, Literal, Mapping, Optional, Tuple, Union, overload

import numpy as np

from fastckpt.bundle.frameworks import to_numpy
from fastckpt.bundle.naming import PathLike, is_url, step_suffix, storage_path
from fastckpt.bundle.slices import Shard
from fastckpt.bundle.writer import STAGE_PREFIX
from fastckpt.comm import as_communicator
from fastckpt.directory.retention import Retention
from fastckpt.directory.state import get_checkpoint_state, latest_checkpoint
from fastckpt.errors import InvalidArgumentError, NotFoundError
from fastckpt.restoring import restore_latest, restore_structure
from fastckpt.saving import FlatState, Listing, SaveOptions, flatten_state, resolve_options, write_checkpoint
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = ["CheckpointManager"]

log = logging.getLogger("fastckpt")
_LIVE: "weakref.WeakSet[CheckpointManager]" = weakref.WeakSet()


class CheckpointManager:
    """Manages the checkpoints of one training job in ``directory``.

    - ``save(state, step)`` writes ``<directory>/<checkpoint_name>-<step>``
      (skipped, returning ``None``, when ``checkpoint_interval`` steps have not
      passed since the last save), keeps the newest ``max_to_keep``, and with
      ``blocking=False`` returns a ``concurrent.futures.Future`` at once.
    - At most one save is in flight: the next ``save`` waits for it; an error
      in the background surfaces on :meth:`wait` or on the next ``save``;
      interpreter exit waits for the commit.
    - ``restore_or_initialize(state)`` fills ``state``'s arrays in place from
      the latest checkpoint and returns the restored structure (its step is
      :attr:`restored_step`), or returns ``None`` in a new directory.

    The directory stays readable and manageable by TensorFlow's
    ``CheckpointManager`` (the state file carries timestamps).
    """

    def __init__(self, directory: PathLike, max_to_keep: Optional[int] = 5,
                 keep_checkpoint_every_n_hours: Optional[float] = None, checkpoint_name: str = "ckpt",
                 checkpoint_interval: Optional[int] = None, *, durable: bool = True,
                 threads: Optional[int] = None, comm: Any = None, timeout: Optional[float] = None,
                 compression: Optional[str] = None, compression_level: int = 1, recycle: bool = False,
                 delta: bool = False, frozen: Collection[str] = (), options: Optional[SaveOptions] = None, storage_options: Optional[Mapping[str, Any]] = None) -> None:
        with using_storage(storage_options):  # checked now
            self._storage_options = dict(storage_options) if storage_options else None
        d = storage_path(directory, "directory")
        d = d.rstrip("/") if is_url(d) else d
        if not isinstance(d, str) or not d:
            raise InvalidArgumentError(f"directory must be a path, got {directory!r}")
        if not isinstance(checkpoint_name, str) or not checkpoint_name or os.sep in checkpoint_name:
            raise InvalidArgumentError(f"checkpoint_name must be a plain name, got {checkpoint_name!r}")
        if checkpoint_interval is not None and (not isinstance(checkpoint_interval, int)
                                                or isinstance(checkpoint_interval, bool) or checkpoint_interval < 1):
            raise InvalidArgumentError(f"checkpoint_interval must be None or an int >= 1, got {checkpoint_interval!r}")
        self._directory = d
        self._name = checkpoint_name
        self._interval = checkpoint_interval
        self._retention = Retention(max_to_keep, keep_checkpoint_every_n_hours, minimum=1)
        self._options = resolve_options(options, durable=durable, threads=threads, compression=compression,
                                        compression_level=compression_level, recycle=recycle, delta=delta,
                                        frozen=frozen)
        self._comm = as_communicator(comm, timeout)
        if self._options.recycle and self._comm is not None:
            raise InvalidArgumentError("recycle=True is for one-process saves: with comm= every process writes "
                                       "new files")
        latest = self.latest_checkpoint
        with using_storage(self._storage_options):
            self._last_step: Optional[int] = self._step_of(latest) if latest else None
        self._thread: Optional[threading.Thread] = None
        self._future: Optional[concurrent.futures.Future] = None
        self._owner = os.getpid()  # the process whose thread runs the save in flight
        self._buffers: Dict[str, np.ndarray] = {}
        self._restored: Optional[str] = None
        _LIVE.add(self)

    # -- what is there ----------------------------------------------------------------
    @property
    def directory(self) -> str:
        """The managed directory."""
        return self._directory

    @property
    def checkpoint_interval(self) -> Optional[int]:
        """Minimum number of steps between saves, or None."""
        return self._interval

    @property
    def latest_checkpoint(self) -> Optional[str]:
        """Prefix of the newest complete checkpoint, or None."""
        with using_storage(self._storage_options):
            if not fs.is_dir(self._directory):
                return None
            return latest_checkpoint(self._directory)

    @property
    def checkpoints(self) -> List[str]:
        """Prefixes of the kept checkpoints, oldest first."""
        with using_storage(self._storage_options):
            if not fs.is_dir(self._directory):
                return []
            st = get_checkpoint_state(self._directory)
            return list(st.all_model_checkpoint_paths) if st else []

    @property
    def steps(self) -> List[int]:
        """The steps of the kept checkpoints, oldest first (those named by
        a step)."""
        with using_storage(self._storage_options):
            steps = [self._step_of(p) for p in self.checkpoints]
        return [s for s in steps if s is not None]

    def _step_of(self, prefix: str) -> Optional[int]:
        """The step in a checkpoint's name; for a staged bundle a killed save
        left listed, the step of the name it was being committed as."""
        staged = os.path.basename(prefix).startswith(STAGE_PREFIX)  # its hex may be all digits: never a step
        m = None if staged else re.search(r"-(-?\d+)\Z", prefix)
        if m is None:
            st = get_checkpoint_state(self._directory)
            final = dict(st.pending).get(prefix) if st else None
            m = re.search(r"-(-?\d+)\Z", final) if final else None
        return int(m.group(1)) if m else None

    # -- saving --------------------------------------------------------------------------
    @overload
    def save(self, state: Any, step: Any, *, blocking: Literal[True] = ..., metadata: Any = None,
             force: bool = False) -> Optional[str]: ...

    @overload
    def save(self, state: Any, step: Any, *, blocking: Literal[False], metadata: Any = None,
             force: bool = False) -> Optional["concurrent.futures.Future[str]"]: ...

    @overload
    def save(self, state: Any, step: Any, *, blocking: bool, metadata: Any = None,
             force: bool = False) -> Union[None, str, "concurrent.futures.Future[str]"]: ...

    def save(self, state: Any, step: Any, *, blocking: bool = True, metadata: Any = None,
             force: bool = False) -> Union[None, str, "concurrent.futures.Future[str]"]:
        """Save ``state`` as step ``step``.

        Returns the prefix (blocking), a Future of it (``blocking=False``), or
        ``None`` when skipped by ``checkpoint_interval`` (``force=True``
        saves regardless). The caller may change ``state`` as soon as a
        non-blocking save returns: its arrays were copied.
        """
        n = int(step_suffix(step))
        if not force and self._skip(n):
            return None
        self.wait()  # one save in flight at most; surfaces its error
        prefix = os.path.join(self._directory, f"{self._name}-{n}")
        if self._comm is not None:
            self._comm.begin()
        flat = flatten_state(state, metadata, self._comm)  # with comm: a failure anywhere fails everywhere
        if blocking:
            self._commit(prefix, flat)
            self._last_step = n
            return prefix
        snapshot = flat._replace(leaves=self._snapshot(flat.leaves))
        future: "concurrent.futures.Future[str]" = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        thread = threading.Thread(target=self._background, args=(future, prefix, snapshot),
                                  name=f"fastckpt-save-{n}", daemon=False)  # interpreter exit waits for it
        self._future, self._thread, self._owner = future, thread, os.getpid()
        self._last_step = n
        thread.start()
        return future

    def _skip(self, step: int) -> bool:
        if self._interval is None or self._last_step is None:
            return False
        return step == self._last_step or step < self._last_step + self._interval

    def _commit(self, prefix: str, flat: FlatState) -> None:
        with using_storage(self._storage_options):  # (also in the background thread: a context of its own)
            write_checkpoint(flat, prefix, self._options, Listing(self._retention), self._comm)

    def _snapshot(self, leaves: Mapping[str, Any]) -> Dict[str, Any]:
        """Copy every leaf into a host buffer reused from the last save when
        its shape and dtype are unchanged."""
        out: Dict[str, Any] = {}
        for name, value in leaves.items():
            if isinstance(value, Shard):  # this process's part of a global tensor: its local array, copied
                out[name] = Shard(self._copy(name, to_numpy(value.local)), value.global_shape, value.offset)
            else:
                out[name] = self._copy(name, np.asarray(value))
        for stale in set(self._buffers) - set(out):
            del self._buffers[stale]
        return out

    def _copy(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` copied into the host buffer kept for ``name``."""
        if arr.dtype.kind in "OSU":
            return arr.copy()
        buf = self._buffers.get(name)
        if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype.newbyteorder("="):
            buf = self._buffers[name] = np.empty(arr.shape, arr.dtype.newbyteorder("="))
        np.copyto(buf, arr, casting="unsafe")
        return buf

    def _background(self, future: "concurrent.futures.Future[str]", prefix: str, snapshot: FlatState) -> None:
        try:
            self._commit(prefix, snapshot)
        except BaseException as e:  # surfaces on wait() / the next save
            future.set_exception(e)
        else:
            future.set_result(prefix)

    def wait(self) -> Optional[str]:
        """Wait for the save in flight; return its prefix, or raise its error."""
        thread, future = self._thread, self._future
        if thread is None or future is None:
            return None
        if self._owner != os.getpid():
            # A forked child: the save in flight belongs to the parent's
            # thread, which does not exist here; the parent commits it.
            self._thread = self._future = None
            return None
        thread.join()
        self._thread = self._future = None
        return future.result()

    # -- restoring ---------------------------------------------------------------------------
    def restore_or_initialize(self, state: Any) -> Any:
        """Restore the latest checkpoint into ``state`` and return the
        restored structure; ``None`` (state untouched) in a new directory.

        ``state``'s arrays and tensors (numpy, PyTorch, JAX views) are filled
        in place; the returned structure holds them, and the checkpoint's
        other leaves (ints, strings, None, and tensors ``state`` lacks), so
        ``opt.load_state_dict(restored["optim"])`` works. The step restored
        is :attr:`restored_step`.
        """
        self.wait()
        with using_storage(self._storage_options):
            return self._restore_or_initialize(state)

    def _restore_or_initialize(self, state: Any) -> Any:
        if self._comm is None:
            found = restore_latest(self._directory, state, self._options.threads)
        else:  # rank 0 names the checkpoint, so that every process restores the same one
            self._comm.begin()
            latest = self._comm.broadcast(self.latest_checkpoint if self._comm.rank == 0 else None)
            found = None if latest is None else (latest, restore_structure(latest, into=state, threads=self._options.threads,
                                                                           comm=self._comm))
        if found is None:
            self._restored = None
            return None
        prefix, restored = found
        self._restored = prefix
        self._last_step = self._step_of(prefix)
        return restored

    def restore(self, step: Optional[int] = None, *, into: Any = None, verify: bool = True,
                copy_on_write: Optional[bool] = None) -> Any:
        """Restore the checkpoint of ``step`` (default: the latest) and
        return its structure, as :func:`fastckpt.restore` does (``into``
        filled in place when given). No such checkpoint:
        :class:`NotFoundError` naming the steps there are. Afterwards
        :attr:`restored_step` is ``step`` and ``checkpoint_interval``
        counts from it."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
            raise InvalidArgumentError(f"step must be an int or None, got {step!r}")
        self.wait()
        with using_storage(self._storage_options):
            if self._comm is not None:  # rank 0 names the checkpoint: every process restores the same one
                self._comm.begin()
                prefix, missing = self._comm.broadcast(self._find(step) if self._comm.rank == 0 else None)
            else:
                prefix, missing = self._find(step)
            if prefix is None:
                raise NotFoundError(missing)
            restored = restore_structure(prefix, into=into, verify=verify, threads=self._options.threads,
                                         comm=self._comm, copy_on_write=copy_on_write)
            self._restored = prefix
            self._last_step = self._step_of(prefix)
        return restored

    def _find(self, step: Optional[int]) -> Tuple[Optional[str], str]:
        """``(prefix, "")`` of ``step`` (None: the latest), or ``(None,
        what there is)`` (so that rank 0 can send either to the others)."""
        if step is None:
            latest = self.latest_checkpoint
            return (latest, "") if latest is not None else (None, f"no checkpoint in {self._directory}")
        for prefix in reversed(self.checkpoints):
            if self._step_of(prefix) == int(step):
                return prefix, ""
        have = self.steps
        return None, (f"no checkpoint of step {int(step)} in {self._directory}; "
                      f"{'steps kept: ' + ', '.join(map(str, have)) if have else 'it holds none'}")

    @property
    def restored_checkpoint(self) -> Optional[str]:
        """The prefix the last :meth:`restore` or :meth:`restore_or_initialize` restored, or None."""
        return self._restored

    @property
    def restored_step(self) -> Optional[int]:
        """The step the last :meth:`restore` or :meth:`restore_or_initialize` restored, or None."""
        with using_storage(self._storage_options):
            return self._step_of(self._restored) if self._restored else None

    def __repr__(self) -> str:
        return f"<fastckpt.CheckpointManager {self._directory!r}: {len(self.checkpoints)} checkpoints>"


@atexit.register
def _report_unfinished() -> None:
    """Background saves have finished by now (their threads are not daemons);
    make sure a failure nobody waited for is not silent."""
    for mgr in list(_LIVE):
        future = mgr._future
        if future is not None and future.done() and future.exception() is not None:
            log.error("fastckpt: a background save failed and nobody waited for it: %s", future.exception())
            print(f"fastckpt: a background save failed: {future.exception()}", flush=True)

