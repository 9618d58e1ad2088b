"""Delta saves: a checkpoint that shares the data files of the previous one
for the tensors that did not change, and is still a plain bundle.

An index entry is only (data file, offset, size, CRC), so a new checkpoint
may name bytes in a file it shares with its base by a hard link. Its data
files are::

    PREFIX.data-00000-of-0000N ... -0000(N-2)   hard links of base files (unchanged tensors)
    PREFIX.data-0000(N-1)-of-0000N              a new file: what changed, the delta record

Each checkpoint is complete on its own: deleting any checkpoint removes
names, never bytes another one names. TensorFlow and every fastckpt reader
read it as any bundle.

**"Unchanged"** is established without trusting the 32-bit CRC: the delta
record (``_FASTCKPT_DELTA``, a string tensor of the checkpoint) keeps a
64-bit digest of each tensor's bytes (XXH64 of each 1 MiB piece, combined
by XXH64: computed in parallel on the C threads with the GIL released),
and a tensor is reused only when its name, dtype, shape and size match the
base's and the digest of its bytes in memory (a read of memory, no write)
equals the recorded one.

What is checked costs only where it can pay: a tensor the base found
unchanged (or saw for the first time) is probed; a tensor that changed at
the base's save is written without probing, and its digest is computed
after the write only if the write's own CRC equals the base's (it may have
settled; a different CRC proves a change). So when everything changes,
after the first delta save nothing is hashed at all. ``frozen=`` names the
caller vouches for are reused without reading them.

**Which files are linked**: a base file is linked when the tensors reused
from it are at least half of its bytes (:data:`MIN_LIVE`); otherwise those
tensors are written again into the new file (so dead bytes never exceed
the live ones). At most :data:`MAX_LINKED` files are linked.

**Never an error**: a base that is missing, damaged (index, record,
truncated file or a reused range whose bytes fail their CRC), of another
layout (compressed, partitioned tensors, no delta record), being deleted
while the save runs (the file is linked through its open descriptor: the
very file whose index was read, or nothing), or a file system that refuses
hard links: the tensors concerned are written, as in a full save.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Set, Tuple

from fastckpt import _core
from fastckpt.bundle.dtypes import DT_STRING
from fastckpt.bundle.files import crc32c_of_range
from fastckpt.bundle.naming import data_filename
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.writer import (StagedBundle, check_options, new_stage_prefix, plan_bundle, removed_on_failure,
                                    write_converted, write_staged_index)
from fastckpt.errors import CheckpointError
from fastckpt.storage import local
from fastckpt.storage.fsutil import fsync_all
from fastckpt.storage.locking import create_locked_temp, link_locked

__all__ = ["DELTA_KEY", "MIN_LIVE", "MAX_LINKED", "MIN_TENSOR", "DeltaStats", "stage_delta", "is_frozen"]

DELTA_KEY = "_FASTCKPT_DELTA"
MIN_LIVE = 0.5
MAX_LINKED = 7
MIN_TENSOR = 64 * 1024  # smaller tensors are always written: their bytes cost less than their bookkeeping
_FORMAT = "fastckpt-delta-1"  # digests: XXH64 of each 1 MiB piece, XXH64 of those (seeded with the size)

# Files whose every byte this process wrote or checked, by (device, inode, size, mtime): a base file
# not among them has its reused ranges checked against their CRCs once before it is linked.
_GOOD: Set[Tuple[Any, ...]] = set()
_GOOD_LOCK = threading.Lock()


@dataclass
class DeltaStats:
    """What a delta save did: tensors and bytes reused from the base (not
    written), written, probed (checksummed in memory), and the base files
    linked; ``base`` is None when there was none to use."""

    base: Optional[str] = None
    reused: int = 0
    reused_bytes: int = 0
    written: int = 0
    written_bytes: int = 0
    probed_bytes: int = 0
    linked_files: int = 0
    why_full: Optional[str] = None


@dataclass
class _Base:
    reader: CheckpointReader
    digests: Dict[str, Tuple[Optional[int], bool]]  # name -> (digest or None, probe it: unchanged or new at its save)
    fds: List[int] = field(default_factory=list)
    sizes: List[int] = field(default_factory=list)


def is_frozen(name: str, frozen: Collection[str]) -> bool:
    """``name`` is one of ``frozen`` or inside one of them (``model/encoder``
    covers ``model/encoder/layer0/kernel``)."""
    if name in frozen:
        return True
    parts = name.split("/")
    return any("/".join(parts[:k]) in frozen for k in range(1, len(parts)))


def _file_key(fd: int) -> Tuple[Any, ...]:
    return (local.fd_identity(fd), local.fd_size(fd), local.fd_mtime_ns(fd))


def _open_base(prefix: Optional[str], stats: DeltaStats) -> Optional[_Base]:
    """The base checkpoint opened with its delta record, or None (why in ``stats``)."""
    if prefix is None:
        stats.why_full = "no previous checkpoint"
        return None
    try:
        reader = CheckpointReader(prefix)
    except (CheckpointError, OSError) as e:
        stats.why_full = f"the previous checkpoint {prefix} cannot be read: {e}"
        return None
    try:
        if reader.index.compressed or not reader.has_tensor(DELTA_KEY):
            stats.why_full = f"the previous checkpoint {prefix} has no delta record (or is compressed)"
            reader.close()
            return None
        raw = reader.get_tensor(DELTA_KEY)[()]
        record = json.loads(bytes(raw))
        if not isinstance(record, dict) or record.get("format") != _FORMAT or not isinstance(record.get("tensors"), dict):
            raise ValueError("not a delta record of this version")
        digests = {str(k): (None if v[0] is None else int(v[0], 16), bool(v[1]))
                   for k, v in record["tensors"].items()}
        opened = reader.files.descriptors()
        if opened is None:
            raise ValueError("a data file is missing")
        fds, sizes = opened
        return _Base(reader, digests, list(fds), list(sizes))
    except (CheckpointError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
        stats.why_full = f"the previous checkpoint {prefix} is damaged: {e}"
        reader.close()
        return None


def stage_delta(directory: str, tensors: Mapping[Any, Any], base_prefix: Optional[str], *,
                frozen: Collection[str] = (), durable: bool = False, threads: Optional[int] = None,
                ) -> Tuple[StagedBundle, DeltaStats]:
    """Write ``tensors`` as a complete bundle under a new private prefix in
    ``directory`` (as :func:`~fastckpt.bundle.writer.stage_bundle` does),
    reusing what is unchanged since ``base_prefix`` (see the module). On any
    failure nothing is left behind and the error is raised."""
    nthreads = check_options(1, 1, threads)
    stats = DeltaStats(base=base_prefix)
    base = _open_base(base_prefix, stats)
    try:
        plan = plan_bundle(tensors)
        reuse = _reusable(plan, base, frozen, nthreads, stats) if base is not None else {}
        linked = _choose_files(reuse, base) if base is not None else []
        keep = {name for name, (shard, _) in reuse.items() if shard in linked}
        if base is not None and reuse and not linked and stats.why_full is None:
            stats.why_full = "too few unchanged bytes in any file of the previous checkpoint"
        if keep:
            plan = plan_bundle({k: v for k, v in tensors.items() if _text(k) not in keep})
        staged = StagedBundle(new_stage_prefix(directory), len(linked) + 1, durable)
        with removed_on_failure(staged, f"writing a checkpoint in {directory!r}"):
            linked = _link_files(staged, base, linked, stats) if base is not None else []
            if base is not None and keep - {n for n, (s, _) in reuse.items() if s in linked}:
                raise _Relink()  # a base file vanished before it was linked: those tensors are written instead
            index = _write_new(staged, plan, base, reuse, linked, nthreads, stats)
            write_staged_index(staged, index)
        return staged, stats
    except _Relink:
        base_again = None  # (the base closes below; a plain full save follows)
        stats.why_full = f"a data file of {base_prefix} was deleted while the save ran"
        staged, _ = stage_delta(directory, tensors, base_again, durable=durable, threads=threads)
        return staged, stats
    finally:
        if base is not None:
            base.reader.close()


class _Relink(Exception):
    """A linked base file disappeared: the save starts again without a base."""


def _text(key: Any) -> str:
    return key if isinstance(key, str) else key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)


def _names(plan: "_core.WritePlan") -> Dict[int, str]:
    """The names of the plan's tensors a delta save keeps track of (in memory, at least MIN_TENSOR bytes)."""
    return {i: plan.key(i).decode("utf-8", "surrogateescape") for i in plan.at_least(MIN_TENSOR)}


