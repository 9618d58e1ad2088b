"""Many processes, one checkpoint.

Every process calls ``save(state, prefix, comm=...)``. Each describes its
leaves (whole arrays, and :class:`~fastckpt.bundle.slices.Shard` parts of global
tensors); the descriptions are all-gathered, so every process computes the
same layout: which process writes each replicated array (the replicas'
bytes spread over the processes that hold them), each partitioned tensor's
dtype and global shape, and the merged structure record. Each process then
writes its one data file, ``<staged>.data-{rank}-of-{N}``, under the
private name rank 0 chose, fsync'd when durable, and keeps it locked. The
processes agree that every write succeeded; only then rank 0 merges the
per-process index records (offsets, sizes and CRCs are kept, only the shard
number changes: TensorFlow's MergeBundles) into the one ``.index``, with
each partitioned tensor stored as TensorFlow stores partitioned variables,
and commits the staged bundle exactly as a single-process save does
(``commit.commit_checkpoint``: state file, retention, recovery). If any
process fails or does not arrive in time, nobody commits, every process
raises, and the files written are removed (or, when the commit itself was
cut short, left for recovery to finish or clean).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, TypeVar

import numpy as np

from fastckpt import _core
from fastckpt.comm import Communicator, PeerError
from fastckpt.errors import CheckpointError, InvalidArgumentError
from fastckpt.bundle.dtypes import dtype_enum
from fastckpt.bundle.frameworks import to_numpy
from fastckpt.storage.fsutil import default_threads, ensure_directory, io_error
from fastckpt.bundle.naming import data_filename, index_filename
from fastckpt.directory.objectcommit import ObjectSave
from fastckpt.bundle.slices import Shard, SliceKey, encode_slice_key, first_overlap
from fastckpt.structure.record import STRUCTURE_KEY, record_tensor
from fastckpt.bundle.writer import (STAGE_PREFIX, StagedBundle, check_prefix, plan_bundle, upload_plan, write_part,
                                    write_staged_index)
from fastckpt.storage import fs

__all__ = ["save_collective", "merge_records", "full_entries", "Layout", "plan_layout", "LocalCommunicator"]

T = TypeVar("T")


class LocalCommunicator(Communicator):
    """One process: what ``comm=None`` means when a state holds Shards."""

    rank, size, timeout = 0, 1, 0.0

    def allgather(self, obj: Any) -> List[Any]:
        return [obj]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        return None


# ---- agreeing -------------------------------------------------------------------------

def agreed(comm: Communicator, step: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` here and agree with every process that it succeeded: a
    failure anywhere raises everywhere (the failing process its own error,
    the others a :class:`PeerError` naming it)."""
    error: Optional[BaseException] = None
    result: Any = None
    try:
        result = fn()
    except BaseException as e:  # every process must hear of it before anyone goes on
        error = e
    verdicts = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, v) for r, v in enumerate(verdicts) if v is not None]
    if failed:
        raise PeerError(f"{step} failed on rank {failed[0][0]}: {failed[0][1]}"
                        + (f" (and on {len(failed) - 1} more)" if len(failed) > 1 else "") + "; nothing was saved")
    return result


# ---- the layout: who writes what --------------------------------------------------------

Desc = Tuple[Any, ...]  # ("whole", dtype, shape, nbytes, tied to) or ("part", dtype, global_shape, offset, shape)


def describe(leaves: Mapping[str, Any]) -> Dict[str, Desc]:
    """This process's leaves, as the other processes need to see them (a
    whole array that is the very array of an earlier name names it: tied
    weights, which one process then writes once)."""
    out: Dict[str, Desc] = {}
    seen: Dict[Tuple[Any, ...], str] = {}
    for name, v in leaves.items():
        if isinstance(v, Shard):
            arr = to_numpy(v.local)
            out[name] = ("part", _dtype_text(arr.dtype), v.global_shape, v.offset, tuple(arr.shape))
        else:
            arr = np.asarray(v)
            same = (arr.__array_interface__["data"][0], arr.dtype.str, arr.shape, arr.strides) \
                if arr.nbytes and arr.dtype.kind not in "OSU" else None
            tied = seen.get(same) if same is not None else None
            if same is not None and tied is None:
                seen[same] = name
            out[name] = ("whole", _dtype_text(arr.dtype), tuple(arr.shape), int(arr.nbytes), tied)
    return out


