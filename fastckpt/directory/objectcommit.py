"""Committing a checkpoint into an object-store directory (``s3://bucket/dir``):
the same guarantees as :mod:`fastckpt.directory.commit` on a store with no
rename and no locks, through conditional writes of the state object.

A save (``s3://b/dir/ckpt-7``):

1. **recover**: what dead saves left is removed or finished (below);
2. a **lease** object ``dir/.fcpending-<hex>`` names the save: the final
   prefix, the staged prefix (a replacement only), its owner (host, process
   and that process's start time) and when it began;
3. a **new** name is written under its final names, data objects first
   (streamed multipart uploads), the index last. A name that already holds
   a checkpoint is written under a staged prefix ``dir/.fcsave-<hex>``
   instead, and the state object lists the staged prefix in its place
   (step 4's conditional write), before the old index is deleted and the
   staged objects are copied over the final names (server-side copies,
   index last);
4. the state object lists the final name, retention applied: read with its
   ETag, rewritten with ``If-Match`` (``If-None-Match: *`` when there is
   none yet), and on a lost race read and applied again -- two writers
   never lose each other's commit, a stale writer never overwrites a newer
   state;
5. the checkpoints retention dropped are deleted (index first; only those
   the state object listed, directly inside the directory), then the
   staged objects and the lease.

Killed anywhere, the state object's latest checkpoint is complete: before
4 it names the previous checkpoints (a new name's objects are not listed;
a replaced checkpoint's old contents, or from 3 on its staged new ones),
after 4 the new one. Recovery reads the leases of dead saves -- owner on
this host no longer running, or a lease older than :data:`LEASE_SECONDS`
-- and undoes a new name that was never listed, finishes a replacement the
state object lists staged, deletes what retention dropped, and aborts the
dead save's unfinished multipart uploads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from fastckpt.bundle.naming import checkpoint_files, data_filename, index_filename
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.upload import upload_data
from fastckpt.bundle.writer import STAGE_PREFIX, check_no_compression, check_options, check_prefix, plan_for
from fastckpt.directory.listing import RetainFn, deletable, listed_from, norm, remove_checkpoint
from fastckpt.directory.retention import Entry
from fastckpt.directory.state import checkpoint_exists, read_state_object, state_path, state_text
from fastckpt.errors import CheckpointError, CheckpointIOError, ConflictError
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import S3Storage

__all__ = ["save_object_checkpoint", "recover_objects", "LEASE_PREFIX", "LEASE_SECONDS", "Lease"]

log = logging.getLogger("fastckpt")

LEASE_PREFIX = ".fcpending-"
LEASE_SECONDS = 6 * 3600.0  # a save from another host is presumed alive this long
_ATTEMPTS = 64  # conditional state writes lost to other writers before giving up


@dataclass
class Lease:
    """A save in progress, as its lease object records it."""

    url: str
    final: str
    staged: Optional[str]
    host: str
    pid: int
    started: Optional[str]
    since: float
    deleting: Tuple[str, ...] = ()

    def body(self) -> bytes:
        return json.dumps({"final": self.final, "staged": self.staged, "host": self.host, "pid": self.pid,
                           "started": self.started, "since": self.since, "deleting": list(self.deleting)}).encode()

    def alive(self, now: float, lease_seconds: float) -> bool:
        """True while the owner may still be saving."""
        if self.host == socket.gethostname() and self.started is not None:
            return local.process_start_time(self.pid) == self.started
        return now - self.since < lease_seconds

    @classmethod
    def parse(cls, url: str, raw: bytes) -> Optional["Lease"]:
        try:
            d = json.loads(raw)
            return cls(url, str(d["final"]), d.get("staged"), str(d["host"]), int(d["pid"]), d.get("started"),
                       float(d["since"]), tuple(d.get("deleting", ())))
        except (ValueError, KeyError, TypeError):
            return None


def _new_lease(directory: str, final: str, staged: Optional[str]) -> Lease:
    return Lease(f"{directory}/{LEASE_PREFIX}{secrets.token_hex(8)}", final, staged, socket.gethostname(),
                 os.getpid(), local.process_start_time(os.getpid()), time.time())


def _update_state(storage: S3Storage, directory: str, state_name: str,
                  change: Callable[[List[Entry], float], Optional[Tuple[List[Entry], float, List[str]]]]
                  ) -> Tuple[List[Entry], List[str]]:
    """Read the state object, ``change(entries, preserved)`` →
    ``(entries, preserved, dropped)`` (None: leave it), write it back only
    if nobody wrote it meanwhile; on a lost race, again. Returns the
    entries written and what was dropped."""
    path = state_path(directory, state_name)
    for attempt in range(_ATTEMPTS):
        st, etag = read_state_object(directory, state_name)
        listed = listed_from(st)
        changed = change(listed.entries, listed.preserved)
        if changed is None:
            return listed.entries, []
        entries, preserved, dropped = changed
        try:
            if not entries:  # (retention keeps at least the newest: nothing to write)
                return entries, dropped
            text = state_text(directory, entries[-1][0], [p for p, _ in entries],
                              all_model_checkpoint_timestamps=[ts for _, ts in entries],
                              last_preserved_timestamp=preserved, latest_filename=state_name)
            data = text.encode("utf-8", "surrogateescape")
            if etag is None:
                storage.put(path, data, if_new=True)
            else:
                storage.put(path, data, if_match=etag)
            return entries, dropped
        except ConflictError:
            time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** min(attempt, 7))))
    raise ConflictError(0, f"{path}: lost {_ATTEMPTS} conditional writes in a row to other writers", path)


def _copy_bundle(storage: S3Storage, src: str, dst: str, num_shards: int) -> None:
    """``dst`` becomes a copy of the complete bundle ``src`` (server-side):
    ``dst``'s index goes first, the data objects are copied, the index last."""
    storage.delete_quietly(index_filename(dst))
    for s in range(num_shards):
        storage.copy(data_filename(src, s, num_shards), data_filename(dst, s, num_shards))
    storage.copy(index_filename(src), index_filename(dst))
    for stale in checkpoint_files(dst):
        if stale.startswith(dst + ".data-") and not any(stale == data_filename(dst, s, num_shards)
                                                        for s in range(num_shards)):
            storage.delete_quietly(stale)


