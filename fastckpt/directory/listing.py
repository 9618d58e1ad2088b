"""What a directory's state file lists, as the commit, recovery and
recycling read and rewrite it: entries that exist (deduplicated), pending
commits and deletions; and the two rules of deleting: index first, and only
checkpoints directly inside the directory that are no longer listed."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from fastckpt.bundle.naming import checkpoint_files, index_filename
from fastckpt.bundle.writer import STAGE_PREFIX
from fastckpt.directory.retention import Entry
from fastckpt.directory.state import (CheckpointState, checkpoint_exists, norm_path, read_checkpoint_state, state_path,
                                      update_checkpoint_state)
from fastckpt.errors import DataLossError
from fastckpt.storage import fs

__all__ = ["norm", "inside", "remove_checkpoint", "Listed", "read_listed", "listed_from", "write_state", "deletable", "RetainFn",
           "STAGED_NAME"]

log = logging.getLogger("fastckpt")

RetainFn = Callable[[List[Entry], float], Tuple[List[Entry], List[str], float]]

STAGED_NAME = re.compile(re.escape(STAGE_PREFIX) + r"[0-9a-f]{16}\Z")


def norm(path: str) -> str:
    """A path made comparable (:func:`~fastckpt.directory.state.norm_path`)."""
    return norm_path(path)


def inside(prefix: str, directory: str) -> bool:
    """True if checkpoint ``prefix`` lies directly in ``directory`` (after
    normalising ``.``, ``..`` and duplicate separators)."""
    return os.path.dirname(norm(prefix)) == norm(directory).rstrip("/")


def remove_checkpoint(prefix: str, *, meta: bool = True) -> None:
    """Delete a checkpoint's files, index first (so it stops being one);
    its TensorFlow 1 ``.meta`` too unless ``meta=False``."""
    files = [f for f in checkpoint_files(prefix) if meta or not f.endswith(".meta")]
    files.sort(key=lambda f: not f.endswith(".index"))
    for f in files:
        try:
            fs.delete(f)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete %s: %s", f, e)


@dataclass
class Listed:
    """What the state file says, checked: entries that exist, deduplicated."""

    entries: List[Entry] = field(default_factory=list)
    preserved: float = 0.0
    pending: List[Tuple[str, str]] = field(default_factory=list)
    deleting: List[str] = field(default_factory=list)
    exists: bool = False


def read_listed(directory: str, state_name: str) -> Listed:
    """The state file's checkpoints that exist, oldest first, each once
    (``./ckpt-2`` and ``ckpt-2`` are one checkpoint; the later entry wins)."""
    try:
        st = read_checkpoint_state(directory, state_name)
    except DataLossError as e:  # corrupt: it is rewritten (an I/O error is raised instead)
        log.warning("ignoring unreadable checkpoint state in %s: %s", directory, e)
        return Listed()
    return listed_from(st)


def listed_from(st: Optional[CheckpointState]) -> Listed:
    """:func:`read_listed` of a state already read."""
    if st is None:
        return Listed()
    stamps = st.all_model_checkpoint_timestamps
    paths = st.all_model_checkpoint_paths
    if st.model_checkpoint_path and all(norm(p) != norm(st.model_checkpoint_path) for p in paths):
        paths = paths + [st.model_checkpoint_path]
    seen: Dict[str, Entry] = {}
    for i, p in enumerate(paths):
        if not checkpoint_exists(p):
            continue
        ts = stamps[i] if len(stamps) == len(st.all_model_checkpoint_paths) and i < len(stamps) else \
            fs.mtime(index_filename(p))
        seen.pop(norm(p), None)
        seen[norm(p)] = (p, ts)
    return Listed(list(seen.values()), st.last_preserved_timestamp, st.pending, st.deleting, True)


def write_state(directory: str, state_name: str, entries: Sequence[Entry], preserved: float, durable: bool,
                 pending: Sequence[Tuple[str, str]] = (), deleting: Sequence[str] = ()) -> None:
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            fs.delete(state_path(directory, state_name))
        return
    update_checkpoint_state(directory, entries[-1][0], [p for p, _ in entries],
                            all_model_checkpoint_timestamps=[ts for _, ts in entries],
                            last_preserved_timestamp=preserved, latest_filename=state_name,
                            durable=durable, pending=pending, deleting=deleting)


def deletable(doomed: Sequence[str], kept: Sequence[str], directory: str) -> List[str]:
    """The checkpoints retention dropped that may be deleted: only inside
    ``directory``, never one that is still listed."""
    still = {norm(p) for p in kept}
    out = []
    for old in doomed:
        if norm(old) in still:
            continue
        if not inside(old, directory):
            log.warning("retention dropped %s from the state file but does not delete it: "
                        "it lies outside %s", old, directory)
            continue
        out.append(old)
    return out
