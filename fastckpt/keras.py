"""Keras: ``model.fit(..., callbacks=[fastckpt.keras.BackupAndRestore("backup/")])``
checkpoints the model's and the optimizer's variables through fastckpt in
the background and, when ``fit`` starts again after an interruption,
restores them and continues from the epoch after the last one saved -- the
shape of ``keras.callbacks.BackupAndRestore``, with fastckpt's crash-safe
commits (a save killed midway leaves the previous checkpoint the latest).

The checkpoint is a TensorFlow bundle per epoch in ``backup_dir`` (the
newest two kept): ``model/<variable path>`` (``model/dense/kernel``, Keras'
own paths without the model's name) and ``optimizer/<variable path>``
tensors, and the epoch.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Optional

import keras
import numpy as np

from fastckpt.bundle.naming import local_path
from fastckpt.errors import InvalidArgumentError
from fastckpt.manager import CheckpointManager
from fastckpt.storage import local

__all__ = ["BackupAndRestore"]


class BackupAndRestore(keras.callbacks.Callback):
    """Back up ``model`` and its optimizer to ``backup_dir`` at the end of
    every epoch (``save_freq="epoch"``) or every ``save_freq`` batches, in
    the background unless ``blocking``; restore them when training begins
    if a backup is there; remove the backups when training ends
    (``delete_checkpoint``)."""

    def __init__(self, backup_dir: Any, save_freq: Any = "epoch", delete_checkpoint: bool = True,
                 blocking: bool = False, durable: bool = True) -> None:
        super().__init__()
        self.backup_dir = local_path(backup_dir, "backup_dir")
        if not self.backup_dir:
            raise InvalidArgumentError("backup_dir must name a directory")
        if save_freq != "epoch" and (type(save_freq) is not int or save_freq < 1):
            raise InvalidArgumentError(f"save_freq must be 'epoch' or an int >= 1, got {save_freq!r}")
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self._blocking = bool(blocking)
        self._mgr = CheckpointManager(self.backup_dir, max_to_keep=2, durable=durable)
        self._epoch = 0
        self._batches = 0
        self._saves = 0
        # Background saves run in a thread of this callback's own, each a blocking save of the
        # copies _values made: the manager's non-blocking save would copy them a second time.
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None

    def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
        """Restore the latest backup, if any, and start from its epoch."""
        if self._mgr.latest_checkpoint is None:
            return
        restored = self._mgr.restore()
        model = self.model
        if not model.built:
            raise InvalidArgumentError("fastckpt.keras.BackupAndRestore: build the model (call it on a batch) "
                                       "before fit(), so that its variables exist to be restored")
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        _assign(model.variables, restored["model"], "model", model.name)
        if optimizer is not None and "optimizer" in restored:
            _assign(optimizer.variables, restored["optimizer"], "optimizer", None)
        self._epoch = int(restored["epoch"])
        model._initial_epoch = self._epoch  # how Keras' own BackupAndRestore resumes fit() at that epoch

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._epoch = epoch + 1
        if self.save_freq == "epoch":
            self._save()

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self._save()

    def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
        """Wait for the save in flight; remove the backups if asked to."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self.delete_checkpoint and local.is_dir(self.backup_dir):
            local.remove_tree(self.backup_dir)

    def _save(self) -> None:
        model = self.model
        state: Dict[str, Any] = {"model": _values(model.variables, model.name), "epoch": self._epoch}
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            state["optimizer"] = _values(optimizer.variables, None)
        self._wait()  # one save at a time; its error is raised here
        self._saves += 1
        if self._blocking:
            self._mgr.save(state, self._saves, force=True)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastckpt-keras")
        self._pending = self._pool.submit(self._mgr.save, state, self._saves, force=True)

    def _wait(self) -> None:
        """Wait for the background save in flight, raising its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def _name(v: Any, model_name: Optional[str]) -> str:
    """A variable's path (Keras 3: ``sequential/dense/kernel``), without
    the model's own name (``dense/kernel``: the same in the next process
    and for a model made again in this one)."""
    name = getattr(v, "path", None) or v.name
    if model_name and name.startswith(model_name + "/"):
        return name[len(model_name) + 1:]
    return name


def _values(variables: Any, model_name: Optional[str]) -> Dict[str, np.ndarray]:
    """Each variable's value by its name (:func:`_name`), in order."""
    out: Dict[str, np.ndarray] = {}
    for v in variables:
        name = _name(v, model_name)
        if name in out:
            raise InvalidArgumentError(f"two variables share the path {name!r}: rename a layer")
        # Variable.numpy(): one copy on TensorFlow's backend (convert_to_numpy made two, measured)
        value = np.asarray(v.numpy() if hasattr(v, "numpy") else keras.ops.convert_to_numpy(v))
        # a copy this callback owns (written in the background while training changes the variable;
        # a backend's zero-copy view of its buffer would not be a snapshot)
        out[name] = value if value.flags.owndata and value.base is None else value.copy()
    return out


def _assign(variables: Any, values: Dict[str, Any], what: str, model_name: Optional[str]) -> None:
    """Assign every variable its saved value: by name, or -- where names
    differ (an optimizer's names embed the model's automatic name) -- by
    position, as Keras' own backups do, when the count and every shape
    agree. Checked first: a mismatch changes nothing."""
    variables = list(variables)
    names = [_name(v, model_name) for v in variables]
    if all(n in values for n in names):
        saved = [np.asarray(values[n]) for n in names]
    elif len(values) == len(variables):
        saved = [np.asarray(v) for v in values.values()]  # (the record keeps the saved order)
    else:
        missing = [n for n in names if n not in values]
        raise InvalidArgumentError(f"the backup has {len(values)} {what} variables, this {what} {len(variables)}; "
                                   f"not in the backup: {', '.join(missing[:5])}: another model?")
    for v, n, value in zip(variables, names, saved):
        if tuple(value.shape) != tuple(v.shape):
            raise InvalidArgumentError(f"{what} variable {n!r} is {list(v.shape)}, the backup's {list(value.shape)}")
    for v, value in zip(variables, saved):
        v.assign(value)
