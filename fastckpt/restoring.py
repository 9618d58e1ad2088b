"""The one restore path: a checkpoint back in the structure it was saved
in (the structure record), as TensorFlow 2's object tree, or as a flat dict;
into live objects (``into=``) or fresh; from one process or every process of
a communicator. The bundle reader below knows nothing of structure."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple

import numpy as np

from fastckpt import _core
from fastckpt.bundle.delta import DELTA_KEY
from fastckpt.bundle.dtypes import DT_STRING, DT_VARIANT, numpy_dtype
from fastckpt.bundle.frameworks import is_array, to_numpy
from fastckpt.bundle.naming import PathLike
from fastckpt.bundle.reader import CheckpointReader, copy_on_write_default
from fastckpt.bundle.readplan import find_entry
from fastckpt.bundle.slices import Shard, encode_slice_key
from fastckpt.collective import agreed
from fastckpt.comm import as_communicator
from fastckpt.directory.locate import open_checkpoint
from fastckpt.directory.state import latest_checkpoint
from fastckpt.errors import InvalidArgumentError, NotFoundError
from fastckpt.structure.target import has_immutable_leaves, rebuild
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY, restore_object_tree
from fastckpt.structure.tree import leaf_targets, unflatten
from fastckpt.structure.record import read_record
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = ["restore_structure", "read_meta", "restore_latest"]


def read_meta(prefix: PathLike, *, storage_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The structure record (``structure``, ``leaves`` with dtype and shape,
    ``metadata``) of a checkpoint written by :func:`fastckpt.save`, checked
    against the index, reading no other tensor. Raises
    :class:`NotFoundError` when the checkpoint has none (TensorFlow's, or a
    flat dict of arrays saved without metadata)."""
    with using_storage(storage_options):
        with CheckpointReader(prefix) as reader:
            record = read_record(reader)
        if record is None:
            raise NotFoundError(f"checkpoint {reader.prefix!r} has no structure record (not written by fastckpt's "
                                "save from nested state or with metadata)")
        return record


def restore_structure(prefix: PathLike, into: Optional[Any] = None, *, verify: bool = True,
                      threads: Optional[int] = None, comm: Any = None, timeout: Optional[float] = None,
                      storage_options: Optional[Mapping[str, Any]] = None,
                      copy_on_write: Optional[bool] = None, target: Any = None, by_name: bool = False) -> Any:
    """Read checkpoint ``prefix`` (a prefix, or a directory: its latest
    checkpoint) back in the structure it was saved in, every leaf of the
    type it had (PyTorch, JAX and TensorFlow tensors as tensors of their
    framework when it is installed); checkpoints without a structure record
    come back as TensorFlow wrote them: a TensorFlow 2 checkpoint as the
    object tree of its object graph (:mod:`fastckpt.structure.objectgraph`), any other
    as a flat dict.

    With ``into`` (the saved structure or part of it, or a flat dict), its
    arrays and tensors are filled in place, and the whole restored structure
    is returned with ``into``'s own objects in their places: the non-array
    leaves (ints, strings, None) and the tensors ``into`` lacks (an
    optimizer's state before its first step) come from the checkpoint.
    Shapes and dtypes are checked before anything is read; an array of
    ``into`` that the checkpoint does not hold is an error.

    :class:`~fastckpt.Shard` leaves of ``into`` are filled with their region
    of the global tensor, whatever slicing the checkpoint was saved with.
    With ``comm``, every process restores its own part and they agree that
    all succeeded (a failure anywhere raises everywhere).

    New arrays are copies: training writes what it restores, and a written
    page of a copy-on-write map costs more than copying it here (measured:
    docs/performance.md). ``copy_on_write=True`` returns maps of the data
    files instead (for states that are only read: inference, evaluation,
    loading into a model that copies); ``FASTCKPT_COPY_ON_WRITE`` in the
    environment sets the default.

    With ``target`` (a tree of the saved structure, or part of it), a new
    tree of ``target``'s own structure is returned -- NamedTuples (optax
    states), dataclass pytrees (Flax), dicts, lists, tuples rebuilt as the
    target has them -- each leaf the checkpoint's value as the target leaf's
    kind: a JAX array placed with the target's sharding, a PyTorch tensor
    on its device, a numpy array (:func:`fastckpt.structure.target.rebuild`).
    For immutable trees, which cannot be filled: an ``into`` holding JAX
    arrays is taken as a ``target``.

    ``by_name=True`` (TensorFlow 2 checkpoints only) lays the variables out
    by the names their framework gave them instead of by object path:
    ``{"hidden": {"kernel": ...}, "adam": {"hidden_kernel_momentum": ...}}``
    for a Keras 3 model and its optimizer, each variable once; ``into`` is
    then laid out the same way. ``save(..., template=)`` takes either layout.
    """
    if target is not None and into is not None:
        raise InvalidArgumentError("give into= (filled in place) or target= (a new tree of its structure), not both")
    if into is not None and has_immutable_leaves(into):
        into, target = None, into
    if target is not None:
        restored = restore_structure(prefix, verify=verify, threads=threads, comm=comm, timeout=timeout,
                                     storage_options=storage_options, copy_on_write=copy_on_write, by_name=by_name)
        return rebuild(target, restored)
    cow = copy_on_write_default(restoring=True) if copy_on_write is None else bool(copy_on_write)
    with using_storage(storage_options):
        if comm is None:
            return open_checkpoint(prefix, lambda p: _restore_from(p, into, verify, threads, cow, by_name))
        communicator = as_communicator(comm, timeout)
        assert communicator is not None
        communicator.begin()
        return agreed(communicator, "restoring",
                      lambda: open_checkpoint(prefix, lambda p: _restore_from(p, into, verify, threads, cow, by_name)))


