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

import contextlib
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple

from fastckpt.bundle.naming import checkpoint_files, data_filename, index_filename
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.writer import STAGE_PREFIX, check_options, check_prefix, plan_for, upload_plan
from fastckpt.directory.listing import RetainFn, deletable, listed_from, norm, remove_checkpoint
from fastckpt.directory.retention import Entry
from fastckpt.directory.state import checkpoint_exists, read_state_object, state_path, state_text
from fastckpt.errors import CheckpointError, CheckpointIOError, ConflictError, DataLossError
from fastckpt.storage import fs, local
from fastckpt.storage.s3 import S3Storage

__all__ = ["save_object_checkpoint", "ObjectSave", "recover_objects", "LEASE_PREFIX", "LEASE_SECONDS", "Lease"]

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
        """True while the owner may still be saving (this process: while
        that save runs; another on this host: while it runs; another host:
        for ``lease_seconds``)."""
        if self.host == socket.gethostname() and self.pid == os.getpid() \
                and self.started == local.process_start_time(self.pid):
            with _ACTIVE_LOCK:
                return self.url in _ACTIVE
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


_ACTIVE: set = set()  # the leases of this process's saves in progress
_ACTIVE_LOCK = threading.Lock()


def _new_lease(directory: str, final: str, staged: Optional[str]) -> Lease:
    return Lease(f"{directory}/{LEASE_PREFIX}{secrets.token_hex(8)}", final, staged, socket.gethostname(),
                 os.getpid(), local.process_start_time(os.getpid()), time.time())


Change = Callable[[List[Entry], float], Optional[Tuple[List[Entry], float, List[str]]]]


def _update_state(storage: S3Storage, directory: str, state_name: str, change: Change,
                  pending: Optional[Tuple[str, str]] = None, done: Optional[str] = None,
                  before_write: Optional[Callable[[List[str]], None]] = None) -> Tuple[List[Entry], List[str]]:
    """Read the state object, ``change(entries, preserved)`` →
    ``(entries, preserved, dropped)`` (None: leave it), write it back only
    if nobody wrote it meanwhile; on a lost race, again. Returns the
    entries written and what was dropped. ``pending``: a (staged, final)
    record to add (readers then name the staged bundle by its final name);
    ``done``: the staged prefix whose record goes. Other writers' records
    stay while their staged bundle is listed. ``before_write(dropped)``
    runs before each write (to record what will be deleted, so a save
    killed after the write leaves recovery the list)."""
    path = state_path(directory, state_name)
    for attempt in range(_ATTEMPTS):
        try:
            st, etag = read_state_object(directory, state_name)
        except DataLossError as e:  # corrupt: rewritten (conditionally, as any other version), as locally
            log.warning("ignoring unreadable checkpoint state in %s: %s", directory, e)
            st, etag = None, storage.etag(path)
        listed = listed_from(st)
        changed = change(listed.entries, listed.preserved)
        if changed is None:
            return listed.entries, []
        entries, preserved, dropped = changed
        names = {norm(p) for p, _ in entries}
        records = [(a, b) for a, b in listed.pending if norm(a) in names and a not in (done, (pending or ("",))[0])]
        records += [pending] if pending is not None else []
        try:
            if not entries:  # (retention keeps at least the newest: nothing to write)
                return entries, dropped
            text = state_text(directory, entries[-1][0], [p for p, _ in entries],
                              all_model_checkpoint_timestamps=[ts for _, ts in entries],
                              last_preserved_timestamp=preserved, latest_filename=state_name, pending=records)
            data = text.encode("utf-8", "surrogateescape")
            if before_write is not None:
                before_write(dropped)
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


class ObjectSave:
    """One save into an object-store directory, in the steps of the module
    docstring: :meth:`begin` (recovery, the lease, where the data goes),
    then the data objects are written (by this process, or by every process
    of a many-process save, each its own), then :meth:`commit` with the
    index (or :meth:`abort`). Without ``write_state`` the bundle is only
    written: an old index of the name first removed, the new one last."""

    def __init__(self, prefix: str, retain: RetainFn, num_shards: int, state_name: str = "checkpoint",
                 write_state: bool = True, lease_seconds: float = LEASE_SECONDS) -> None:
        check_prefix(prefix, num_shards)
        self.prefix, self.retain, self.num_shards = prefix, retain, num_shards
        self.state_name, self.write_state, self.lease_seconds = state_name, write_state, lease_seconds
        self.storage = fs.object_store(prefix)
        self.directory = os.path.dirname(prefix)
        state_path(self.directory, state_name)  # validates the name
        self.lease: Optional[Lease] = None

    def begin(self) -> str:
        """Make ready; returns the prefix the data objects go under."""
        with _mapped_errors(self.prefix):
            if not self.write_state:
                self.storage.delete_quietly(index_filename(self.prefix))  # never an old index over new data
                return self.prefix
            recover_objects(self.directory, self.state_name, lease_seconds=self.lease_seconds)
            existed = checkpoint_exists(self.prefix)
            staged = f"{self.directory}/{STAGE_PREFIX}{secrets.token_hex(8)}" if existed else None
            self.lease = _new_lease(self.directory, self.prefix, staged)
            with _ACTIVE_LOCK:
                _ACTIVE.add(self.lease.url)
            try:
                self.storage.put(self.lease.url, self.lease.body(), if_new=True)
            except BaseException:
                self._release()
                raise
            return staged or self.prefix

    def data_urls(self, target: str) -> List[str]:
        """The data objects' URLs under ``target``."""
        return [data_filename(target, s, self.num_shards) for s in range(self.num_shards)]

    def commit(self, target: str, index: bytes) -> List[str]:
        """Write the index, then list the checkpoint; returns the listed prefixes."""
        try:
            with _mapped_errors(self.prefix):
                self.storage.put(index_filename(target), index)
                if self.lease is None:
                    return []
                return _commit(self.storage, self.lease, self.directory, self.state_name, self.retain,
                               self.num_shards)
        except BaseException:
            self.abort()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        """The save failed before its commit: what it wrote goes (never a
        listed checkpoint; recovery finishes what this cannot)."""
        if self.lease is not None:
            _undo_new(self.storage, self.lease, self.directory, self.state_name)
        else:
            for f in self.data_urls(self.prefix):
                with contextlib.suppress(OSError):
                    self.storage.delete_quietly(f)
        self._release()

    def _release(self) -> None:
        if self.lease is not None:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self.lease.url)