def _dtype_text(dt: np.dtype) -> str:
    """A dtype as text every process parses back alike (``bfloat16``, not ``|V2``)."""
    return "object" if dt.kind in "OSU" else str(dt.newbyteorder("="))


@dataclass
class Layout:
    """What every process computes alike from everyone's descriptions."""

    owners: Dict[str, int] = field(default_factory=dict)       # replicated name -> the rank that writes it
    parts: Dict[str, Tuple[str, Tuple[int, ...]]] = field(default_factory=dict)  # name -> (dtype, global shape)
    table: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # the record's leaf table
    empty: Dict[str, Tuple[str, Tuple[int, ...]]] = field(default_factory=dict)  # partitioned, no elements


def plan_layout(descs: List[Dict[str, Desc]]) -> Layout:
    """Check that the processes agree on every tensor (a replica has one
    dtype and shape everywhere; a partitioned tensor one dtype and global
    shape, its parts tiling it exactly) and choose each replica's writer:
    the holder with the fewest bytes so far, names in sorted order."""
    lay = Layout()
    load = [0] * len(descs)
    group_owner: Dict[str, int] = {}
    holders: Dict[str, List[int]] = {}
    for rank, d in enumerate(descs):
        for name in d:
            holders.setdefault(name, []).append(rank)
    for name in sorted(holders):
        ranks = holders[name]
        kinds = {descs[r][name][0] for r in ranks}
        if len(kinds) > 1:
            raise InvalidArgumentError(f"tensor {name!r} is a whole array on some processes and a Shard on others")
        first = descs[ranks[0]][name]
        if "whole" in kinds:
            for r in ranks:
                if descs[r][name][1:3] != first[1:3]:
                    raise InvalidArgumentError(
                        f"replica {name!r} differs between processes: rank {ranks[0]} has {np.dtype(first[1])} "
                        f"{list(first[2])}, rank {r} has {np.dtype(descs[r][name][1])} {list(descs[r][name][2])}")
            group = (first[4] if len(first) > 4 else None) or name  # tied names: one writer, writing the bytes once
            owner = group_owner.get(group, -1)
            if owner not in ranks:
                owner = min(ranks, key=lambda r: (load[r], r))
                load[owner] += first[3]
                group_owner.setdefault(group, owner)
            lay.owners[name] = owner
            lay.table[name] = {"dtype": str(np.dtype(first[1]).newbyteorder("=")), "shape": list(first[2])}
        elif not math.prod(first[2]):  # no elements: written whole, by one process
            lay.owners[name] = ranks[0]
            lay.empty[name] = (first[1], tuple(first[2]))
            lay.table[name] = {"dtype": str(np.dtype(first[1]).newbyteorder("=")), "shape": list(first[2])}
        else:
            _check_parts(name, [descs[r][name] for r in ranks], ranks)
            itemsize = np.dtype(first[1]).itemsize
            for r in ranks:
                load[r] += math.prod(descs[r][name][4]) * itemsize
            lay.parts[name] = (first[1], tuple(first[2]))
            lay.table[name] = {"dtype": str(np.dtype(first[1]).newbyteorder("=")), "shape": list(first[2])}
    return lay


