"""The one save path: ``fastckpt.save``, ``Saver.save`` and
``CheckpointManager.save`` all flatten the state once
(:func:`flatten_state`) and hand it to :func:`write_checkpoint` with one
checked :class:`SaveOptions` record and a :class:`Listing` (what the
directory's state file does with the new checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional

import numpy as np

from fastckpt.bundle.naming import PathLike, is_url, storage_path
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.slices import Shard
from fastckpt.bundle.writer import check_options, compression_setting
from fastckpt.collective import LocalCommunicator, agreed, save_collective
from fastckpt.comm import Communicator
from fastckpt.directory.commit import committer, recover_directory, save_checkpoint
from fastckpt.directory.objectcommit import ObjectSave, save_object_checkpoint
from fastckpt.directory.locate import open_checkpoint
from fastckpt.directory.retention import Retention
from fastckpt.errors import InvalidArgumentError, UnsupportedError
from fastckpt.structure.objectgraph import object_graph_tensors, template_tensors
from fastckpt.structure.tree import flatten, non_tensor_values
from fastckpt.structure.record import with_structure_record

__all__ = ["SaveOptions", "Listing", "FlatState", "flatten_state", "object_graph_state", "write_checkpoint",
           "check_flag", "resolve_options"]


def check_flag(value: Any, name: str) -> bool:
    """``value`` if it is a bool, else :class:`InvalidArgumentError` naming ``name``."""
    if type(value) is not bool:
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class SaveOptions:
    """How a checkpoint is written, checked when it is made.

    ``durable``: fsync data, index and directory before the checkpoint is
    named. ``num_shards``: data files of a one-process save.
    ``alignment``: tensor offsets rounded up to this many bytes.
    ``threads``: writer threads (None: the machine's cores).
    ``compression="zstd"`` with ``compression_level`` (-7..22): byte-plane
    zstd frames (:func:`fastckpt.write_bundle`). ``recycle``: rewrite the
    data files of the checkpoint retention drops instead of new ones.
    ``delta``: tensors whose bytes equal the previous checkpoint's are not
    written again; the new checkpoint shares that checkpoint's data file by
    a hard link and stays a complete bundle (:mod:`fastckpt.bundle.delta`).
    ``frozen``: names (or name prefixes: ``"model/encoder"``) of tensors the
    caller vouches are unchanged since the previous save: with ``delta``,
    reused without being read.
    """

    durable: bool = True
    num_shards: int = 1
    alignment: int = 1
    threads: Optional[int] = None
    compression: Optional[str] = None
    compression_level: int = 1
    recycle: bool = False
    delta: bool = False
    frozen: Collection[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "durable", bool(self.durable))
        check_flag(self.recycle, "recycle")
        check_flag(self.delta, "delta")
        if isinstance(self.frozen, (str, bytes)) or not isinstance(self.frozen, Iterable) \
                or not all(isinstance(n, str) and n for n in self.frozen):
            raise InvalidArgumentError(f"frozen must be a collection of tensor names, got {self.frozen!r}")
        object.__setattr__(self, "frozen", frozenset(self.frozen))
        if self.frozen and not self.delta:
            raise InvalidArgumentError("frozen= names tensors a delta save reuses: it needs delta=True")
        if self.delta and self.recycle:
            raise InvalidArgumentError("delta=True and recycle=True: choose one (a delta save shares the previous "
                                       "checkpoint's files, which recycling would rewrite)")
        if self.delta and self.compression not in (None, "none"):
            raise InvalidArgumentError("delta=True writes uncompressed payloads: compression must be None")
        if self.delta and self.num_shards != 1:
            raise InvalidArgumentError("a delta save chooses its own data files: num_shards must be 1")
        check_options(self.num_shards, self.alignment, self.threads)
        compression_setting(self.compression, self.compression_level)

    @property
    def zstd_level(self) -> Optional[int]:
        """The zstd level, or None for payloads stored as they are."""
        return compression_setting(self.compression, self.compression_level)

    def replace(self, **changes: Any) -> "SaveOptions":
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)


_DEFAULTS = SaveOptions()


def resolve_options(options: Optional[SaveOptions], **given: Any) -> SaveOptions:
    """``options``, or the record the keyword arguments make; both at once is
    an error unless the keywords are all at their defaults."""
    if options is None:
        return SaveOptions(**given)
    if not isinstance(options, SaveOptions):
        raise InvalidArgumentError(f"options must be a fastckpt.SaveOptions, got {type(options).__name__}")
    changed = [k for k, v in given.items() if v != getattr(_DEFAULTS, k) and not (k == "frozen" and not v)]
    if changed:
        raise InvalidArgumentError(f"pass either options= or {', '.join(changed)}, not both")
    return options


@dataclass(frozen=True)
class Listing:
    """What the directory's state file does with a new checkpoint: list it
    in ``state_name`` and apply ``retain`` (``write_state=True``), or
    nothing (``fastckpt.save``: the checkpoint is renamed into place)."""

    retain: Any = dataclasses.field(default_factory=Retention)
    state_name: str = "checkpoint"
    write_state: bool = True


class FlatState(NamedTuple):
    """A state flattened once: tensors by joined path, the tree (None for a
    flat dict of arrays without metadata), the metadata, and ``extra``
    tensors stored beside the structure record (a TensorFlow 2 object graph)."""

    leaves: Mapping[str, Any]
    tree: Any
    metadata: Any = None
    extra: Optional[Mapping[str, Any]] = None


def flatten_state(state: Any, metadata: Any, comm: Optional[Communicator] = None) -> FlatState:
    """``state`` flattened: a plain dict of numpy arrays with no metadata
    needs no structure record (it restores as the same flat dict). With
    ``comm``, a state one process cannot flatten fails on every process."""
    if comm is not None:
        return agreed(comm, "describing the state", lambda: flatten_state(state, metadata))
    if (metadata is None and type(state) is dict and all(type(v) is np.ndarray for v in state.values())
            and all(type(k) is str for k in state)):
        return FlatState(state, None, None)
    if isinstance(state, Mapping) and not state:
        return FlatState({}, {"dict": []} if metadata is not None else None, metadata)
    leaves, tree = flatten(state)
    return FlatState(leaves, tree, metadata)


def object_graph_state(state: Any, metadata: Any, template: Optional[PathLike]) -> FlatState:
    """The tensors to save for ``object_graph=True`` (or ``template``): a
    TensorFlow 2 object graph of the state (or the template's keys)."""
    flat = flatten_state(state, None)
    if template is not None:
        if metadata is not None:
            raise InvalidArgumentError("a save with template= stores the template's keys only: no metadata")
        values = non_tensor_values(flat.tree)
        if values:
            raise InvalidArgumentError(f"template=: the state holds non-tensor values ({', '.join(values[:5])}); "
                                       "a TensorFlow 2 checkpoint holds only variables")
        def use(prefix: str) -> Dict[str, Any]:
            with CheckpointReader(prefix) as reader:
                return template_tensors(flat.leaves, reader)
        return FlatState(open_checkpoint(storage_path(template, "template"), use), None)
    leaves, tree, extra = object_graph_tensors(flat.leaves, flat.tree)
    return FlatState(leaves, tree, metadata, extra)


def write_checkpoint(flat: FlatState, prefix: str, options: SaveOptions, listing: Listing,
                     comm: Optional[Communicator] = None) -> List[str]:
    """Write ``flat`` as checkpoint ``prefix`` and list it; returns the
    prefixes listed afterwards. One process (the commit of
    :mod:`fastckpt.directory.commit`), or every process of ``comm`` (which
    the caller has begun) -- also one process whose state holds
    :class:`~fastckpt.Shard` parts (:mod:`fastckpt.collective`)."""
    if options.delta and (comm is not None or is_url(prefix)):
        raise UnsupportedError(f"{prefix}: delta saves are for one process on a local file system "
                               "(save without delta=True)")
    if comm is None and not any(isinstance(v, Shard) for v in flat.leaves.values()):
        tensors = with_structure_record(flat.leaves, flat.tree, flat.metadata)
        if flat.extra:
            tensors = {**tensors, **flat.extra}
        if is_url(prefix):
            if options.recycle:
                raise InvalidArgumentError(f"{prefix}: recycle=True rewrites local files in place; an object "
                                           "store has no such thing (save without recycle)")
            return save_object_checkpoint(prefix, tensors, retain=listing.retain, num_shards=options.num_shards,
                                          alignment=options.alignment, threads=options.threads,
                                          state_name=listing.state_name, write_state=listing.write_state,
                                          zstd_level=options.zstd_level)
        return save_checkpoint(prefix, tensors, retain=listing.retain, durable=options.durable,
                               num_shards=options.num_shards, alignment=options.alignment, threads=options.threads,
                               state_name=listing.state_name, write_state=listing.write_state,
                               zstd_level=options.zstd_level, recycle=options.recycle,
                               delta=options.frozen if options.delta else None)
    if options.delta:
        raise UnsupportedError("delta saves are for one process: a state holding Shards is saved without delta=True")
    if options.num_shards != 1:
        raise InvalidArgumentError("a checkpoint saved by several processes has one data file per process: "
                                   "num_shards must be 1")
    if options.recycle:
        raise InvalidArgumentError("recycle=True is for one-process saves: with comm= every process writes new files")
    objects = None
    if is_url(prefix):
        objects = ObjectSave(prefix, listing.retain, comm.size if comm is not None else 1, listing.state_name,
                             listing.write_state)

    def prepare(directory: str) -> Any:
        return recover_directory(directory, listing.state_name, durable=options.durable, tidy_state=False)
    return save_collective((flat.leaves, flat.tree), prefix, comm if comm is not None else LocalCommunicator(),
                           metadata=flat.metadata, durable=options.durable, alignment=options.alignment,
                           zstd_level=options.zstd_level, threads=options.threads,
                           commit=committer(prefix, listing.retain, listing.state_name, listing.write_state),
                           prepare_directory=prepare if listing.write_state else None, objects=objects)