def _reusable(plan: "_core.WritePlan", base: _Base, frozen: Collection[str], nthreads: int,
              stats: DeltaStats) -> Dict[str, Tuple[int, Any]]:
    """name -> (base shard, base entry) of every tensor whose bytes the base
    holds unchanged: vouched for (``frozen``), or probed (CRC and digest of
    the bytes in memory equal the base's)."""
    reuse: Dict[str, Tuple[int, Any]] = {}
    probe: List[Tuple[str, Any, int]] = []
    index = base.reader.index
    for i, name in _names(plan).items():
        dtype, shape, _ = plan.described(i)
        size = plan.size(i)
        at = index.find(plan.key(i))
        if at < 0 or name not in base.digests:
            continue
        entry = index.entry(at)
        if (entry.slices or entry.dtype != dtype or tuple(entry.shape) != shape or entry.size != size
                or entry.crc is None or not 0 <= entry.shard < len(base.sizes)
                or entry.offset + size > base.sizes[entry.shard]):
            continue
        if is_frozen(name, frozen):
            reuse[name] = (entry.shard, entry)
        elif base.digests[name][1] and base.digests[name][0] is not None:  # unchanged at the base's save
            probe.append((name, entry, i))
    if probe:
        got = _core.digests([plan.payload(i) for _, _, i in probe], nthreads)
        stats.probed_bytes = sum(e.size for _, e, _ in probe)
        for (name, entry, _), digest in zip(probe, got):
            if digest == base.digests[name][0]:
                reuse[name] = (entry.shard, entry)
    # tied names of the plan (index entries of no payload) go with the name they are tied to
    for key, ref in plan.extra:
        if isinstance(ref, int):
            first = plan.key(ref).decode("utf-8", "surrogateescape")
            name = key.decode("utf-8", "surrogateescape")
            at = index.find(key)
            if first in reuse and at >= 0:
                e = index.entry(at)
                f = reuse[first][1]
                if (e.shard, e.offset, e.size, e.crc, e.dtype, tuple(e.shape)) == \
                        (f.shard, f.offset, f.size, f.crc, f.dtype, tuple(f.shape)):
                    reuse[name] = reuse[first]
    return reuse


