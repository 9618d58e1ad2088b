"""Recovery of a checkpoint directory: the commits dead saves left pending
are finished (a replacement) or undone (a new name), what their retention
dropped is deleted, and dead writers' files are removed; ``fastckpt gc``
reports and does the same."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from fastckpt.bundle.naming import checkpoint_files, is_url, local_path, storage_path
from fastckpt.bundle.reader import read_index_header
from fastckpt.bundle.writer import STAGE_PREFIX, StagedBundle, install_bundle
from fastckpt.directory.listing import STAGED_NAME, deletable, inside, norm, read_listed, remove_checkpoint, write_state
from fastckpt.directory.objectcommit import LEASE_PREFIX, recover_objects
from fastckpt.directory.state import state_path
from fastckpt.errors import CheckpointError
from fastckpt.storage.locking import clean_leftovers, directory_lock, is_leftover
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = ["recover_directory", "collect_garbage", "GarbageReport", "staged_bundle"]

log = logging.getLogger("fastckpt")


def staged_bundle(prefix: str, durable: bool) -> Optional[StagedBundle]:
    """A staged bundle left by a dead save, if it is complete."""
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
    listed = read_listed(directory, state_name)
    if not listed.exists and fs.exists(state_path(directory, state_name)):
        return [], []  # unreadable state file: touch nothing it might list
    finished: List[str] = []
    entries = list(listed.entries)
    for staged_prefix, final in listed.pending:
        if not inside(staged_prefix, directory) or not inside(final, directory) \
                or not STAGED_NAME.match(os.path.basename(staged_prefix)):
            continue
        if not any(norm(p) == norm(staged_prefix) for p, _ in entries):
            remove_checkpoint(final, meta=False)  # a new name killed before its commit: never a checkpoint
            continue
        staged = staged_bundle(staged_prefix, durable)
        if staged is None:
            continue
        install_bundle(staged, final, link=True)
        entries = [e for e in entries if norm(e[0]) != norm(final)]
        entries = [(final, ts) if norm(p) == norm(staged_prefix) else (p, ts) for p, ts in entries]
        finished.append(final)
    for old in deletable(listed.deleting, [p for p, _ in entries], directory):
        remove_checkpoint(old)  # dropped by a save that died before deleting
    if listed.pending or (listed.deleting and tidy_state):
        write_state(directory, state_name, entries, listed.preserved, durable)
    if finished:
        log.info("finished %d commit(s) of interrupted saves in %s", len(finished), directory)
    kept = set(keep) | {os.path.basename(f) for p, _ in entries if STAGED_NAME.match(os.path.basename(p))
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


def collect_garbage(directory: str, state_name: str = "checkpoint", *, dry_run: bool = False,
                    storage_options: Optional[Mapping[str, Any]] = None) -> GarbageReport:
    """What the next save would clean up in ``directory``, done now (unless
    ``dry_run``): finish pending commits, remove files of dead writers.
    Complete checkpoints the state file does not list are reported in
    ``unlisted``, never deleted (they may be the user's)."""
    with using_storage(storage_options):
        if is_url(os.fspath(directory)):
            return _collect_objects(storage_path(directory, "directory").rstrip("/"), state_name, dry_run)
        directory = local_path(directory, "directory")
        report = GarbageReport(directory)
        if not dry_run:
            report.finished, report.removed = recover_directory(directory, state_name)
        try:
            names = sorted(fs.listdir(directory))
        except OSError:
            names = []
        report.leftovers = [os.path.join(directory, n) for n in names if is_leftover(n)]
        listed = {norm(p) for p, _ in read_listed(directory, state_name).entries}
        for n in names:
            if n.endswith(".index") and not n.startswith(STAGE_PREFIX):
                p = os.path.join(directory, n[:-len(".index")])
                if norm(p) not in listed:
                    report.unlisted.append(p)
        return report


def _collect_objects(directory: str, state_name: str, dry_run: bool) -> GarbageReport:
    """:func:`collect_garbage` in an object store: the saves whose owners
    died are finished or undone (``finished``: the names they were
    writing); leftovers are staged bundles and leases of saves still
    presumed running."""
    report = GarbageReport(directory)
    if not dry_run:
        report.finished = recover_objects(directory, state_name)
    names = sorted(fs.listdir(directory))
    report.leftovers = [f"{directory}/{n}" for n in names if n.startswith((STAGE_PREFIX, LEASE_PREFIX))]
    listed = {norm(p) for p, _ in read_listed(directory, state_name).entries}
    report.unlisted = [f"{directory}/{n[:-len('.index')]}" for n in names
                       if n.endswith(".index") and not n.startswith(STAGE_PREFIX)
                       and norm(f"{directory}/{n[:-len('.index')]}") not in listed]
    return report
