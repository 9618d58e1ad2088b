"""Committing a checkpoint into a directory with a state file, retention,
and the recovery of saves that died.

A save first writes its bundle completely under a private name
(``.fcsave-<hex>``, :func:`fastckpt.writer.stage_bundle`), outside any lock.
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

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import CheckpointError, DataLossError
from .fsutil import ensure_directory, io_error
from .locking import clean_leftovers, directory_lock, is_leftover
from .naming import checkpoint_files, index_filename, local_path
from .retention import Entry
from .state import state_path, checkpoint_exists, read_checkpoint_state, update_checkpoint_state
from .writer import STAGE_PREFIX, StagedBundle, check_prefix, install_bundle, install_plain, plan_for, stage_bundle

__all__ = ["save_checkpoint", "commit_checkpoint", "committer", "recover_directory", "remove_checkpoint", "collect_garbage",
           "GarbageReport", "inside"]

log = logging.getLogger("fastckpt")

RetainFn = Callable[[List[Entry], float], Tuple[List[Entry], List[str], float]]

_STAGE = re.compile(re.escape(STAGE_PREFIX) + r"[0-9a-f]{16}\Z")


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def inside(prefix: str, directory: str) -> bool:
    """True if checkpoint ``prefix`` lies directly in ``directory`` (after
    normalising ``.``, ``..`` and duplicate separators)."""
    return os.path.dirname(_norm(prefix)) == _norm(directory)


def remove_checkpoint(prefix: str, *, meta: bool = True) -> None:
    """Delete a checkpoint's files, index first (so it stops being one);
    its TensorFlow 1 ``.meta`` too unless ``meta=False``."""
    files = [f for f in checkpoint_files(prefix) if meta or not f.endswith(".meta")]
    files.sort(key=lambda f: not f.endswith(".index"))
    for f in files:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete %s: %s", f, e)


@dataclass
class _Listed:
    """What the state file says, checked: entries that exist, deduplicated."""

    entries: List[Entry] = field(default_factory=list)
    preserved: float = 0.0
    pending: List[Tuple[str, str]] = field(default_factory=list)
    deleting: List[str] = field(default_factory=list)
    exists: bool = False


def _read_listed(directory: str, state_name: str) -> _Listed:
    """The state file's checkpoints that exist, oldest first, each once
    (``./ckpt-2`` and ``ckpt-2`` are one checkpoint; the later entry wins)."""
    try:
        st = read_checkpoint_state(directory, state_name)
    except DataLossError as e:  # corrupt: it is rewritten (an I/O error is raised instead)
        log.warning("ignoring unreadable checkpoint state in %s: %s", directory, e)
        return _Listed()
    if st is None:
        return _Listed()
    stamps = st.all_model_checkpoint_timestamps
    paths = st.all_model_checkpoint_paths
    if st.model_checkpoint_path and all(_norm(p) != _norm(st.model_checkpoint_path) for p in paths):
        paths = paths + [st.model_checkpoint_path]
    seen: Dict[str, Entry] = {}
    for i, p in enumerate(paths):
        if not checkpoint_exists(p):
            continue
        ts = stamps[i] if len(stamps) == len(st.all_model_checkpoint_paths) and i < len(stamps) else \
            os.path.getmtime(index_filename(p))
        seen.pop(_norm(p), None)
        seen[_norm(p)] = (p, ts)
    return _Listed(list(seen.values()), st.last_preserved_timestamp, st.pending, st.deleting, True)


def _write_state(directory: str, state_name: str, entries: Sequence[Entry], preserved: float, durable: bool,
                 pending: Sequence[Tuple[str, str]] = (), deleting: Sequence[str] = ()) -> None:
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path(directory, state_name))
        return
    update_checkpoint_state(directory, entries[-1][0], [p for p, _ in entries],
                            all_model_checkpoint_timestamps=[ts for _, ts in entries],
                            last_preserved_timestamp=preserved, latest_filename=state_name,
                            durable=durable, pending=pending, deleting=deleting)


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
                    zstd_level: Optional[int] = None, recycle: bool = False) -> List[str]:
    """Write ``tensors`` as checkpoint ``prefix`` and commit it in its
    directory's state file ``state_name`` with retention ``retain`` (or,
    without ``write_state``, rename it into place); returns the listed
    prefixes. What ``Saver`` and ``CheckpointManager`` both do. With
    ``recycle``, the data files of the checkpoint retention will drop are
    rewritten in place (:mod:`fastckpt.recycle`)."""
    check_prefix(prefix, num_shards)
    directory = os.path.dirname(os.path.abspath(prefix))
    state_path(directory, state_name)  # validates the name
    ensure_directory(directory)
    if write_state:
        recover_directory(directory, state_name, durable=durable, tidy_state=False)  # frees space first
    plan, staged = None, None
    if recycle and write_state:
        from .recycle import stage_recycling
        plan = plan_for(tensors, num_shards, alignment, zstd_level)  # bad input fails before a victim is retired
        staged = stage_recycling(prefix, directory, state_name, retain, num_shards, durable, zstd_level)
    staged = stage_bundle(directory, tensors, durable=durable, num_shards=num_shards, alignment=alignment,
                          threads=threads, zstd_level=zstd_level, staged=staged, plan=plan)
    try:
        return committer(prefix, retain, state_name, write_state)(staged)
    finally:
        staged.close()


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
        listed = _read_listed(directory, state_name)
        original = listed.entries
        others = [(p, ts) for p, ts in original if _norm(p) != _norm(prefix)]
        existed = os.path.lexists(index_filename(prefix))
        now = time.time()
        if existed:  # about to be hidden: the staged bundle stands in for it
            during = others + [(staged.prefix, now)]
        else:  # a new name: readers go on seeing the previous checkpoints
            during = original or [(prefix, now)]
        try:
            _write_state(directory, state_name, during, listed.preserved, durable, pending=[(staged.prefix, prefix)])
        except BaseException:
            staged.remove()
            raise
        try:
            install_bundle(staged, prefix, link=True)
        except BaseException:
            _undo(staged, prefix, directory, state_name, original, listed.preserved, durable, existed)
            raise
        kept, doomed, preserved = retain(others + [(prefix, now)], listed.preserved)
        doomed = _deletable(doomed, [p for p, _ in kept], directory)
        try:
            _write_state(directory, state_name, kept, preserved, durable, deleting=doomed)
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
    if _try(lambda: _write_state(directory, state_name, original, preserved, durable), "restore the state file"):
        if all(_norm(p) != _norm(prefix) for p, _ in original):
            remove_checkpoint(prefix)
        staged.remove()


def _deletable(doomed: Sequence[str], kept: Sequence[str], directory: str) -> List[str]:
    """The checkpoints retention dropped that may be deleted: only inside
    ``directory``, never one that is still listed."""
    still = {_norm(p) for p in kept}
    out = []
    for old in doomed:
        if _norm(old) in still:
            continue
        if not inside(old, directory):
            log.warning("retention dropped %s from the state file but does not delete it: "
                        "it lies outside %s", old, directory)
            continue
        out.append(old)
    return out


def _staged_bundle(prefix: str, durable: bool) -> Optional[StagedBundle]:
    """A staged bundle left by a dead save, if it is complete."""
    from .reader import read_index_header

    try:
        num_shards = read_index_header(prefix)
    except CheckpointError:
        return None
    return StagedBundle(prefix, num_shards, durable)


def recover_directory(directory: str, state_name: str = "checkpoint", *, durable: bool = True,
                      locked: bool = False, tidy_state: bool = True,
                      keep: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """Finish the commits that dead saves left pending, delete what their
    retention dropped, and remove the files of dead writers; returns
    (finished prefixes, removed files). Takes the directory lock unless
    ``locked`` (the caller holds it). Without ``tidy_state`` the state file
    keeps its deletion records (a commit about to rewrite it drops them).
    Files named in ``keep`` (base names) are never removed."""
    if not locked:
        with directory_lock(directory, state_name):
            return recover_directory(directory, state_name, durable=durable, locked=True, tidy_state=tidy_state,
                                     keep=keep)
    listed = _read_listed(directory, state_name)
    if not listed.exists and os.path.lexists(state_path(directory, state_name)):
        return [], []  # unreadable state file: touch nothing it might list
    finished: List[str] = []
    entries = list(listed.entries)
    for staged_prefix, final in listed.pending:
        if not inside(staged_prefix, directory) or not inside(final, directory) \
                or not _STAGE.match(os.path.basename(staged_prefix)):
            continue
        if not any(_norm(p) == _norm(staged_prefix) for p, _ in entries):
            remove_checkpoint(final, meta=False)  # a new name killed before its commit: never a checkpoint
            continue
        staged = _staged_bundle(staged_prefix, durable)
        if staged is None:
            continue
        install_bundle(staged, final, link=True)
        entries = [e for e in entries if _norm(e[0]) != _norm(final)]
        entries = [(final, ts) if _norm(p) == _norm(staged_prefix) else (p, ts) for p, ts in entries]
        finished.append(final)
    for old in _deletable(listed.deleting, [p for p, _ in entries], directory):
        remove_checkpoint(old)  # dropped by a save that died before deleting
    if listed.pending or (listed.deleting and tidy_state):
        _write_state(directory, state_name, entries, listed.preserved, durable)
    if finished:
        log.info("finished %d commit(s) of interrupted saves in %s", len(finished), directory)
    kept = set(keep) | {os.path.basename(f) for p, _ in entries if _STAGE.match(os.path.basename(p))
                        for f in checkpoint_files(p)}
    return finished, clean_leftovers(directory, kept)


@dataclass
class GarbageReport:
    """What :func:`collect_garbage` found in a checkpoint directory."""

    directory: str
    finished: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    leftovers: List[str] = field(default_factory=list)
    unlisted: List[str] = field(default_factory=list)


def collect_garbage(directory: str, state_name: str = "checkpoint", *, dry_run: bool = False) -> GarbageReport:
    """What the next save would clean up in ``directory``, done now (unless
    ``dry_run``): finish pending commits, remove files of dead writers.
    Complete checkpoints the state file does not list are reported in
    ``unlisted``, never deleted (they may be the user's)."""
    directory = local_path(directory, "directory")
    report = GarbageReport(directory)
    if not dry_run:
        report.finished, report.removed = recover_directory(directory, state_name)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    report.leftovers = [os.path.join(directory, n) for n in names if is_leftover(n)]
    listed = {_norm(p) for p, _ in _read_listed(directory, state_name).entries}
    for n in names:
        if n.endswith(".index") and not n.startswith(STAGE_PREFIX):
            p = os.path.join(directory, n[:-len(".index")])
            if _norm(p) not in listed:
                report.unlisted.append(p)
    return report