def _restore_from(prefix: str, into: Optional[Any], verify: bool, threads: Optional[int], cow: bool,
                  by_name: bool = False) -> Any:
    with CheckpointReader(prefix, verify=verify, threads=threads, copy_on_write=cow) as reader:
        record = read_record(reader)
        if by_name:  # the object graph's names, whoever wrote it
            if not reader.has_tensor(OBJECT_GRAPH_KEY):
                raise InvalidArgumentError(f"by_name=True: {prefix!r} has no TensorFlow 2 object graph, whose "
                                           "variables have names (restore it without by_name)")
            return restore_object_tree(reader, into, by_name=True)
        if record is None:  # a TensorFlow checkpoint: its object tree (TensorFlow 2), or a flat dict
            if reader.has_tensor(OBJECT_GRAPH_KEY):
                return restore_object_tree(reader, into)
            return _restore_flat(reader, into)
        tree, leaves = record["structure"], record["leaves"]
        if into is None:
            return unflatten(tree, reader.read(list(leaves)), leaves)
        targets, owners = leaf_targets(tree, into)
        fresh = reader.read([n for n in leaves if n not in targets])
        _fill(reader, targets)
        return unflatten(tree, fresh, leaves, owners)


def _fill(reader: Any, targets: Mapping[str, Any]) -> None:
    """Fill arrays in place (checked before anything is read), and Shards'
    local parts with their region of the global tensor."""
    parts = {n: t for n, t in targets.items() if isinstance(t, Shard)}
    for name, part in parts.items():  # checked before any read, like the whole ones
        stored = tuple(find_entry(reader.index, reader.prefix, name)[1].shape)
        if tuple(part.global_shape) != stored:
            raise InvalidArgumentError(f"into: {name!r} is a Shard of global shape {list(part.global_shape)}, "
                                       f"the checkpoint's tensor has shape {list(stored)}")
    reader.read(into={n: t for n, t in targets.items() if n not in parts})
    for name, part in _read_stored_parts(reader, parts).items():
        local = to_numpy(part.local)
        if local.flags.c_contiguous and local.flags.writeable:
            reader.read_region(name, part.offset, part.shape, out=local)
        else:
            np.copyto(local, reader.read_region(name, part.offset, part.shape))


def _read_stored_parts(reader: Any, parts: Mapping[str, Shard]) -> Dict[str, Shard]:
    """Read, in one parallel batch, every Shard whose region is exactly one
    stored entry (restoring with the sharding it was saved with, or a
    replica of a whole tensor); returns the others (read region by region)."""
    rest: Dict[str, Shard] = {}
    if reader.files.remote or reader.index.compressed or reader.index.big_endian:
        return dict(parts)
    fds: List[Any] = []
    offsets: List[int] = []
    buffers: List[np.ndarray] = []
    crcs: List[Optional[int]] = []
    what: List[str] = []
    copies: List[Tuple[np.ndarray, np.ndarray]] = []
    for name, part in parts.items():
        key, entry = find_entry(reader.index, reader.prefix, name)
        stored: Any = None
        if entry.dtype not in (DT_STRING, DT_VARIANT):
            if entry.slices:
                i = reader.index.find(encode_slice_key(key, part.extents()))
                if i >= 0:
                    stored = reader.index.entry(i)
                    if stored.dtype != entry.dtype or tuple(stored.shape) != part.shape or stored.slices:
                        stored = None
            elif tuple(entry.shape) == part.shape:
                stored = entry
        local = to_numpy(part.local)
        npdt = numpy_dtype(entry.dtype) if stored is not None else None
        if (stored is None or npdt is None or local.dtype.newbyteorder("=") != npdt
                or (reader.verifies and stored.crc is None) or stored.size != local.nbytes):
            rest[name] = part
            continue
        fds.append(reader.files.check_range(name, stored.shard, stored.offset, stored.size))
        buf = local if (local.flags.c_contiguous and local.flags.writeable and local.dtype.byteorder in "=|<") \
            else np.empty(part.shape, npdt)
        if buf is not local:
            copies.append((local, buf))
        offsets.append(stored.offset)
        buffers.append(buf)
        crcs.append(_core.unmask_crc(stored.crc) if reader.verifies else None)
        what.append(f"{reader.files.path(stored.shard)}: tensor {name!r}")
    if buffers:
        reader.files.read_many(fds, offsets, buffers, crcs, reader.threads, lambda i: what[i])
    for local, buf in copies:
        np.copyto(local, buf)
    return rest


def _restore_flat(reader: Any, into: Optional[Any]) -> Dict[str, Any]:
    if into is None:
        return reader.read([n for n in reader.tensor_names() if n != DELTA_KEY])
    if not isinstance(into, Mapping):
        raise InvalidArgumentError(f"into: this checkpoint holds a flat dict of tensors, not a {type(into).__name__}")
    targets: MutableMapping[str, Any] = {k: v if isinstance(v, Shard) else to_numpy(v) for k, v in into.items()
                                         if is_array(v) or isinstance(v, Shard)}
    names = [n for n in reader.tensor_names() if n != DELTA_KEY]
    fresh = reader.read([n for n in names if n not in targets])
    _fill(reader, targets)
    return {n: into[n] if n in targets else fresh[n] for n in names}


def restore_latest(directory: str, into: Any, threads: Optional[int]) -> Optional[Tuple[str, Any]]:
    """Restore the directory's latest checkpoint into ``into``: its prefix and
    the restored structure (None without one), even while saves replace it."""
    if not fs.is_dir(directory) or latest_checkpoint(directory) is None:
        return None

    def use(prefix: str) -> Tuple[str, Any]:
        return prefix, restore_structure(prefix, into=into, threads=threads)
    return open_checkpoint(directory, use)