def _may_be_unchanged(plan: "_core.WritePlan", i: int, name: str, base: Optional[_Base]) -> bool:
    """Whether written tensor ``i`` gets a digest: a payload in memory that
    is new (no base entry to compare) or whose CRC equals the base's."""
    _, shape, _ = plan.described(i)
    if base is None or name not in base.digests:
        return True
    at = base.reader.index.find(plan.key(i))
    if at < 0:
        return True
    entry = base.reader.index.entry(at)
    return entry.crc == plan.crc(i) and tuple(entry.shape) == shape and entry.size == plan.size(i)


def _choose_files(reuse: Dict[str, Tuple[int, Any]], base: _Base) -> List[int]:
    """The base files worth linking (reused bytes >= MIN_LIVE of the file),
    the fullest first, at most MAX_LINKED, in shard order."""
    live: Dict[int, int] = {}
    seen: Set[Tuple[int, int]] = set()
    for shard, entry in reuse.values():
        if (shard, entry.offset) not in seen:  # (tied names count once)
            seen.add((shard, entry.offset))
            live[shard] = live.get(shard, 0) + entry.size
    worth = [s for s, n in live.items() if n >= MIN_LIVE * base.sizes[s]]
    worth.sort(key=lambda s: -live[s])
    return sorted(worth[:MAX_LINKED])


