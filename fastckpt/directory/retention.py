"""Retention: which checkpoints a directory keeps listed, which it drops,
and which it preserves on disk (TensorFlow's ``max_to_keep`` and
``keep_checkpoint_every_n_hours``)."""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Tuple

from fastckpt.errors import InvalidArgumentError

__all__ = ["Retention", "Entry"]

Entry = Tuple[str, float]  # (prefix, timestamp)

log = logging.getLogger("fastckpt")


class Retention:
    """Keep the newest ``max_to_keep`` checkpoints listed (``None`` or 0:
    all); of the older ones, keep one every ``keep_checkpoint_every_n_hours``
    on disk (unlisted), drop the rest."""

    def __init__(self, max_to_keep: Optional[int] = 5, keep_checkpoint_every_n_hours: Optional[float] = None,
                 *, minimum: int = 0) -> None:
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool)
                                        or max_to_keep < minimum):
            raise InvalidArgumentError(f"max_to_keep must be None or an int >= {minimum}, got {max_to_keep!r}")
        if keep_checkpoint_every_n_hours is not None:
            try:
                hours = float(keep_checkpoint_every_n_hours)
            except (TypeError, ValueError):
                hours = -1.0
            if not hours > 0:
                raise InvalidArgumentError(
                    f"keep_checkpoint_every_n_hours must be a positive number, got {keep_checkpoint_every_n_hours!r}")
        self.max_to_keep = max_to_keep or None
        self.keep_hours = keep_checkpoint_every_n_hours
        self.created = time.time()

    def __call__(self, entries: List[Entry], preserved: float) -> Tuple[List[Entry], List[str], float]:
        """(kept entries, dropped prefixes, last preserved time) for the
        listed ``entries``, oldest first, the new checkpoint last.

        When the clock went back behind the last preserved time, every older
        checkpoint is kept on disk and no longer listed, as TensorFlow's
        ``CheckpointManager`` does: its timestamps cannot be trusted to
        decide what to delete."""
        now = time.time()
        if preserved and now < preserved:
            log.warning("time.time() is %.0f s behind the last preserved checkpoint timestamp: "
                        "keeping every earlier checkpoint", preserved - now)
            # TensorFlow clamps the state's timestamp when its manager is created.
            return entries[-1:], [], min(self.created, now) if self.created < preserved else now
        preserved = min(preserved, now) if preserved else min(self.created, now)
        kept = list(entries)
        dropped: List[str] = []
        while self.max_to_keep is not None and len(kept) > self.max_to_keep:
            old, ts = kept.pop(0)
            if self.keep_hours is not None and ts - self.keep_hours * 3600 >= preserved:
                preserved = ts  # kept on disk, no longer listed
            else:
                dropped.append(old)
        return kept, dropped, preserved