def _check_parts(name: str, parts: List[Desc], ranks: List[int]) -> None:
    """The parts of one partitioned tensor agree on dtype and global shape
    and tile it exactly: inside it, disjoint, covering every element."""
    dtype, gshape = parts[0][1], tuple(parts[0][2])
    for p, r in zip(parts, ranks):
        if p[1] != dtype or tuple(p[2]) != gshape:
            raise InvalidArgumentError(f"partitioned tensor {name!r}: rank {r} has {np.dtype(p[1])} of global shape "
                                       f"{list(p[2])}, rank {ranks[0]} {np.dtype(dtype)} {list(gshape)}")
    kept = [(p, r) for p, r in zip(parts, ranks) if math.prod(p[4])]  # empty parts hold nothing
    boxes = [(tuple(p[3]), tuple(o + n for o, n in zip(p[3], p[4]))) for p, _ in kept]
    volume = sum(math.prod(n for n in p[4]) for p, _ in kept)
    total = math.prod(gshape)
    pair = first_overlap(boxes)
    if pair is not None:
        raise InvalidArgumentError(f"partitioned tensor {name!r}: the parts of ranks {kept[pair[0]][1]} and "
                                   f"{kept[pair[1]][1]} overlap")
    if volume != total:
        raise InvalidArgumentError(f"partitioned tensor {name!r}: the parts cover {volume} of its {total} elements "
                                   f"(global shape {list(gshape)}); they must tile it exactly")


def merge_trees(trees: List[Any]) -> Any:
    """One structure for the processes' trees: equal trees stay as they are;
    dicts are united (keys in order of first appearance), sequences of one
    length merged element by element, and every other node must be the
    same on every process that has it. Anything else -- a dict against a
    list, sequences of other lengths, a value against a tensor, two values,
    keys ``1`` and ``"1"`` -- is :class:`InvalidArgumentError` naming the
    path and the ranks, raised alike on every process before anything is
    written (the checkpoint could not restore what each process saved)."""
    first = trees[0]
    if all(t == first for t in trees[1:]):
        return first
    return _merge(list(enumerate(trees)), [])


def _kind(node: Any) -> str:
    return next((k for k in ("dict", "list", "tuple") if k in node), "tensor" if "leaf" in node else "value")


def _disagree(path: List[str], a: Tuple[int, Any], b: Tuple[int, Any],
              what: Callable[[Any], str]) -> InvalidArgumentError:
    where = "/".join(path) or "the top"
    return InvalidArgumentError(f"the processes' states disagree at {where}: rank {a[0]} has {what(a[1])}, "
                                f"rank {b[0]} has {what(b[1])}; every process must save the same structure")


def _merge(nodes: List[Tuple[int, Any]], path: List[str]) -> Any:
    kinds = {_kind(n) for _, n in nodes}
    if len(kinds) > 1:
        a = nodes[0]
        b = next(x for x in nodes if _kind(x[1]) != _kind(a[1]))
        raise _disagree(path, a, b, lambda n: f"a {_kind(n)}")
    kind = kinds.pop()
    if kind == "dict":
        order: List[Any] = []
        kids: Dict[str, List[Tuple[int, Any]]] = {}
        typed: Dict[str, Tuple[int, Any]] = {}
        for rank, n in nodes:
            for k, v in n["dict"]:
                text = str(k)  # the path of the tensors below it: 1 and "1" would share it
                if text in typed and (type(typed[text][1]), typed[text][1]) != (type(k), k):
                    raise _disagree(path, typed[text], (rank, k), lambda key: f"the key {key!r}")
                if text not in kids:
                    typed[text] = (rank, k)
                    order.append(k)
                    kids[text] = []
                kids[text].append((rank, v))
        out: Dict[str, Any] = {"dict": [[k, _merge(kids[str(k)], path + [str(k)])] for k in order]}
        if any("type" in n for _, n in nodes):
            out["type"] = "OrderedDict"
        return out
    if kind in ("list", "tuple"):
        lengths = {len(n[kind]) for _, n in nodes}
        if len(lengths) > 1:
            a = nodes[0]
            b = next(x for x in nodes if len(x[1][kind]) != len(a[1][kind]))
            raise _disagree(path, a, b, lambda n: f"a {kind} of {len(n[kind])}")
        columns = zip(*([(rank, item) for item in n[kind]] for rank, n in nodes))
        return {kind: [_merge(list(col), path + [str(i)]) for i, col in enumerate(columns)]}
    other = next((x for x in nodes if x[1] != nodes[0][1]), None)
    if other is not None:
        raise _disagree(path, nodes[0], other, lambda n: json.dumps(n)[:80])
    return nodes[0][1]


# ---- saving -----------------------------------------------------------------------------

