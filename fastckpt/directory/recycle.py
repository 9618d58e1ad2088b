"""Recycling: a save that will make retention delete a checkpoint rewrites
that checkpoint's data files in place instead of allocating new ones
(RocksDB's ``recycle_log_file_num``, for checkpoints).

Under the directory lock, before any byte is written:

1. the victim is the oldest checkpoint this save's retention will drop
   (never the one being saved, never one outside the directory or still
   listed, never one kept on disk by ``keep_checkpoint_every_n_hours``);
2. each of its data files is opened and its exclusive lock taken *at
   once*: fastckpt's readers hold a shared lock on every data file they
   read or map, so a file any reader holds is never recycled (nor one
   with other hard links, nor a symbolic link) -- then the save writes new
   files, as without recycling;
3. the state file stops listing the victim (atomically; a ``deleting``
   record makes recovery remove it if the save dies);
4. its index is removed (it stops being a checkpoint), and its data files
   are renamed to the staged bundle's names; files beyond the new shard
   count are removed.

The save then overwrites them in place (truncated or extended to the new
sizes) and commits exactly as a save of new files does.
"""

from __future__ import annotations

import re
import time
from typing import Any, List, Optional, Tuple

from fastckpt.bundle.reader import read_index_header
from fastckpt.directory.listing import deletable, norm, read_listed, write_state
from fastckpt.directory.recovery import recover_directory
from fastckpt.errors import CheckpointError
from fastckpt.storage.locking import claim_exclusive, directory_lock, release_lock
from fastckpt.bundle.naming import checkpoint_files, data_filename, index_filename
from fastckpt.bundle.writer import StagedBundle, new_stage_prefix
from fastckpt.storage import fs, local

__all__ = ["stage_recycling", "victim_data_files"]

_DATA = re.compile(r"\.data-(\d{5,})-of-(\d{5,})\Z")


def victim_data_files(prefix: str) -> List[str]:
    """The data files of ``prefix`` its index's shard count names (files
    of another count are litter, not recycled), in shard order."""
    try:
        n = read_index_header(prefix)
    except CheckpointError:
        return []
    files = [data_filename(prefix, s, n) for s in range(n)]
    return files if all(f in checkpoint_files(prefix) for f in files) else []


def stage_recycling(prefix: str, directory: str, state_name: str, retain: Any, num_shards: int, durable: bool,
                    zstd_level: Optional[int]) -> StagedBundle:
    """A staged bundle for the save of ``prefix`` whose ``recycled`` data
    files are the retired victim's (none when there is no victim or it
    cannot be taken: the save then writes new files)."""
    staged = StagedBundle(new_stage_prefix(directory), num_shards, durable, zstd_level=zstd_level)
    with directory_lock(directory, state_name):
        recover_directory(directory, state_name, durable=durable, locked=True, tidy_state=False)
        listed = read_listed(directory, state_name)
        others = [(p, ts) for p, ts in listed.entries if norm(p) != norm(prefix)]
        kept, doomed, _ = retain(others + [(prefix, time.time())], listed.preserved)
        # Never the latest checkpoint (max_to_keep=1): until this save commits it is the only one.
        latest = norm(listed.entries[-1][0]) if listed.entries else None
        victims = [v for v in deletable(doomed, [p for p, _ in kept], directory) if norm(v) not in (norm(prefix), latest)]
        if not victims:
            return staged
        victim = victims[0]
        fds = _claim(victim_data_files(victim))
        if not fds:
            return staged
        staged.fds.extend(fd for _, fd in fds)  # the staged bundle holds their locks from here on
        try:
            remaining = [e for e in listed.entries if norm(e[0]) != norm(victim)]
            write_state(directory, state_name, remaining, listed.preserved, durable,
                         deleting=list(listed.deleting) + [victim])
            fs.delete(index_filename(victim))
            for shard, (path, fd) in enumerate(fds):
                if shard < num_shards:
                    fs.rename(path, data_filename(staged.prefix, shard, num_shards))
                    staged.recycled[shard] = fd
                else:
                    fs.delete(path)  # beyond the new shard count (its lock goes with the others)
        except BaseException:
            staged.recycled.clear()
            staged.remove()
            staged.close()
            raise
    return staged


def _claim(paths: List[str]) -> List[Any]:
    """``(path, fd)`` of every file, each exclusively locked at once and
    linked once -- or [] (nothing held) when any cannot be taken."""
    out: List[Tuple[str, int]] = []
    for path in paths:
        fd = claim_exclusive(path)
        if fd is None or local.fd_links(fd) != 1:
            if fd is not None:
                release_lock(fd)
            for _, held in out:
                release_lock(held)
            return []
        out.append((path, fd))
    return out
