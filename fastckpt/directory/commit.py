"""Committing a checkpoint into a directory with a state file, retention,
and the recovery of saves that died.

A save first writes its bundle completely under a private name
(``.fcsave-<hex>``, :func:`fastckpt.bundle.writer.stage_bundle`), outside any lock.
Then, under the directory lock:

1. **recover**: commits a killed save left pending are finished, files of
   dead writers are removed;
2. the state file gets a ``pending`` record (a comment TensorFlow ignores)
   naming the staged and the final prefix. A **new** name is not listed
   yet (the state file goes on naming the previous checkpoints; in an
   empty directory it names the final prefix, which has no index yet).
   Only a save that **replaces** an existing checkpoint lists the staged
   prefix in its place, because that checkpoint is about to be hidden;
3. the staged files get their final names by hard links (a checkpoint of the
   same name is hidden first: its index goes before its data is replaced;
   the index comes last);
4. the state file lists the final name, retention applied, no pending record;
5. the staged names are removed, then the checkpoints retention dropped --
   only files directly inside the directory, of checkpoints it listed.

Killed at any system call, the state file's latest checkpoint is complete:
the previous one (before 4; for a replaced checkpoint from 2 on: the staged
one, with the new contents) or the new one (after 4). Recovery reads the
pending record: a replacement (its staged bundle listed) is finished; a
new name (not listed) is undone, its final files removed -- it never was
a checkpoint, and no reader was ever shown it. A save that fails puts the state file back and removes
what it wrote where it can; what it cannot (the disk refuses even that) is
finished by recovery later, never lost.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Collection, List, Mapping, Optional

from fastckpt.bundle.delta import stage_delta
from fastckpt.bundle.naming import index_filename
from fastckpt.bundle.writer import StagedBundle, check_prefix, install_bundle, install_plain, plan_for, stage_bundle
from fastckpt.directory.listing import RetainFn, deletable, norm, read_listed, remove_checkpoint, write_state
from fastckpt.directory.recovery import recover_directory
from fastckpt.directory.recycle import stage_recycling
from fastckpt.directory.retention import Entry
from fastckpt.directory.state import state_path
from fastckpt.storage.fsutil import ensure_directory, io_error
from fastckpt.storage.locking import directory_lock
from fastckpt.storage import fs

__all__ = ["save_checkpoint", "commit_checkpoint", "committer", "delta_base"]

log = logging.getLogger("fastckpt")



def _try(action: Callable[[], None], what: str) -> bool:
    try:
        action()
        return True
    except Exception as e:  # the original error is the one to raise
        log.warning("could not %s: %s", what, e)
        return False


def save_checkpoint(prefix: str, tensors: Mapping[Any, Any], *, retain: RetainFn, durable: bool = True,
                    num_shards: int = 1, alignment: int = 1, threads: Optional[int] = None,
                    state_name: str = "checkpoint", write_state: bool = True,
                    zstd_level: Optional[int] = None, recycle: bool = False,
                    delta: Optional[Collection[str]] = None) -> List[str]:
    """Write ``tensors`` as checkpoint ``prefix`` and commit it in its
    directory's state file ``state_name`` with retention ``retain`` (or,
    without ``write_state``, rename it into place); returns the listed
    prefixes. What ``Saver`` and ``CheckpointManager`` both do. With
    ``recycle``, the data files of the checkpoint retention will drop are
    rewritten in place (:mod:`fastckpt.directory.recycle`). With ``delta``
    (the names vouched unchanged: ``frozen``), what is unchanged since the
    directory's latest checkpoint is shared with it
    (:mod:`fastckpt.bundle.delta`)."""
    check_prefix(prefix, num_shards)
    directory = os.path.dirname(os.path.abspath(prefix))
    state_path(directory, state_name)  # validates the name
    ensure_directory(directory)
    if write_state:
        recover_directory(directory, state_name, durable=durable, tidy_state=False)  # frees space first
    plan, staged = None, None
    if recycle and write_state:
        plan = plan_for(tensors, num_shards, alignment, zstd_level)  # bad input fails before a victim is retired
        staged = stage_recycling(prefix, directory, state_name, retain, num_shards, durable, zstd_level)
    if delta is not None:
        staged, stats = stage_delta(directory, tensors, delta_base(prefix, directory, state_name), frozen=delta,
                                    durable=durable, threads=threads)
        log.debug("delta save of %s: %s", prefix, stats)
    else:
        staged = stage_bundle(directory, tensors, durable=durable, num_shards=num_shards, alignment=alignment,
                              threads=threads, zstd_level=zstd_level, staged=staged, plan=plan)
    try:
        return committer(prefix, retain, state_name, write_state)(staged)
    finally:
        staged.close()


def delta_base(prefix: str, directory: str, state_name: str) -> Optional[str]:
    """The checkpoint a delta save of ``prefix`` shares files with: the
    directory state file's latest other checkpoint (None without one)."""
    others = [p for p, _ in read_listed(directory, state_name).entries if norm(p) != norm(prefix)]
    return others[-1] if others else None


