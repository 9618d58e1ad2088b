"""PyTorch Lightning: ``Trainer(plugins=[FastCheckpointIO()])`` saves and
resumes through fastckpt.

Each checkpoint Lightning names (``epoch=3-step=120.ckpt``, ``last.ckpt``)
is a directory holding one TensorFlow bundle: the model's and optimizer's
tensors as tensors of the bundle, Lightning's counters and callback states
in its structure record. The directory appears under its name in one
rename, complete (a save killed before leaves only a ``.fcsave-lightning-``
directory that no ``*.ckpt`` glob matches, removed by the next save on the
same host), so ``ckpt_path="last"`` finds a
checkpoint that restores, and Lightning's ``last.ckpt`` link works as for a
file. Values fastckpt does not store natively (hyper-parameters holding
arbitrary objects) are pickled by ``torch.save`` into a tensor of bytes and
loaded back by ``torch.load`` with the ``weights_only`` Lightning asks for.

Background saves: wrap it, ``AsyncCheckpointIO(FastCheckpointIO())``.
"""

from __future__ import annotations

import io
import os
import re
import socket
import uuid
from typing import Any, Dict, Optional

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from fastckpt.errors import CheckpointError, InvalidArgumentError, NotFoundError
from fastckpt.restoring import restore_structure
from fastckpt.saver import save
from fastckpt.bundle.naming import local_path
from fastckpt.storage import local
from fastckpt.storage.fsutil import ensure_directory, fsync_dir
from fastckpt.structure.tree import flatten

__all__ = ["FastCheckpointIO"]

_PICKLED = "_fastckpt_pickled"  # top-level key: {key: bytes of torch.save} for what is not stored natively
_BUNDLE = "checkpoint"  # the bundle's prefix inside a checkpoint's directory
_STAGED = ".fcsave-lightning-"  # + host-pid-random: a checkpoint directory being written
_STAGED_NAME = re.compile(r"\.fcsave-lightning-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}(-old)?\Z")


class FastCheckpointIO(CheckpointIO):
    """Lightning's ``CheckpointIO`` writing TensorFlow-format bundles with
    fastckpt (``durable``, ``threads``, ``compression`` as for
    :func:`fastckpt.save`)."""

    def __init__(self, *, durable: bool = True, threads: Optional[int] = None,
                 compression: Optional[str] = None) -> None:
        self._options: Dict[str, Any] = {"durable": durable, "threads": threads, "compression": compression}

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` as the directory ``path`` (replacing one there)."""
        if storage_options is not None:
            raise InvalidArgumentError("FastCheckpointIO takes no storage_options (pass fastckpt's options to it)")
        target = local_path(path, "path")
        parent = os.path.dirname(os.path.abspath(target))
        ensure_directory(parent)
        _remove_abandoned(parent)
        staged = os.path.join(parent, f"{_STAGED}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}")
        local.make_dir(staged)
        try:
            save(_storable(checkpoint), os.path.join(staged, _BUNDLE), **self._options)
            _put_in_place(staged, target)
            if self._options["durable"]:
                fsync_dir(parent)  # the rename itself survives a power cut
        except BaseException:
            local.remove_tree(staged)
            raise

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        """The checkpoint at ``path`` (a directory this plugin wrote, or a
        link to one), tensors moved with ``map_location``."""
        p = local_path(path, "path")
        if not local.is_dir(p):
            raise NotFoundError(f"no fastckpt Lightning checkpoint at {p}: it is not a directory"
                                + (" (a file: torch.save's format? load it without FastCheckpointIO)"
                                   if local.is_file(p) else ""))
        restored = restore_structure(os.path.join(p, _BUNDLE))
        if not isinstance(restored, dict):
            raise CheckpointError(f"{p}: not a Lightning checkpoint (its state is a {type(restored).__name__})")
        pickled = restored.pop(_PICKLED, None) or {}
        if pickled:
            import torch
            for key, blob in pickled.items():
                restored[key] = torch.load(io.BytesIO(bytes(blob)), map_location="cpu",
                                           weights_only=True if weights_only is None else weights_only)
        if map_location is not None:
            restored = _moved(restored, map_location)
        return restored

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint directory ``path`` (or the link)."""
        p = local_path(path, "path")
        if local.is_link(p) or local.is_file(p):
            local.delete(p)
        elif local.is_dir(p):
            local.remove_tree(p)


def _storable(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """``checkpoint`` with each top-level value fastckpt cannot store
    natively pickled (by ``torch.save``) into bytes under one key."""
    out: Dict[str, Any] = {}
    pickled: Dict[str, bytes] = {}
    for key, value in checkpoint.items():
        try:
            flatten({key: value})
        except InvalidArgumentError:
            import torch
            buf = io.BytesIO()
            torch.save(value, buf)
            pickled[key] = buf.getvalue()
            continue
        out[key] = value
    if pickled:
        out[_PICKLED] = pickled
    return out


def _remove_abandoned(parent: str) -> None:
    """Remove the staged directories of saves killed on this host (their
    process is gone); another host's, or a live process's, are left."""
    host = socket.gethostname()
    try:
        names = local.listdir(parent)
    except OSError:
        return
    for name in names:
        m = _STAGED_NAME.match(name)
        if m is None or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and not local.pid_alive(pid):
            local.remove_tree(os.path.join(parent, name))


def _put_in_place(staged: str, target: str) -> None:
    """Rename the complete directory ``staged`` to ``target``; a directory
    (or link) there is moved aside first and removed after."""
    old = None
    if local.is_link(target) or local.is_file(target):
        local.delete(target)
    elif local.is_dir(target):
        old = f"{staged}-old"
        local.rename(target, old)
    local.rename(staged, target)
    if old is not None:
        local.remove_tree(old)


def _moved(tree: Any, map_location: Any) -> Any:
    import torch
    if isinstance(tree, torch.Tensor):
        if callable(map_location) and not isinstance(map_location, (str, torch.device)):
            return map_location(tree, "cpu")
        if isinstance(map_location, dict):
            return tree
        return tree.to(map_location)
    if isinstance(tree, dict):
        return type(tree)((k, _moved(v, map_location)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_moved(v, map_location) for v in tree)
    return tree