def my_tensors(leaves: Mapping[str, Any], lay: Layout, rank: int) -> Dict[Any, Any]:
    """What this process writes: the replicas it owns and its parts (under
    their slice keys)."""
    out: Dict[Any, Any] = {}
    for name, v in leaves.items():
        if name in lay.empty:
            if lay.owners[name] == rank:
                out[name] = np.empty(lay.empty[name][1], np.dtype(lay.empty[name][0]))
        elif isinstance(v, Shard):
            local = to_numpy(v.local)
            if local.size:  # an empty part holds nothing (and would share its key with other empty ones)
                out[SliceKey(encode_slice_key(name.encode("utf-8", "surrogateescape"), v.extents()))] = local
        elif lay.owners.get(name) == rank:
            out[name] = v
    return out


class Failed(NamedTuple):
    """What a process sends in place of its result when its step failed."""

    rank: int
    text: str


def _failed(rank: int, e: BaseException) -> Failed:
    return Failed(rank, f"{type(e).__name__}: {e}")


def _raise_first(step: str, results: List[Any], mine: Optional[BaseException]) -> None:
    """Raise if any process failed ``step``: this process its own error,
    the others a :class:`PeerError` naming the first that failed."""
    if mine is not None:
        raise mine
    failed = [r for r in results if isinstance(r, Failed)]
    if failed:
        raise PeerError(f"{step} failed on rank {failed[0].rank}: {failed[0].text}"
                        + (f" (and on {len(failed) - 1} more)" if len(failed) > 1 else "") + "; nothing was saved")