def committer(prefix: str, retain: RetainFn, state_name: str, write_state: bool) -> Callable[[StagedBundle], List[str]]:
    """What makes a staged bundle the checkpoint ``prefix``: the commit
    through the state file, or (without ``write_state``) a rename."""
    directory = os.path.dirname(os.path.abspath(prefix))

    def commit(staged: StagedBundle) -> List[str]:
        if not write_state:
            install_plain(staged, prefix)
            return []
        try:
            return commit_checkpoint(staged, prefix, directory, state_name, retain)
        except OSError as e:
            raise io_error(e, f"saving checkpoint {prefix!r}") from e
    return commit


def commit_checkpoint(staged: StagedBundle, prefix: str, directory: str, state_name: str,
                      retain: RetainFn) -> List[str]:
    """Make the staged bundle the checkpoint ``prefix``, the latest of the
    directory's state file, then apply ``retain``; returns the listed
    prefixes, oldest first. See the module docstring for the steps."""
    durable = staged.durable
    with directory_lock(directory, state_name):
        # (the bundle's own files are kept: a process that wrote one of them may have died since)
        recover_directory(directory, state_name, durable=durable, locked=True, tidy_state=False,
                          keep=[os.path.basename(f) for f in staged.files()])
        listed = read_listed(directory, state_name)
        original = listed.entries
        others = [(p, ts) for p, ts in original if norm(p) != norm(prefix)]
        existed = fs.exists(index_filename(prefix))
        now = time.time()
        if existed:  # about to be hidden: the staged bundle stands in for it
            during = others + [(staged.prefix, now)]
        else:  # a new name: readers go on seeing the previous checkpoints
            during = original or [(prefix, now)]
        try:
            write_state(directory, state_name, during, listed.preserved, durable, pending=[(staged.prefix, prefix)])
        except BaseException:
            staged.remove()
            raise
        try:
            install_bundle(staged, prefix, link=True)
        except BaseException:
            _undo(staged, prefix, directory, state_name, original, listed.preserved, durable, existed)
            raise
        kept, doomed, preserved = retain(others + [(prefix, now)], listed.preserved)
        doomed = deletable(doomed, [p for p, _ in kept], directory)
        try:
            write_state(directory, state_name, kept, preserved, durable, deleting=doomed)
        except BaseException:
            _undo(staged, prefix, directory, state_name, original, listed.preserved, durable, False)
            raise
        staged.remove()
        for old in doomed:
            remove_checkpoint(old)
    return [p for p, _ in kept]


def _undo(staged: StagedBundle, prefix: str, directory: str, state_name: str, original: List[Entry],
          preserved: float, durable: bool, hidden: bool) -> None:
    """A commit failed after the state file listed the staged bundle. Put the
    state file back and remove what this save wrote -- unless the checkpoint
    being replaced is already hidden (``hidden``): then the staged bundle is
    the only complete copy and stays listed, for recovery to finish."""
    if hidden:
        return
    if _try(lambda: write_state(directory, state_name, original, preserved, durable), "restore the state file"):
        if all(norm(p) != norm(prefix) for p, _ in original):
            remove_checkpoint(prefix)
        staged.remove()


