"""File names of a checkpoint (TensorFlow's naming, byte for byte)."""

from __future__ import annotations

import os
import re
from typing import Any, List, Union
from urllib.parse import unquote, urlsplit

from fastckpt._version import __version__
from fastckpt.errors import InvalidArgumentError
from fastckpt.storage import fs

__all__ = ["index_filename", "data_filename", "resolve_prefix", "checkpoint_files",
           "step_suffix", "PathLike", "local_path", "storage_path", "is_url"]

PathLike = Union[str, "os.PathLike[str]"]

_DATA_SUFFIX = re.compile(r"\.data-\d{5,}-of-\d{5,}$")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")


def _as_str(path: Any, what: str) -> str:
    """``path`` (str, bytes or ``os.PathLike``) as a str."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a str or os.PathLike, got {type(path).__name__}") from None
    return p if isinstance(p, str) else os.fsdecode(p)


def local_path(path: Any, what: str = "path") -> str:
    """``path`` (str, bytes or ``os.PathLike``) as a local file-system path.

    ``file://`` URLs become the path they name (``file:///abs/x``,
    ``file://localhost/abs/x``, percent-escapes decoded). Any other URL
    (``s3://``, ``gs://``, ``hdfs://``, ``http://``...) is refused with
    :class:`InvalidArgumentError`: a URL taken for a relative directory
    would write to ``./s3:/bucket/...`` on a disk that goes away with the
    VM. (:func:`storage_path` is the check of the functions that take
    ``s3://`` URLs too.)
    """
    p = _as_str(path, what)
    m = _URL.match(p) if "://" in p else None
    if m is None:
        return p
    scheme = m.group(1).lower()
    if scheme == "file":
        parts = urlsplit(p)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidArgumentError(f"{what} {p!r}: only file:///path and file://localhost/path URLs name local files")
        return unquote(parts.path)
    if scheme == "s3":
        raise InvalidArgumentError(f"{what} {p!r} is a URL (s3://): this takes a local path (object-store URLs "
                                   "go to the functions that read and write checkpoints); nothing was read or written")
    raise InvalidArgumentError(f"{what} {p!r} is a URL ({scheme}://): fastckpt {__version__} reads and writes local "
                               "paths and s3:// URLs; nothing was read or written")


def is_url(path: str) -> bool:
    """True for an object-store URL (``s3://...``) fastckpt reads and writes."""
    return path.startswith("s3://")


def storage_path(path: Any, what: str = "path") -> str:
    """``path`` as a name fastckpt can read and write: a local path (as
    :func:`local_path` makes it) or an ``s3://bucket/key`` URL (checked: a
    bucket, no empty or dot segments in the key). Other schemes are refused
    with one line, never taken as a local directory."""
    p = _as_str(path, what)
    m = _URL.match(p) if "://" in p else None
    if m is None or m.group(1).lower() != "s3":
        if m is not None and m.group(1).lower() != "file":
            raise InvalidArgumentError(f"{what} {p!r} is a URL ({m.group(1).lower()}://): fastckpt {__version__} "
                                       "reads and writes local paths and s3:// URLs; nothing was read or written")
        return local_path(p, what)
    rest = p[len(m.group(0)):]
    bucket, _, key = rest.partition("/")
    if m.group(0) != "s3://":
        raise InvalidArgumentError(f"{what} {p!r}: write the scheme as s3:// (lower case)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,62}", bucket):
        raise InvalidArgumentError(f"{what} {p!r}: {bucket!r} is not a bucket name (s3://BUCKET/key/prefix)")
    segments = key.rstrip("/").split("/") if key.rstrip("/") else []
    if any(seg in ("", ".", "..") for seg in segments) or "?" in key or "#" in key:
        raise InvalidArgumentError(f"{what} {p!r}: the key must not hold empty, '.' or '..' segments, '?' or '#'")
    return p


def index_filename(prefix: str) -> str:
    """``PREFIX.index``."""
    return prefix + ".index"


def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """``PREFIX.data-SSSSS-of-NNNNN`` (each number at least 5 digits)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def checkpoint_files(prefix: str) -> List[str]:
    """The files of checkpoint ``prefix`` that exist: ``.index``, every
    ``.data-SSSSS-of-NNNNN`` and ``.meta`` (matched exactly, no globbing)."""
    directory = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    pattern = re.compile(re.escape(base) + r"(\.index|\.meta|\.data-\d{5,}-of-\d{5,})\Z")
    try:
        names = fs.listdir(directory)
    except OSError:
        return []
    return [os.path.join(os.path.dirname(prefix), n) for n in sorted(names) if pattern.match(n)]


def step_suffix(global_step: Any) -> str:
    """The decimal text of a global step: an int, a 0-d integer array or a
    framework scalar (not a bool); :class:`InvalidArgumentError` otherwise."""
    import operator

    if isinstance(global_step, bool):
        raise InvalidArgumentError(f"global_step must be an integer, got {global_step!r}")
    try:
        return str(operator.index(global_step))
    except TypeError:
        pass
    try:  # a 0-d array or a framework scalar
        import numpy as np

        arr = np.asarray(global_step)
        if arr.ndim == 0 and arr.dtype.kind in "iu":
            return str(int(arr))
    except Exception:
        pass
    raise InvalidArgumentError(f"global_step must be an integer, got {global_step!r}")


def resolve_prefix(path: PathLike) -> str:
    """The checkpoint prefix of ``path``.

    Accepts the prefix itself and, since users often pass them, the path of
    its ``.index`` or of one of its data files (``X.index`` and
    ``X.data-00000-of-00001`` both give ``X``) when the literal path is not a
    prefix itself. No globbing: ``[`` in directory names is just a character.
    """
    p = storage_path(path)
    if fs.present(index_filename(p)):
        return p
    for stripped in (p[: -len(".index")] if p.endswith(".index") else None,
                     _DATA_SUFFIX.sub("", p) if _DATA_SUFFIX.search(p) else None):
        if stripped and fs.present(index_filename(stripped)):
            return stripped
    return p