def _num_shards_of(prefix: str) -> int:
    with CheckpointReader(prefix) as reader:
        return reader.num_shards


def save_object_checkpoint(prefix: str, tensors: Mapping[Any, Any], *, retain: RetainFn, num_shards: int = 1,
                           alignment: int = 1, threads: Optional[int] = None, state_name: str = "checkpoint",
                           write_state: bool = True, zstd_level: Optional[int] = None,
                           lease_seconds: float = LEASE_SECONDS) -> List[str]:
    """Write ``tensors`` as the checkpoint ``prefix`` (an ``s3://`` URL) and
    commit it in its directory's state object (see the module docstring);
    returns the listed prefixes. Without ``write_state`` the bundle is only
    written (data objects, then the index)."""
    check_prefix(prefix, num_shards)
    check_no_compression(zstd_level, prefix)
    check_options(num_shards, alignment, threads)
    storage = fs.object_store(prefix)
    directory = os.path.dirname(prefix)
    state_path(directory, state_name)  # validates the name
    plan = plan_for(tensors, num_shards, alignment, None)
    try:
        if write_state:
            recover_objects(directory, state_name, lease_seconds=lease_seconds)
        existed = checkpoint_exists(prefix)
        if not write_state:
            if existed:
                storage.delete(index_filename(prefix))  # never an old index over new data
            _write(storage, plan, prefix, num_shards)
            return []
        staged = f"{directory}/{STAGE_PREFIX}{secrets.token_hex(8)}" if existed else None
        lease = _new_lease(directory, prefix, staged)
        storage.put(lease.url, lease.body(), if_new=True)
        try:
            _write(storage, plan, staged or prefix, num_shards)
        except BaseException:
            _undo_new(storage, lease, directory, state_name)
            raise
        return _commit(storage, lease, directory, state_name, retain, num_shards)
    except OSError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointIOError(e.errno or 0, f"saving checkpoint {prefix!r}: {e.strerror or e}", prefix) from e


def _write(storage: S3Storage, plan: Any, prefix: str, num_shards: int) -> None:
    upload_data(storage, plan, [data_filename(prefix, s, num_shards) for s in range(num_shards)])
    storage.put(index_filename(prefix), plan.index(num_shards))