@contextlib.contextmanager
def _mapped_errors(prefix: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointIOError(e.errno or 0, f"saving checkpoint {prefix!r}: {e.strerror or e}", prefix) from e


def save_object_checkpoint(prefix: str, tensors: Mapping[Any, Any], *, retain: RetainFn, num_shards: int = 1,
                           alignment: int = 1, threads: Optional[int] = None, state_name: str = "checkpoint",
                           write_state: bool = True, zstd_level: Optional[int] = None,
                           lease_seconds: float = LEASE_SECONDS) -> List[str]:
    """Write ``tensors`` as the checkpoint ``prefix`` (an ``s3://`` URL) and
    commit it in its directory's state object (see the module docstring);
    returns the listed prefixes. Without ``write_state`` the bundle is only
    written (data objects, then the index)."""
    check_prefix(prefix, num_shards)
    check_options(num_shards, alignment, threads)
    plan = plan_for(tensors, num_shards, alignment, zstd_level)
    save = ObjectSave(prefix, retain, num_shards, state_name, write_state, lease_seconds)
    target = save.begin()
    try:
        with _mapped_errors(prefix):
            index = upload_plan(save.storage, plan, save.data_urls(target), zstd_level, threads)
    except BaseException:
        save.abort()
        raise
    return save.commit(target, index)


def _listed_names(directory: str, state_name: str) -> set:
    """The checkpoints the state object lists (normalised); none when it is unreadable."""
    try:
        st, _ = read_state_object(directory, state_name)
    except DataLossError:
        return set()
    return {norm(p) for p, _ in listed_from(st).entries}


def _undo_new(storage: S3Storage, lease: Lease, directory: str, state_name: str) -> None:
    """A save failed before its commit: what it wrote goes (never a listed checkpoint)."""
    try:
        target = lease.staged or lease.final
        listed = _listed_names(directory, state_name)
        if norm(target) in listed or norm(lease.final) in listed and lease.staged is None:
            return  # committed (or standing in): the lease stays for recovery to finish the rest
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
        _update_state(storage, directory, state_name, stand_in, pending=(staged, prefix))
        _copy_bundle(storage, staged, prefix, num_shards)

    def list_new(entries: List[Entry], preserved: float) -> Tuple[List[Entry], float, List[str]]:
        others = [(p, ts) for p, ts in entries if norm(p) not in (norm(prefix), norm(staged or prefix))]
        kept, doomed, kept_preserved = retain(others + [(prefix, now)], preserved)
        return kept, kept_preserved, deletable(doomed, [p for p, _ in kept], directory)

    def record(dropped: List[str]) -> None:
        if tuple(dropped) != lease.deleting:
            lease.deleting = tuple(dropped)
            storage.put(lease.url, lease.body())

    kept, _ = _update_state(storage, directory, state_name, list_new, done=staged, before_write=record)
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
    listed = _listed_names(directory, state_name)
    # what the save meant to drop goes only if the state object no longer lists it (the write may not have happened)
    lease.deleting = tuple(p for p in lease.deleting if norm(p) not in listed)
    if lease.staged is not None and norm(lease.staged) in listed and checkpoint_exists(lease.staged):
        # a replacement listed staged: finish it (the staged bundle is the checkpoint's contents)
        shards = _num_shards_of(lease.staged)
        _copy_bundle(storage, lease.staged, lease.final, shards)

        def rename(entries: List[Entry], preserved: float) -> Optional[Tuple[List[Entry], float, List[str]]]:
            if all(norm(p) != norm(lease.staged or "") for p, _ in entries):
                return None
            return [(lease.final if norm(p) == norm(lease.staged or "") else p, ts) for p, ts in entries], \
                preserved, []
        _update_state(storage, directory, state_name, rename, done=lease.staged)
    elif norm(lease.final) not in listed and lease.staged is None:
        remove_checkpoint(lease.final)  # a new name never listed: it never was a checkpoint
    _finish(storage, lease)
    for target in (lease.final, lease.staged):
        if target is not None:
            storage.abort_uploads(target + ".", time.time())
    log.info("recovered the save of %s that died (lease %s)", lease.final, lease.url)
