"""File names of a checkpoint (TensorFlow's naming, byte for byte)."""

from __future__ import annotations

import os
import re
from typing import Union

__all__ = ["index_filename", "data_filename", "resolve_prefix", "read_file", "PathLike"]

PathLike = Union[str, "os.PathLike[str]"]

_DATA_SUFFIX = re.compile(r"\.data-\d{5,}-of-\d{5,}$")


def index_filename(prefix: str) -> str:
    """``PREFIX.index``."""
    return prefix + ".index"


def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """``PREFIX.data-SSSSS-of-NNNNN`` (each number at least 5 digits)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def resolve_prefix(path: PathLike) -> str:
    """The checkpoint prefix of ``path``.

    Accepts the prefix itself and, since users often pass them, the path of
    its ``.index`` or of one of its data files (``X.index`` and
    ``X.data-00000-of-00001`` both give ``X``) when the literal path is not a
    prefix itself. No globbing: ``[`` in directory names is just a character.
    """
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if os.path.exists(index_filename(p)):
        return p
    for stripped in (p[: -len(".index")] if p.endswith(".index") else None,
                     _DATA_SUFFIX.sub("", p) if _DATA_SUFFIX.search(p) else None):
        if stripped and os.path.exists(index_filename(stripped)):
            return stripped
    return p


def read_file(path: str, missing: str) -> bytes:
    """The whole file; :class:`NotFoundError` (``missing`` + why) when it is
    absent or a directory, :class:`CheckpointIOError` for other failures."""
    from .errors import CheckpointIOError, NotFoundError

    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFoundError(f"{missing}: {path} does not exist") from None
    except IsADirectoryError:
        raise NotFoundError(f"{missing}: {path} is a directory") from None
    except OSError as e:
        raise CheckpointIOError(e.errno or 0, f"cannot read {path}: {e.strerror}", path) from e