def _undo_new(storage: S3Storage, lease: Lease, directory: str, state_name: str) -> None:
    """A save failed before its commit: what it wrote goes (never a listed checkpoint)."""
    try:
        target = lease.staged or lease.final
        st, _ = read_state_object(directory, state_name)
        listed = {norm(p) for p, _ in listed_from(st).entries}
        if norm(target) not in listed:
            remove_checkpoint(target)
        storage.delete_quietly(lease.url)
    except Exception as e:  # the original error is the one to raise; recovery finishes this
        log.warning("could not remove what a failed save wrote to %s: %s", lease.final, e)


def _commit(storage: S3Storage, lease: Lease, directory: str, state_name: str, retain: RetainFn,
            num_shards: int) -> List[str]:
    """Steps 3 (a replacement) to 5 of the module docstring."""
    prefix, staged = lease.final, lease.staged
    now = time.time()
    if staged is not None:  # the staged bundle stands in for the checkpoint being replaced
        def stand_in(entries: List[Entry], preserved: float) -> Tuple[List[Entry], float, List[str]]:
            others = [(p, ts) for p, ts in entries if norm(p) != norm(prefix)]
            return others + [(staged, now)], preserved, []
        _update_state(storage, directory, state_name, stand_in)
        _copy_bundle(storage, staged, prefix, num_shards)

    def list_new(entries: List[Entry], preserved: float) -> Tuple[List[Entry], float, List[str]]:
        others = [(p, ts) for p, ts in entries if norm(p) not in (norm(prefix), norm(staged or prefix))]
        kept, doomed, kept_preserved = retain(others + [(prefix, now)], preserved)
        return kept, kept_preserved, deletable(doomed, [p for p, _ in kept], directory)

    kept, doomed = _update_state(storage, directory, state_name, list_new)
    if doomed:
        lease.deleting = tuple(doomed)
        storage.put(lease.url, lease.body())
    _finish(storage, lease)
    return [p for p, _ in kept]


def _finish(storage: S3Storage, lease: Lease) -> None:
    """Step 5: what retention dropped, the staged objects, the lease."""
    for old in lease.deleting:
        remove_checkpoint(old)
    if lease.staged is not None:
        remove_checkpoint(lease.staged)
    storage.delete_quietly(lease.url)


def recover_objects(directory: str, state_name: str = "checkpoint", *,
                    lease_seconds: float = LEASE_SECONDS) -> List[str]:
    """Finish or undo the saves whose owners died (see the module
    docstring), and abort their unfinished uploads; returns the names
    those saves were writing."""
    storage = fs.object_store(directory)
    now = time.time()
    done: List[str] = []
    for info in storage.list_objects(f"{directory}/{LEASE_PREFIX}"):
        if "/" in info.url[len(directory) + 1:]:
            continue
        try:
            raw = storage.read_bytes(info.url)
        except FileNotFoundError:
            continue  # finished meanwhile
        lease = Lease.parse(info.url, raw)
        if lease is None:
            if now - info.mtime > lease_seconds:
                storage.delete_quietly(info.url)
            continue
        if lease.alive(now, lease_seconds):
            continue
        _recover(storage, lease, directory, state_name)
        done.append(lease.final)
    storage.abort_uploads(f"{directory}/", now - lease_seconds)  # of saves long gone, whatever their lease says
    return done


def _recover(storage: S3Storage, lease: Lease, directory: str, state_name: str) -> None:
    st, _ = read_state_object(directory, state_name)
    listed = {norm(p) for p, _ in listed_from(st).entries}
    if lease.staged is not None and norm(lease.staged) in listed and checkpoint_exists(lease.staged):
        # a replacement listed staged: finish it (the staged bundle is the checkpoint's contents)
        shards = _num_shards_of(lease.staged)
        _copy_bundle(storage, lease.staged, lease.final, shards)

        def rename(entries: List[Entry], preserved: float) -> Optional[Tuple[List[Entry], float, List[str]]]:
            if all(norm(p) != norm(lease.staged or "") for p, _ in entries):
                return None
            return [(lease.final if norm(p) == norm(lease.staged or "") else p, ts) for p, ts in entries], \
                preserved, []
        _update_state(storage, directory, state_name, rename)
    elif norm(lease.final) not in listed and lease.staged is None:
        remove_checkpoint(lease.final)  # a new name never listed: it never was a checkpoint
    _finish(storage, lease)
    for target in (lease.final, lease.staged):
        if target is not None:
            storage.abort_uploads(target + ".", time.time())
    log.info("recovered the save of %s that died (lease %s)", lease.final, lease.url)