def save_collective(flat: Tuple[Mapping[str, Any], Any], prefix: str, comm: Communicator, *, metadata: Any = None,
                    commit: Callable[[StagedBundle], List[str]], durable: bool = True, alignment: int = 1,
                    threads: Optional[int] = None, prepare_directory: Optional[Callable[[str], Any]] = None,
                    zstd_level: Optional[int] = None, objects: Optional[ObjectSave] = None) -> List[str]:
    """Save this process's part of the state, flattened (``(leaves, tree)``), from every process of ``comm`` as one checkpoint
    ``prefix``; ``commit(staged)`` (run on rank 0 only) makes the staged
    bundle the checkpoint and returns the listed prefixes. Returns them on
    every process. Four collectives: the descriptions (all-gather), the
    staged name (broadcast), the index records (gather), the outcome
    (broadcast). ``objects``: the checkpoint goes to an object store, each
    process uploading its own data object, rank 0 committing through
    :class:`~fastckpt.directory.objectcommit.ObjectSave` (``commit`` unused)."""
    rank, size = comm.rank, comm.size

    def local() -> Tuple[Mapping[str, Any], Dict[str, Desc], Any]:
        check_prefix(prefix, size)
        leaves, tree = flat
        if tree is None:  # a flat dict of arrays, already flattened
            tree = {"dict": [[k, {"leaf": k}] for k in leaves]}
        if STRUCTURE_KEY in leaves:
            raise InvalidArgumentError(f"the tensor name {STRUCTURE_KEY!r} is reserved for fastckpt's structure record")
        return leaves, describe(leaves), tree
    error: Optional[BaseException] = None
    leaves: Mapping[str, Any]
    try:
        leaves, desc, tree = local()
    except BaseException as e:  # every process must hear of it before anyone goes on
        error, leaves, desc, tree = e, {}, {}, None
    host = socket.gethostname()
    everyone = comm.allgather(_failed(rank, error) if error is not None else (desc, tree, host))
    _raise_first("describing the state", everyone, error)
    descs = [d for d, _, _ in everyone]
    merged = merge_trees([t for _, t, _ in everyone])  # the same on every process: so is any error it raises
    if threads is None:  # the processes of one machine share its cores
        threads = max(1, default_threads() // sum(1 for _, _, h in everyone if h == host))
    lay = plan_layout(descs)  # the same on every process: so is any error it raises
    directory = os.path.dirname(os.path.abspath(prefix))
    if objects is not None:
        directory = os.path.dirname(prefix)
        named = comm.broadcast(_object_target(objects) if rank == 0 else None)
    else:
        named = comm.broadcast(_stage_name(directory, prepare_directory) if rank == 0 else None)
    if isinstance(named, Failed):
        raise PeerError(f"preparing {directory!r} on rank 0 failed: {named.text}; nothing was saved")
    part = StagedBundle(named, size, durable, only=rank, zstd_level=zstd_level)
    mine = my_tensors(leaves, lay, rank)
    if rank == 0:
        mine[STRUCTURE_KEY] = record_tensor(merged, lay.table, metadata)
    error = None
    try:
        if objects is not None:
            records: Any = _upload_part(objects, named, rank, size, mine, alignment, zstd_level, threads)
        else:
            records = write_part(part, mine, alignment=alignment, threads=threads)
    except BaseException as e:  # write_part removed what it wrote (an upload: aborted)
        error, records = e, _failed(rank, e)
    got = comm.gather(records)  # index records only, never data
    result: Any = None
    try:
        if rank == 0:
            assert got is not None
            if objects is not None:
                result = _commit_objects(got, full_entries(lay, descs), named, objects,
                                         0 if zstd_level is None else _core.ZSTD_MIN_CONSUMER)
            else:
                result = _commit_on_root(got, full_entries(lay, descs), named, size, durable, commit,
                                         0 if zstd_level is None else _core.ZSTD_MIN_CONSUMER)
        outcome = _hear_outcome(comm, result, prefix)
    finally:
        part.close()  # rank 0's commit has renamed or removed every part by now
    if error is not None:
        raise error
    if isinstance(result, BaseException):
        raise result
    if isinstance(outcome, Failed):
        if outcome.text.startswith("write:") and objects is None:
            part.remove()
        raise PeerError(f"saving {prefix!r} failed on rank {outcome.rank}: {outcome.text}; "
                        "the previous checkpoint stays the latest")
    return list(outcome)


def _hear_outcome(comm: Communicator, result: Any, prefix: str) -> Any:
    """Rank 0's outcome of the commit, on every process. A broadcast that
    fails says so truthfully: rank 0 knows whether it committed; the others
    cannot know, and say the checkpoint may be there."""
    try:
        return comm.broadcast(_failed(0, result) if isinstance(result, BaseException) else result)
    except PeerError as e:
        if comm.rank != 0:
            raise PeerError(f"saving {prefix!r}: rank 0's outcome of the commit never arrived ({e}); "
                            "it may have been committed: see latest_checkpoint") from e
        if isinstance(result, BaseException):
            raise
        raise PeerError(f"{prefix!r} was committed, but not every process heard so ({e})") from e


def _stage_name(directory: str, prepare_directory: Optional[Callable[[str], Any]]) -> Any:
    """On rank 0: the directory made ready, the staged bundle's name (or the failure)."""
    try:
        ensure_directory(directory)
        if prepare_directory is not None:
            prepare_directory(directory)
        return os.path.join(directory, STAGE_PREFIX + secrets.token_hex(8))
    except BaseException as e:
        return _failed(0, e)


def _object_target(objects: ObjectSave) -> Any:
    """On rank 0: the object-store save begun, the prefix its data objects go under (or the failure)."""
    try:
        return objects.begin()
    except BaseException as e:
        return _failed(0, e)


def _upload_part(objects: ObjectSave, target: str, rank: int, size: int, tensors: Mapping[str, Any],
                 alignment: int, zstd_level: Optional[int], threads: Optional[int]) -> List[Tuple[bytes, bytes]]:
    """This process's data object, uploaded; its index records."""
    plan = plan_bundle(tensors, 1, alignment if zstd_level is None else 1)
    try:
        upload_plan(objects.storage, plan, [data_filename(target, rank, size)], zstd_level, threads)
    except OSError as e:
        if isinstance(e, CheckpointError):
            raise
        raise io_error(e, f"writing {data_filename(target, rank, size)!r}") from e
    records: List[Tuple[bytes, bytes]] = plan.records(rank)
    return records


def _write_failure(raws: List[Any]) -> Optional[Failed]:
    """The processes' failed writes reported as one (the first, and how many more), or None."""
    failed = [r for r in raws if isinstance(r, Failed)]
    if not failed:
        return None
    return Failed(failed[0].rank, f"write: {failed[0].text}"
                  + (f" (and on {len(failed) - 1} more)" if len(failed) > 1 else ""))


def _commit_objects(raws: Optional[List[Any]], parts: Any, target: str, objects: ObjectSave,
                    min_consumer: int) -> Any:
    """:func:`_commit_on_root` for an object store."""
    assert raws is not None
    failed = _write_failure(raws)
    if failed is not None:
        objects.abort()
        return failed
    try:
        return objects.commit(target, merge_records(raws, parts, min_consumer))
    except BaseException as e:  # every process hears of it (commit undid what it could)
        return e


def _commit_on_root(raws: Optional[List[Any]], parts: Any, staged_prefix: str, size: int, durable: bool,
                    commit: Callable[[StagedBundle], List[str]], min_consumer: int = 0) -> Any:
    """Merge, write the index, commit: the listed prefixes, or the error
    (a process's failed write, the others' parts removed, is reported as one)."""
    assert raws is not None
    staged = StagedBundle(staged_prefix, size, durable)
    failed = _write_failure(raws)
    if failed is not None:
        staged.remove()
        return failed
    try:
        write_staged_index(staged, merge_records(raws, parts, min_consumer))
        return commit(staged)
    except BaseException as e:  # every process hears of it
        if not fs.exists(index_filename(staged_prefix)):
            staged.remove()  # the merge failed; a failed commit cleaned up (or kept for recovery) itself
        return e
    finally:
        staged.close()


def merge_records(records: List[List[Tuple[bytes, bytes]]],
                  parts: Mapping[str, Tuple[int, Tuple[int, ...], List[Tuple[Any, ...]], int]],
                  min_consumer: int = 0) -> bytes:
    """The one ``.index`` of a bundle whose data file ``k`` process ``k``
    wrote: every process's index records (entries already naming their data
    file; offsets, sizes and CRCs as written), plus for each partitioned
    tensor (``parts``: name -> dtype enum, global shape, slices in rank
    order, first rank) its full entry listing its slices, as TensorFlow's
    MergeBundles leaves it. No key is decoded: the layout every process
    computed names the slices."""
    entries = [kv for recs in records for kv in recs]
    for name, (dtype, shape, slices, first) in parts.items():
        entries.append((name.encode("utf-8", "surrogateescape"),
                        _core.encode_entry(dtype, shape, first, 0, 0, None, slices)))
    entries.sort(key=_first)
    keys = [k for k, _ in entries]
    dup = next((a for a, b in zip(keys, keys[1:]) if a == b), None)
    if dup is not None:
        raise InvalidArgumentError(f"two processes wrote tensor {dup.decode('utf-8', 'replace')!r}")
    header = _core.encode_header(num_shards=len(records), min_consumer=min_consumer)
    return _core.build_table([(b"", header)] + entries)


def _first(kv: Tuple[bytes, bytes]) -> bytes:
    return kv[0]


def full_entries(lay: Layout, descs: List[Dict[str, Desc]]) -> Dict[str, Tuple[int, Tuple[int, ...],
                                                                               List[Tuple[Any, ...]], int]]:
    """Each partitioned tensor's full entry, from the layout: its dtype enum,
    global shape, the slices of the processes that hold part of it (rank
    order, empty parts left out) and the first of them."""
    out: Dict[str, Tuple[int, Tuple[int, ...], List[Tuple[Any, ...]], int]] = {}
    for name, (dtype, gshape) in lay.parts.items():
        slices, first = [], -1
        for rank, d in enumerate(descs):
            desc = d.get(name)
            if desc is None or not math.prod(desc[4]):
                continue
            first = rank if first < 0 else first
            slices.append(tuple(Shard(_Shape(desc[4]), gshape, desc[3]).extents()))
        out[name] = (dtype_enum(np.dtype(dtype)), gshape, slices, first)
    return out


class _Shape:
    """Stands in for an array of ``shape`` (a Shard needs only its shape)."""

    def __init__(self, shape: Tuple[int, ...]) -> None:
        self.shape = shape