def _link_files(staged: StagedBundle, base: _Base, shards: List[int], stats: DeltaStats) -> List[int]:
    """Link each chosen base file as the staged bundle's data file of the
    same rank (its reused ranges checked first unless this process knows
    the file); returns the shards linked (a file that cannot be is left
    out: its tensors are written)."""
    done: List[int] = []
    for shard in shards:
        fd = base.fds[shard]
        key = _file_key(fd)
        with _GOOD_LOCK:
            known = key in _GOOD
        if not known and not _ranges_sound(base, shard):
            continue
        target = data_filename(staged.prefix, len(done), staged.num_shards)
        try:
            _, held = link_locked(fd, base.reader.files.path(shard), lambda: target)
        except OSError:
            continue
        staged.fds.append(held)
        with _GOOD_LOCK:
            _GOOD.add(key)
        done.append(shard)
    stats.linked_files = len(done)
    return done


def _ranges_sound(base: _Base, shard: int) -> bool:
    """Every tensor of data file ``shard`` (a file this process did not
    write) has the bytes its CRC says: read once, then remembered."""
    index = base.reader.index
    for i in range(len(index)):
        e = index.entry(i)
        if e.shard != shard or e.slices or not e.size or e.crc is None:
            continue
        try:
            if _core.mask_crc(crc32c_of_range(base.fds[shard], e.offset, e.size, "")) != e.crc:
                return False
        except (CheckpointError, OSError):
            return False
    return True


def _write_new(staged: StagedBundle, plan: "_core.WritePlan", base: Optional[_Base],
               reuse: Dict[str, Tuple[int, Any]], linked: List[int], nthreads: int, stats: DeltaStats) -> bytes:
    """Write the plan into the new (last) data file, then the delta record
    after it (digests of the written tensors that may be unchanged, computed
    from memory now); returns the index naming the new file's tensors, the
    reused ones in their linked files, and the record."""
    last = staged.num_shards - 1
    path = data_filename(staged.prefix, last, staged.num_shards)
    _, fd = create_locked_temp(lambda: path, shared=True)
    staged.fds.append(fd)
    size = plan.shard_sizes[0] if plan.shard_sizes else 0
    if size:
        local.truncate(fd, size)
    plan.write([fd], nthreads, staged.durable, [path])
    if plan.staged:  # (tensors that needed converting get no digest: they are never reused)
        write_converted(plan, [fd], [path], nthreads, staged.durable)
    names = _names(plan)
    record: Dict[str, List[Any]] = {}
    hash_now = [i for i in names if _may_be_unchanged(plan, i, names[i], base)]
    for i, digest in zip(hash_now, _core.digests([plan.payload(i) for i in hash_now], nthreads)):
        before = base.digests.get(names[i]) if base is not None else None
        # probe it next time: new (nothing known), or found unchanged after all
        record[names[i]] = [f"{digest:016x}", before is None or before[0] in (None, digest)]
    for name in names.values():
        record.setdefault(name, [None, False])  # changed (its CRC says so): written without probing next time
    for key, ref in plan.extra:
        if isinstance(ref, int) and names.get(ref) in record:
            record[key.decode("utf-8", "surrogateescape")] = record[names[ref]]
    stats.written = len(plan) + len(plan.extra)
    stats.written_bytes = sum(plan.size(i) for i in range(len(plan)))
    records = plan.records(last)
    position = {s: k for k, s in enumerate(linked)}
    seen: Set[Tuple[int, int]] = set()
    for name, (shard, e) in reuse.items():
        if shard not in position:
            continue
        records.append((name.encode("utf-8", "surrogateescape"),
                        _core.encode_entry(e.dtype, list(e.shape), position[shard], e.offset, e.size, e.crc)))
        if base is not None and name in base.digests:
            known = base.digests[name][0]  # (None: reused on the caller's word, never checked)
            record[name] = [None, False] if known is None else [f"{known:016x}", True]
        stats.reused += 1
        if (shard, e.offset) not in seen:
            seen.add((shard, e.offset))
            stats.reused_bytes += e.size
    payload, crc = _core.encode_strings([json.dumps({"format": _FORMAT, "tensors": record},
                                                    separators=(",", ":")).encode()])
    local.truncate(fd, size + len(payload))
    _core.io_run([fd], [size], [payload], write=True)
    records.append((DELTA_KEY.encode(), _core.encode_entry(DT_STRING, [], last, size, len(payload),
                                                           _core.mask_crc(crc))))
    if staged.durable:
        fsync_all([fd])
    with _GOOD_LOCK:
        _GOOD.add(_file_key(fd))
    return _core.records_index(records, staged.num_shards)
